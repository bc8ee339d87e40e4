#!/usr/bin/env bash
# What the geometric schedule's β does to ᾱ_T and to sample quality: trains one swiss-roll
# model per β (same network, steps and seed as the linear baseline) and scores Heun at 49 NFE.
# Usage: scripts/geometric-study.sh [OUT_DIR]   (about 1–2 minutes per model on 2 cores)
set -euo pipefail
bin=${BIN:-./target/release/langevin}
out=${1:-runs/geometric}
steps=${STEPS:-3000}
mkdir -p "$out"
echo "| schedule | ᾱ_T | σ_max | SWD / floor (Heun, 49 NFE) | SWD / floor (annealed Langevin, 10×10) |"
echo "|---|---|---|---|---|"
for spec in "linear" "geometric 0.01" "geometric 0.1" "geometric 0.5" "geometric 0.9" "geometric 0.99"; do
  set -- $spec
  name=$1${2:+-$2}
  args=(--schedule "$1")
  [ -n "${2:-}" ] && args+=(--beta "$2")
  "$bin" train --data toy:swiss-roll --out "$out/$name" --steps "$steps" "${args[@]}" >/dev/null 2>&1
  info=$("$bin" schedule "${args[@]}" 2>/dev/null)
  abar=$(sed -E 's/.*ᾱ_T = ([^,]+),.*/\1/' <<<"$info")
  smax=$(sed -E 's/.*, ([^]]+)\]$/\1/' <<<"$info")
  heun=$("$bin" eval --model "$out/$name" --sampler heun --nfe 49 | tail -1 | awk '{print $5}')
  ald=$("$bin" eval --model "$out/$name" --sampler langevin --nfe 100 --sigma-min 0.02 | tail -1 | awk '{print $5}')
  echo "| $spec | $abar | $smax | $heun | $ald |"
done
