#!/usr/bin/env bash
# Runs on the lent GPU machine (the device tool), from the repository root, with what
# scripts/build-cuda.sh built here carried along. docs/gpu.md says how it was called.
#
#   scripts/gpu-session.sh STAGE...     stages: smoke parity bench train fid emoji-demo pack
#                                       python-cuda (needs .gpu/langevin-py.tar.xz)
#
# Expects under .gpu/ (ignored by git; carried with the call):
#   bin.tar.xz                 stripped `langevin` + `langevin-bench` (CUDA build)
#   fmnist/                    Fashion-MNIST IDX .gz files (Debian's dataset-fashion-mnist)
#   emoji32/                   the emoji package, images pre-shrunk to 32×32 (smaller to carry)
#   cache/langevin/inception-fid.safetensors   FID weights (stored f16 to fit the transfer)
# and .whl/ with the diffusers wheel for the PyTorch side of the benchmark.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
G=$PWD/.gpu
mkdir -p "$G/bin"
if [ ! -x "$G/bin/langevin" ] || [ "$G/bin.tar.xz" -nt "$G/bin/langevin" ]; then
    tar -xJf "$G/bin.tar.xz" -C "$G/bin" || exit 1
fi
NV=$(python3 -c "import nvidia, os; p = list(nvidia.__path__)[0]; print(':'.join(os.path.join(p, d, 'lib') for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, 'lib'))))")
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$NV:${LD_LIBRARY_PATH:-}
export XDG_CACHE_HOME=$G/cache
# The full set, or (to fit the transfer) the test set with the first 10,000 training images.
for d in fmnist fmnist-small; do
    if [ -d "$G/$d" ] && [ ! -e /usr/share/datasets/fashion-mnist ]; then
        mkdir -p /usr/share/datasets && ln -s "$G/$d" /usr/share/datasets/fashion-mnist
    fi
done
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site/diffusers ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
L=$G/bin/langevin
B=$G/bin/langevin-bench
RUNS=runs/gpu
mkdir -p $RUNS

# The four training runs share the GPU: the README model with the linear schedule (the
# Fashion-MNIST model), the same with the cosine and geometric schedules (equal budget), and
# the emoji model.
train_fmnist() { # name, schedule args...
    local name=$1
    shift
    $L train --data fashion-mnist --out $RUNS/$name --channels 32,64,64 --attention \
        --class-cond --hflip --min-snr 5 --batch-size 128 --lr 1e-3 --warmup 200 \
        --ema-decay 0.9995 --steps "${STEPS:-6000}" --checkpoint-every 1000 \
        --time-limit "${MINUTES:-4}" --device cuda "$@" >"$OUT/train-$name.log" 2>&1
}

