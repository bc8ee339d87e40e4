#!/bin/sh
# The CPU benchmark: langevin against PyTorch on the same workloads, weights, inputs and thread
# count, in one run (docs/benchmarks.md). `--install-torch` first makes .venv-bench with torch,
# diffusers and safetensors from PyPI; without a Python that has them the PyTorch side is
# skipped (the table says so). Other arguments go to langevin-bench (--threads, --reps, --rounds,
# --only, --candle, --quick, --max-steal); `--rounds 3` times the two sides in alternation, for a
# machine whose speed drifts, and times a round again when the hypervisor stole more than
# --max-steal percent (default 3) of the CPU during it. The binary is built and run from $CARGO_TARGET_DIR when that is set.
set -eu
cd "$(dirname "$0")/.."
PY=${LANGEVIN_BENCH_PYTHON:-}
if [ "${1:-}" = "--install-torch" ]; then
    shift
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install --quiet torch diffusers safetensors
fi
if [ -z "$PY" ] && [ -x .venv-bench/bin/python ]; then PY=.venv-bench/bin/python; fi
cargo build --release -p langevin-bench
exec "${CARGO_TARGET_DIR:-target}/release/langevin-bench" --python "${PY:-python3}" "$@"
