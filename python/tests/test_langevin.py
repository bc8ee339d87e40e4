"""The Python package against the library and the CLI: training from numpy, sampling,
exact parity with `langevin sample`, schedules, errors, determinism."""
import json
import os
import subprocess

import numpy as np
import pytest

import langevin

SMALL = dict(hidden=32, blocks=1, temb_dim=16, batch_size=128, checkpoint_every=0,
             progress=False)


def gaussian_table(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 2)) * [0.5, 1.0] + [3.0, -1.0]).astype(np.float32)


@pytest.fixture(scope="module")
def table_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "gauss"
    return langevin.train(gaussian_table(), out, steps=300, lr=3e-3, **SMALL)


def test_train_2d_from_numpy_and_sample(table_model):
    x = table_model.sample(1000, steps=20, seed=0, progress=False)
    assert x.shape == (1000, 2) and x.dtype == np.float32
    assert np.isfinite(x).all()
    # Samples come back in data units: the data's mean and spread, not the standardised ones.
    assert np.allclose(x.mean(0), [3.0, -1.0], atol=0.25), x.mean(0)
    assert np.allclose(x.std(0), [0.5, 1.0], rtol=0.3), x.std(0)
    assert table_model.sample_shape == [2]
    assert json.loads(json.dumps(table_model.config))["langevin"]["data"]["source"] == "array"


def test_sample_i_depends_only_on_seed_plus_i(table_model):
    a = table_model.sample(10, seed=5, batch_size=3, progress=False)
    b = table_model.sample(10, seed=5, batch_size=10, progress=False)
    # Same noise whatever the batching; only the matmul's rounding differs across batch sizes.
    assert np.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.array_equal(a, table_model.sample(10, seed=5, batch_size=3, progress=False))
    c = table_model.sample(1, seed=8, progress=False)
    assert np.allclose(a[3], c[0], rtol=1e-5, atol=1e-5)
    assert not np.array_equal(a[0], a[1])


def test_resume_is_bit_identical_to_one_run(tmp_path):
    data = gaussian_table(500)
    opts = dict(SMALL, batch_size=64)
    straight = langevin.train(data, tmp_path / "a", steps=40, **opts)
    langevin.train(data, tmp_path / "b", steps=20, **opts)
    resumed = langevin.resume(tmp_path / "b", steps=40, data=data, progress=False)
    assert np.array_equal(straight.sample(20, seed=1, progress=False),
                          resumed.sample(20, seed=1, progress=False))


def test_train_images_from_numpy(tmp_path):
    rng = np.random.default_rng(0)
    x = np.tanh(rng.standard_normal((24, 1, 8, 8))).astype(np.float32)
    labels = np.arange(24) % 3
    m = langevin.train(x, tmp_path / "img", steps=4, batch_size=8, channels=[8, 16],
                       norm_groups=4, class_cond=True, labels=labels, progress=False,
                       checkpoint_every=0)
    assert m.sample_shape == [1, 8, 8] and m.num_classes == 3
    s = m.sample(5, steps=4, labels=[0, 1, 2, 0, 1], guidance=2.0, progress=False)
    assert s.shape == (5, 1, 8, 8) and np.isfinite(s).all()
    assert os.path.isfile(tmp_path / "img" / "samples.png")
    out = m.img2img(x[0], 0.5, steps=4, label=1, progress=False)
    assert out.shape == (1, 1, 8, 8)
    mask = np.zeros((1, 8, 8), np.float32)
    mask[:, :, 4:] = 1
    filled = m.inpaint(x[0], mask, steps=4, label=0, progress=False)
    assert np.allclose(filled[0, :, :, :4], x[0, :, :, :4], atol=1e-5)
    # Zero-shot ×2 upscaling (ILVR): the output box-downsamples back to the input.
    low = x[:1].reshape(1, 1, 4, 2, 4, 2).mean(axis=(3, 5))
    up = m.upscale(low, zero_shot=True, steps=4, progress=False)
    assert up.shape == (1, 1, 8, 8)
    assert np.allclose(up.reshape(1, 1, 4, 2, 4, 2).mean(axis=(3, 5)), low, atol=1e-4)
    with pytest.raises(ValueError, match="not a super-resolution model"):
        m.upscale(low, progress=False)