for stage in "$@"; do
    echo "=== $stage ($(date +%T))"
    case $stage in
    smoke)
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
        $L sample --help >/dev/null && echo "langevin starts"
        ;;
    parity)
        $B --parity --device cuda 2>&1 | tee "$OUT/parity.md"
        ;;
    bench)
        $B --gpu --device cuda --compile --reps 10 2>&1 | tee "$OUT/bench-gpu.md"
        ;;
    bench-forward)
        # The sampling-path workloads with PyTorch eager and torch.compile, then ours with the
        # fused kernels switched off (LANGEVIN_FUSED=0: candle's composed ops), in one run.
        $B --gpu --device cuda --reps 10 --only forward 2>&1 | tee "$OUT/bench-forward.md"
        # torch.compile for the two targets that name it (compilation takes a minute each).
        [ -n "${NO_COMPILE:-}" ] || for w in "unet-cifar10 forward b256 bf16" "unet-small forward b256 bf16"; do
            $B --gpu --device cuda --compile --reps 10 --exact --only "$w" 2>&1 |
                grep -E "^\| $w \|" | tee -a "$OUT/bench-forward.md"
        done
        # The same with channel-first activations (cuDNN transposes around each convolution).
        echo "## LANGEVIN_NHWC=0" | tee -a "$OUT/bench-forward.md"
        LANGEVIN_NHWC=0 $B --gpu --device cuda --no-torch --reps 10 --only forward 2>&1 |
            grep -E "^\| (unet|resblocks|mlp)" | tee -a "$OUT/bench-forward.md"
        # The one-kernel channels-last group norm (values in registers) instead of the split one.
        echo "## LANGEVIN_NHWC_GN=reg" | tee -a "$OUT/bench-forward.md"
        LANGEVIN_NHWC_GN=reg $B --gpu --device cuda --no-torch --reps 10 --only forward 2>&1 |
            grep -E "^\| (unet|resblocks|mlp)" | tee -a "$OUT/bench-forward.md"
        # The same without CUDA graphs (each forward launched op by op).
        echo "## LANGEVIN_CUDA_GRAPHS=0" | tee -a "$OUT/bench-forward.md"
        LANGEVIN_CUDA_GRAPHS=0 $B --gpu --device cuda --no-torch --reps 10 --only forward 2>&1 |
            grep -E "^\| (unet|resblocks|mlp)" | tee -a "$OUT/bench-forward.md"
        if [ -n "${BEFORE:-}" ]; then
            echo "## LANGEVIN_FUSED=0 (before)" | tee -a "$OUT/bench-forward.md"
            LANGEVIN_FUSED=0 $B --gpu --device cuda --no-torch --reps 5 --only forward 2>&1 |
                grep -E "^\| (unet|resblocks)" | tee -a "$OUT/bench-forward.md"
        fi
        ;;
    compile)
        # Only the torch.compile rows of the two targets that name it, with ours beside them.
        for w in "unet-cifar10 forward b256 bf16" "unet-small forward b256 bf16"; do
            $B --gpu --device cuda --compile --reps 10 --exact --only "$w" 2>&1 |
                grep -E "^\| $w \|" | tee -a "$OUT/compile.md"
        done
        ;;
    kprofile)
        # Per-kernel time of two timed forwards (LANGEVIN_PROFILE_TIMED brackets them with the
        # CUDA profiler: no warm-up, no cuDNN algorithm search, no matmul reference) of the
        # ddpm-cifar10-32 UNet at batch 256 (graph replays: ncu profiles each kernel node),
        # fused (default) and LANGEVIN_FUSED=0.
        for fused in ${FUSED:-1 0}; do
            dts=("" " bf16")
            [ -z "${BF16_ONLY:-}" ] || dts=(" bf16")
            for dt in "${dts[@]}"; do
                W="${WL:-unet-cifar10 forward b256}"
                tag=fused$fused${dt// /-}-${W// /-}
                LANGEVIN_NHWC=${NHWC:-1} LANGEVIN_PROFILE_TIMED=1 LANGEVIN_FUSED=$fused ncu --clock-control none --profile-from-start off \
                    --metrics gpu__time_duration.sum --csv $B --gpu --device cuda --no-torch --reps 2 \
                    --exact --only "$W$dt" >/tmp/ncu-$tag.csv 2>/tmp/ncu-$tag.err
                echo "## LANGEVIN_FUSED=$fused LANGEVIN_NHWC=${NHWC:-1} $W$dt (2 forwards)" | tee -a "$OUT/kernels.md"
                python3 scripts/ncu-summary.py /tmp/ncu-$tag.csv 25 2>&1 | tee -a "$OUT/kernels.md"
                tail -n 3 /tmp/ncu-$tag.err
            done
        done
        ;;
    bench-train)
        # The training-step workloads against PyTorch (eager; autocast for bf16), then ours
        # with the own kernels off (LANGEVIN_FUSED=0: candle's ops, GEMM-form convolution).
        $B --gpu --device cuda --reps 10 --only train 2>&1 | tee "$OUT/bench-train.md"
        # The same step without its CUDA graph (forward and backward launched op by op).
        echo "## LANGEVIN_CUDA_GRAPHS=0" | tee -a "$OUT/bench-train.md"
        LANGEVIN_CUDA_GRAPHS=0 $B --gpu --device cuda --no-torch --reps 10 --only train 2>&1 |
            grep -E "^\| (unet|resblocks|mlp)" | tee -a "$OUT/bench-train.md"
        if [ -n "${BEFORE:-}" ]; then
            echo "## LANGEVIN_FUSED=0 (before)" | tee -a "$OUT/bench-train.md"
            LANGEVIN_FUSED=0 $B --gpu --device cuda --no-torch --reps 3 --only train 2>&1 |
                grep -E "^\| (unet|resblocks)" | tee -a "$OUT/bench-train.md"
        fi
        ;;
    kprofile-train)
        # Per-kernel time of the timed training steps (LANGEVIN_PROFILE_TIMED brackets them
        # with the CUDA profiler; warm-up and algorithm search excluded).
        for w in "unet-cifar10 train step b128" "unet-cifar10 train step b128 bf16" "unet-small train step b128"; do
            tag=${w// /-}
            LANGEVIN_PROFILE_TIMED=1 ncu --clock-control none --profile-from-start off \
                --metrics gpu__time_duration.sum --csv $B --gpu --device cuda --no-torch --reps 2 \
                --exact --only "$w" >/tmp/ncu-$tag.csv 2>/tmp/ncu-$tag.err  # matmul reference not profiled
            echo "## $w (2 steps)" | tee -a "$OUT/kernels-train.md"
            python3 scripts/ncu-summary.py /tmp/ncu-$tag.csv 25 2>&1 | tee -a "$OUT/kernels-train.md"
            tail -n 3 /tmp/ncu-$tag.err
        done
        ;;
    train-e2e)
        # `langevin train` on the GPU end to end (the README's Fashion-MNIST UNet, bf16 mixed
        # precision), timed; then, with LANGEVIN_DETERMINISTIC=1, two uninterrupted runs and one
        # stopped by SIGINT and continued with `--resume`, compared on their weights.
        T=/tmp/train-e2e
        rm -rf $T && mkdir -p $T
        common=(--data fashion-mnist --channels 32,64,64 --attention --class-cond --batch-size 128
            --lr 1e-3 --warmup 100 --checkpoint-every 100 --steps 400 --device cuda --dtype bf16)
        t0=$(date +%s%N)
        $L train "${common[@]}" --out $T/timed 2>&1 | tail -n 1 | tee -a "$OUT/train-e2e.md"
        t1=$(date +%s%N)
        echo "400 steps (batch 128, bf16): $(((t1 - t0) / 1000000)) ms process wall time, data load included" | tee -a "$OUT/train-e2e.md"
        export LANGEVIN_DETERMINISTIC=1
        $L train "${common[@]}" --out $T/a >/dev/null 2>&1
        $L train "${common[@]}" --out $T/b >/dev/null 2>&1
        # Interrupted after its first checkpoint (step 100), whenever that comes: a fixed
        # delay stopped nothing once 400 steps took under 9 s.
        $L train "${common[@]}" --out $T/r >$T/r.log 2>&1 &
        pid=$!
        while kill -0 $pid 2>/dev/null && [ ! -e $T/r/train_state.safetensors ]; do sleep 0.05; done
        kill -INT $pid 2>/dev/null
        wait $pid
        grep SIGINT $T/r.log | tee -a "$OUT/train-e2e.md"
        $L train --out $T/r --resume --device cuda --dtype bf16 2>&1 | tail -n 1 | tee -a "$OUT/train-e2e.md"
        unset LANGEVIN_DETERMINISTIC
        python3 - "$T" <<'PY' 2>&1 | tee -a "$OUT/train-e2e.md"
