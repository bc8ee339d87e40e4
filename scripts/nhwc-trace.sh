#!/usr/bin/env bash
# On the GPU machine: the layout (NHWC / NCHW) each fused op of one ddpm-cifar10 forward sees
# (LANGEVIN_NHWC_TRACE=1), to find an op that leaves the channels-last path. Run after
# `scripts/gpu-session.sh smoke` (which unpacks the binaries).
set -uo pipefail
NV=$(python3 -c "import nvidia, os; p = list(nvidia.__path__)[0]; print(':'.join(os.path.join(p, d, 'lib') for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, 'lib'))))")
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$NV:${LD_LIBRARY_PATH:-}
LANGEVIN_NHWC_TRACE=1 LANGEVIN_CUDA_GRAPHS=0 .gpu/bin/langevin-bench --gpu --device cuda --no-torch \
    --reps 1 --exact --only "${1:-unet-cifar10 forward b256 bf16}" 2>&1 | grep nhwc-trace | head -${2:-140}
