"""Shared fixtures: the `langevin` binary (built by `cargo test --release` / `cargo build
--release`) for the CLI-parity tests."""
import os
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cli():
    """Path of the langevin binary; missing it fails under CI=true and skips elsewhere."""
    candidates = [os.environ.get("LANGEVIN_BIN")]
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        candidates.append(os.path.join(target, "release", "langevin"))
    candidates += [str(ROOT / "target" / "release" / "langevin"), shutil.which("langevin")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    msg = "the langevin binary is not built (cargo build --release, or set LANGEVIN_BIN)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)