import sys
import numpy as np
from safetensors.numpy import load_file
T = sys.argv[1]
w = lambda r: load_file(f"{T}/{r}/diffusion_pytorch_model.safetensors")
for x, y in [("a", "b"), ("a", "r")]:
    A, B = w(x), w(y)
    num = sum(float(np.sum((A[k].astype(np.float64) - B[k]) ** 2)) for k in A)
    den = sum(float(np.sum(A[k].astype(np.float64) ** 2)) for k in A)
    print(f"LANGEVIN_DETERMINISTIC=1, {x} vs {y}: relative L2 {np.sqrt(num / den):.3g}")
PY
        ;;
    e2e)
        # End to end: 10,000 images, DPM-Solver++ 2M, 20 steps, bf16, batch 1000, the same
        # model folder on both sides (diffusers' own loop against `langevin sample`).
        M=/tmp/e2e
        $B --gpu --device cuda --no-torch --reps 1 --only "unet-cifar10 forward b256 bf16" --dir $M >/dev/null 2>&1
        MD=$(ls -d $M/unet-cifar10-forward-b256-bf16 2>/dev/null || ls -d $M/*/ | head -1)
        N=${N:-10000}
        python3 bench/sample_ref.py "$MD" $N 20 1000 2>&1 | tail -n 1 | tee -a "$OUT/e2e.md"
        t0=$(date +%s%N)
        $L sample --model "$MD" --sampler dpmpp-2m --steps 20 --n $N --batch-size 1000 \
            --device cuda --dtype bf16 --npy /tmp/e2e.npy 2>&1 | tail -n 2 | tee -a "$OUT/e2e.md"
        t1=$(date +%s%N)
        echo "langevin sample: $N images in $(((t1 - t0) / 1000000)) ms (process wall time, load included)" | tee -a "$OUT/e2e.md"
        ;;
    python-cuda)
        # The Python package's CUDA build (scripts/build-cuda.sh --python, carried as
        # .gpu/langevin-py.tar.xz) against the command line on the same model and seeds.
        P=/tmp/py && rm -rf $P && mkdir -p $P && tar -xJf $G/langevin-py.tar.xz -C $P
        M=/tmp/pm
        $B --gpu --device cuda --no-torch --reps 1 --only "unet-small forward b256 bf16" --dir $M >/dev/null 2>&1
        MD=$(ls -d $M/*/ | head -1)
        echo '{"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": false}' >"$MD/scheduler_config.json"
        $L sample --model "$MD" --sampler dpmpp-2m --steps 10 --n 300 --batch-size 100 --seed 3 \
            --device cuda --npy /tmp/cli.npy 2>&1 | tail -n 1
        PYTHONPATH=$P:${PYTHONPATH:-} python3 - "$MD" <<'PY' 2>&1 | tee -a "$OUT/python-cuda.md"