def run_cli(cli, *args):
    p = subprocess.run([cli, *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p


def test_cli_trained_image_model_samples_exactly_as_the_cli(cli, tmp_path):
    run = tmp_path / "digits"
    run_cli(cli, "train", "--data", "digits", "--out", run, "--steps", 12, "--batch-size", 16,
            "--channels", "8,16", "--norm-groups", 4, "--class-cond", "--checkpoint-every", 0)
    npy = tmp_path / "cli.npy"
    run_cli(cli, "sample", "--model", run, "--sampler", "dpmpp-2m", "--steps", 6, "--n", 5,
            "--seed", 3, "--class", 2, "--guidance", 2, "--batch-size", 2, "--npy", npy)
    ours = langevin.Model.load(run).sample(5, sampler="dpmpp-2m", steps=6, seed=3, labels=2,
                                           guidance=2.0, batch_size=2, progress=False)
    assert np.array_equal(ours, np.load(npy))


def test_python_trained_table_model_samples_exactly_as_the_cli(cli, table_model, tmp_path):
    npy = tmp_path / "cli.npy"
    run_cli(cli, "sample", "--model", table_model.path, "--sampler", "euler-a", "--steps", 7,
            "--n", 9, "--seed", 11, "--out", npy)
    ours = table_model.sample(9, sampler="euler-a", steps=7, seed=11, progress=False)
    assert np.array_equal(ours, np.load(npy))


def test_schedule_values():
    s = langevin.schedule("linear", timesteps=1000)
    b = s["betas"]
    assert b.shape == (1000,) and b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    ab = np.cumprod(1 - b)
    assert np.allclose(s["alpha_bar"], ab, rtol=1e-12)
    assert np.allclose(s["sigmas"], np.sqrt((1 - ab) / ab), rtol=1e-9)
    assert np.allclose(s["log_snr"], np.log(ab / (1 - ab)), rtol=1e-9)
    # The README's q-Pochhammer value: ᾱ_T of the geometric schedule at β = 0.5.
    g = langevin.schedule("geometric", beta=0.5, timesteps=1000)
    assert g["terminal_alpha_bar"] == pytest.approx(0.288788, abs=1e-5)


def test_errors_are_python_exceptions_with_the_librarys_message(table_model, tmp_path):
    with pytest.raises(FileNotFoundError):
        langevin.Model.load(tmp_path / "nope")
    with pytest.raises(ValueError, match="steps"):
        langevin.train(gaussian_table(50), tmp_path / "x", steps=0, progress=False)
    with pytest.raises(ValueError, match="unknown option 'learning_rate'"):
        langevin.train(gaussian_table(50), tmp_path / "x", steps=1, learning_rate=1.0)
    with pytest.raises(ValueError, match="schedule"):
        langevin.schedule("wiggly")
    with pytest.raises(ValueError, match="sampler|unknown"):
        table_model.sample(2, sampler="no-such-sampler", progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        langevin.train(gaussian_table(50), table_model.path, steps=1, progress=False)
    with pytest.raises(ValueError, match="in-memory array; pass the same data"):
        langevin.resume(table_model.path, steps=10**6, progress=False)
    with pytest.raises(ValueError, match="init_noise"):
        table_model.sample(3, init_noise=np.zeros((3, 5), np.float32), progress=False)
    # A damaged weights file is the library's own error.
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json", "scheduler_config.json"):
        src = os.path.join(table_model.path, f)
        if os.path.exists(src):
            (broken / f).write_bytes(open(src, "rb").read())
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}")
    with pytest.raises(langevin.LangevinError):
        langevin.Model.load(broken)


def test_ctrl_c_stops_training_with_a_checkpoint_and_keyboard_interrupt(tmp_path):
    import signal
    import threading

    out = tmp_path / "interrupted"
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            langevin.train(gaussian_table(500), out, steps=10**7, **SMALL)
    finally:
        timer.cancel()
    # The stop wrote a checkpoint and the exported model, so the run loads and resumes.
    assert (out / "train_state.safetensors").is_file()
    m = langevin.Model.load(out)
    assert np.isfinite(m.sample(4, steps=4, progress=False)).all()


def _write_png(path, rgb):
    """An 8-bit RGB PNG of `rgb` [H, W, 3] uint8 (no imaging library needed)."""
    import struct
    import zlib

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_fid_of_arrays_matches_the_cli_on_the_same_images(cli, tmp_path):
    """langevin.fid on arrays equals `langevin fid` on the same images written as PNG folders
    (8-bit values, so the round trip is exact): the binding passes layout and scaling as the
    CLI's loader does. Needs the Inception weights (`langevin fid-setup`, which CI runs)."""
    rng = np.random.default_rng(5)
    sets = []
    for name, shift in [("a", 0), ("b", 40)]:
        u8 = np.clip(rng.integers(0, 216, size=(3, 32, 32, 3)) + shift, 0, 255).astype(np.uint8)
        d = tmp_path / name / "x"
        d.mkdir(parents=True)
        for i, im in enumerate(u8):
            _write_png(d / f"{i:03}.png", im)
        sets.append(u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    try:
        ours = langevin.fid(sets[0], sets[1], batch_size=3)
    except langevin.LangevinError as e:
        if "fid-setup" not in str(e) or os.environ.get("CI") == "true":
            raise
        pytest.skip("FID weights not set up (langevin fid-setup)")
    out = run_cli(cli, "fid", "--a", tmp_path / "a", "--b", tmp_path / "b", "--n", 3,
                  "--batch", 3).stdout
    cli_fid = float(out.split("FID")[1].split()[0])
    assert cli_fid > 1.0, out
    assert abs(ours - cli_fid) <= 1e-3 + 1e-5 * cli_fid, (ours, out)
