#!/usr/bin/env bash
# On the GPU machine: Nsight Compute's speed-of-light, memory, occupancy and warp-stall sections
# for a few launches of one kernel (regex) during the timed forwards of a workload, e.g.
#   scripts/ncu-kernel.sh group_norm_cl "unet-cifar10 forward b256 bf16" 3
# Run after `scripts/gpu-session.sh smoke` (which unpacks the binaries).
set -uo pipefail
NV=$(python3 -c "import nvidia, os; p = list(nvidia.__path__)[0]; print(':'.join(os.path.join(p, d, 'lib') for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, 'lib'))))")
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$NV:${LD_LIBRARY_PATH:-}
LANGEVIN_PROFILE_TIMED=1 ncu --clock-control none --profile-from-start off \
    --kernel-name "regex:$1" --launch-count "${3:-2}" \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
    --section LaunchStats --section WarpStateStats \
    .gpu/bin/langevin-bench --gpu --device cuda --no-torch --reps 2 --exact --only "$2" 2>&1 |
    grep -E "^  [a-z_0-9]+|Duration|DRAM Throughput|Memory Throughput|L1/TEX Hit|L2 Hit|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Size|Grid Size|Waves Per SM|Stall|Compute \(SM\) Throughput|Mem Busy|Max Bandwidth|Block Limit" | head -${4:-80}