import sys, time
import numpy as np
import langevin
m = langevin.Model.load(sys.argv[1], device="cuda")
t0 = time.time()
x = m.sample(300, sampler="dpmpp-2m", steps=10, seed=3, batch_size=100)
t = time.time() - t0
c = np.load("/tmp/cli.npy")
d = np.abs(x - c).max()
print(f"python on cuda: {x.shape} {x.dtype} in {t:.2f} s; max |python - cli| = {d:.3g} "
      f"(max |cli| {np.abs(c).max():.3g}); LANGEVIN_DETERMINISTIC={__import__('os').environ.get('LANGEVIN_DETERMINISTIC', '0')}")
PY
        ;;
    profile)
        # Time components by leaving them out / swapping them: cuDNN vs GEMM-form convolution.
        for conv in cudnn gemm; do
            echo "## convolution: $conv" | tee -a "$OUT/profile.md"
            LANGEVIN_GPU_CONV=$conv $B --gpu --device cuda --no-torch --reps 10 --only forward 2>&1 |
                grep -E "^\| (resblocks|unet)" | head -4 | tee -a "$OUT/profile.md" >/tmp/profile-$conv
            awk -F'|' '/unet-small forward b256 /{print $3 + 0}' /tmp/profile-$conv >/tmp/ms-$conv
        done
        # The faster form for the later sampling stages on this machine.
        if awk "BEGIN{exit !($(cat /tmp/ms-gemm) < $(cat /tmp/ms-cudnn))}"; then
            echo gemm >/tmp/bestconv
        else
            echo cudnn >/tmp/bestconv
        fi
        echo "faster convolution for sampling: $(cat /tmp/bestconv)" | tee -a "$OUT/profile.md"
        ;;
    train)
        train_fmnist fmnist &
        train_fmnist fmnist-cosine --schedule cosine &
        train_fmnist fmnist-geometric --schedule geometric --beta 0.5 &
        $L train --data emoji:$G/emoji32 --out $RUNS/emoji --image-size 32 --channels 32,64,128 \
            --attention --class-cond --hflip --min-snr 5 --batch-size 128 --lr 1e-3 --warmup 200 \
            --ema-decay 0.9995 --steps "${STEPS:-6000}" --checkpoint-every 1000 \
            --time-limit "${MINUTES:-4}" --device cuda >"$OUT/train-emoji.log" 2>&1 &
        wait
        tail -n 3 "$OUT"/train-*.log
        ;;
    floor)
        F=$OUT/fid.log
        for n in 10000 1000; do
            echo "## floor n=$n" | tee -a "$F"
            $L fid --a fashion-mnist:train --b fashion-mnist:test --n $n --kid --batch 500 \
                --device cuda 2>&1 | grep -E "FID|images in" | tee -a "$F"
        done
        ;;
    fid | fid-ddpm | fid-gpu-models)
        F=$OUT/fid.log
        ev() { $L eval --model "$1" --metric fid --data fashion-mnist:test --n "${N:-1000}" \
            --batch-size 1000 --device cuda "${@:2}" 2>&1 | grep --line-buffered -E "FID|NFE|images in" | tee -a "$F"; }
        M=$G/models/fmnist
        case $stage in
        fid)
            for s in "ddim 50" "dpmpp-2m 10" "dpmpp-2m 20" "heun 18" "unipc-bh2 10"; do
                set -- $s
                echo "## $M sampler $1 steps $2" | tee -a "$F"
                ev $M --sampler "$1" --steps "$2"
            done
            echo "## $M sampler langevin steps 100 langevin-steps 2" | tee -a "$F"
            ev $M --sampler langevin --steps 100 --langevin-steps 2
            echo "## $M dpmpp-2m 20 bf16" | tee -a "$F"
            ev $M --sampler dpmpp-2m --steps 20 --dtype bf16
            ;;
        fid-gpu-models)
            for m in gpu-fmnist gpu-fmnist-cosine gpu-fmnist-geometric; do
                echo "## $G/models/$m sampler dpmpp-2m steps 20" | tee -a "$F"
                ev $G/models/$m --sampler dpmpp-2m --steps 20
            done
            ;;
        fid-ddpm)
            echo "## $M sampler ddpm steps 1000" | tee -a "$F"
            ev $M --sampler ddpm --steps 1000
            ;;
        esac
        ;;
    pack)
        # Weights, configs and pictures of each run (not the resumable train state), one
        # archive per run (the transfer takes 8 files of at most 16 MB), and the logs.
        for r in $RUNS/*/; do
            n=$(basename "$r")
            tar -czf "$OUT/run-$n.tar.gz" --exclude=train_state.safetensors --exclude='samples-*.png' -C $RUNS "$n"
        done
        (cd "$OUT" && ls train-*.log >/dev/null 2>&1 && tar -czf logs.tar.gz train-*.log && rm train-*.log)
        ls -la "$OUT"
        ;;
    *)
        echo "unknown stage $stage" >&2
        exit 2
        ;;
    esac
done
