#!/usr/bin/env bash
# Builds `langevin` (and `langevin-bench`) with CUDA + cuDNN for compute capability 9.0 (H100/H200)
# on a machine with no GPU and no CUDA toolkit. See docs/gpu.md.
#
#   scripts/build-cuda.sh            # release build into target-cuda/, stripped binaries in target-cuda/gpu/
#   scripts/build-cuda.sh --check    # compile-only check of the cuda code paths (what CI runs)
#   scripts/build-cuda.sh --python   # the Python extension module with CUDA + cuDNN, as
#                                    # target-cuda/gpu/langevin-py.tar.xz (the package + its .so)
#
# What it does:
# 1. pip-installs the CUDA 13.0 compiler, headers and link-time libraries from PyPI wheels into
#    .cuda-toolkit/ (about 2 GB, once). Libraries are loaded at run time on the GPU machine.
# 2. Adds the unversioned library links the linker needs, and a stub `libcuda.so` (SONAME libcuda.so.1)
#    exporting the driver-API symbols cudarc references: no package here ships the driver library;
#    the real one is found at run time.
# 3. Builds with `--features cudnn` (implies `cuda`) into target-cuda/ so CPU builds stay incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=build
[ "${1:-}" = "--check" ] && MODE=check
[ "${1:-}" = "--python" ] && MODE=python
WHEELS=${CUDA_WHEELS:-$PWD/.cuda-toolkit}
TK=$WHEELS/nvidia/cu13
CUDNN=$WHEELS/nvidia/cudnn

if [ ! -x "$TK/bin/nvcc" ] || [ ! -e "$CUDNN/lib/libcudnn.so.9" ]; then
    echo "installing the CUDA 13.0 build toolkit from PyPI into $WHEELS" >&2
    python3 -m pip install -q --no-deps --target "$WHEELS" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
        "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cublas==13.1.*" \
        "nvidia-curand==10.4.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cudnn-cu13==9.*"
fi

# Unversioned links (libcublas.so -> libcublas.so.13, ...).
for dir in "$TK/lib" "$CUDNN/lib"; do
    for lib in "$dir"/lib*.so.*; do
        base=${lib%%.so.*}.so
        [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
    done
done

# The driver-library stub, generated from the symbols cudarc's bindings declare.
STUB=$WHEELS/stub
if [ ! -e "$STUB/libcuda.so" ]; then
    cargo fetch -q
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1)
    mkdir -p "$STUB"
    grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$sys" | sed 's/pub unsafe fn //' | sort -u |
        sed 's/.*/int &(void) { return 999; }/' >"$STUB/cuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/cuda_stub.c"
    echo "stub libcuda.so: $(wc -l <"$STUB/cuda_stub.c") driver symbols" >&2
fi

export PATH=$TK/bin:$PATH
export CUDA_ROOT=$TK CUDA_HOME=$TK CUDA_PATH=$TK CUDNN_LIB=$CUDNN/lib
export CUDA_COMPUTE_CAP=90
export RUSTFLAGS="-L native=$TK/lib -L native=$CUDNN/lib -L native=$STUB ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}

if [ "$MODE" = python ]; then
    # maturin's job by hand (no maturin here): the cdylib named as CPython's abi3 loader wants.
    cargo build --release -p langevin-py --features cudnn
    P=$CARGO_TARGET_DIR/gpu/py
    rm -rf "$P" && mkdir -p "$P"
    cp -r python/langevin "$P/"
    strip -o "$P/langevin/_langevin.abi3.so" "$CARGO_TARGET_DIR/release/lib_langevin.so"
    (cd "$P" && XZ_OPT="-6 -T2" tar -cJf ../langevin-py.tar.xz langevin)
    ls -la "$CARGO_TARGET_DIR/gpu"
    exit 0
fi
if [ "$MODE" = check ]; then
    cargo check --release --features cudnn -p langevin-cli -p langevin-bench
    exit 0
fi
cargo build --release --features cudnn -p langevin-cli -p langevin-bench
mkdir -p "$CARGO_TARGET_DIR/gpu"
for bin in langevin langevin-bench; do
    strip -o "$CARGO_TARGET_DIR/gpu/$bin" "$CARGO_TARGET_DIR/release/$bin"
done
ls -la "$CARGO_TARGET_DIR/gpu"
