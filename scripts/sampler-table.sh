#!/usr/bin/env bash
# The sampler × NFE quality table of docs/samplers.md: SWD to fresh data (÷ its noise floor) for
# every sampler at several network-evaluation budgets, on a trained swiss-roll and 8-gaussians
# model. Usage: scripts/sampler-table.sh [RUNS_DIR]   (trains the two demo models if absent)
set -euo pipefail
bin=${BIN:-./target/release/langevin}
runs=${1:-runs}
tmp=$(mktemp)
solvers=euler,euler-a,heun,lms,dpm2,dpm2-a,dpmpp-2m,dpmpp-2s-a,dpmpp-2m-sde,dpmpp-3m-sde,unipc-bh1,unipc-bh2,pc,langevin
for data in swiss-roll 8-gaussians; do
  model=$runs/demo-$data/model
  [ -d "$model" ] || "$bin" demo --data "$data" --out "$runs/demo-$data" >/dev/null
  echo "### $data"
  echo
  echo "DDPM and DDIM on the training timesteps (\`--schedule model\`):"
  echo
  "$bin" eval --model "$model" --samplers ddpm,ddim --nfe 10,20,50,100,1000 --schedule model \
    --markdown "$tmp" --plot "docs/samplers-$data-ddim.png" >/dev/null 2>&1; cat "$tmp"
  echo
  echo "Other samplers on exponentially spaced levels in [0.03, 30] (\`--schedule exponential --sigma-min 0.03 --sigma-max 30\`):"
  echo
  "$bin" eval --model "$model" --samplers "$solvers" --nfe 10,20,50,100 --schedule exponential \
    --sigma-min 0.03 --sigma-max 30 --markdown "$tmp" --plot "docs/samplers-$data.png" >/dev/null 2>&1; cat "$tmp"
  echo
  echo "Adaptive RK45 probability-flow ODE (rtol = atol = 1e-5):"
  echo
  "$bin" eval --model "$model" --samplers rk45 --nfe 2 --schedule exponential --sigma-min 0.03 --sigma-max 30 \
    --markdown "$tmp" >/dev/null 2>&1; cat "$tmp"
  echo
done
