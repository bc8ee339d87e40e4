"""langevin: diffusion models in Rust, from Python — numpy in, numpy out.

Tables are float32 arrays [N, D]; images are float32 arrays [N, C, H, W] in [-1, 1].
Sample i depends only on ``seed + i``, so results do not depend on the batch size, and
``Model.load(run).sample(n, seed=s, ...)`` returns what ``langevin sample --model run --seed s
--npy out.npy`` writes. Long calls release the GIL, show a tqdm bar when tqdm is installed,
and stop on Ctrl-C with ``KeyboardInterrupt`` (training writes a checkpoint first).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ._langevin import LangevinError
from ._langevin import Model as _Model
from ._langevin import fid as _fid
from ._langevin import schedule as _schedule
from ._langevin import train as _train

__all__ = ["LangevinError", "Model", "train", "resume", "schedule", "fid"]


def _progress(show: bool):
    """A progress callback drawing a tqdm bar, or None (no tqdm, or show=False)."""
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    state: Dict[str, Any] = {}

    def cb(event: str, what: str, total: int, done: int, msg: Optional[str]) -> None:
        bar = state.get("bar")
        if event == "start":
            state["bar"] = tqdm(total=total, initial=done, desc=what, leave=False)
        elif event == "advance" and bar is not None:
            bar.update(done - bar.n)
            if msg:
                bar.set_postfix_str(msg)
        elif event == "finish" and bar is not None:
            bar.close()
            state.pop("bar")
        elif event == "note":
            print(what, file=sys.stderr)

    return cb


def _f32(a: Any, name: str, ndim: Sequence[int]) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    if x.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{name}: expected a {want} array, got shape {list(x.shape)}")
    return x


def _image1(a: Any, name: str) -> np.ndarray:
    x = _f32(a, name, (3, 4))
    return x[None] if x.ndim == 3 else x


class Model:
    """A trained model (a run folder of ``langevin train``, or a diffusers UNet2DModel folder)."""

    def __init__(self, inner: _Model):
        self._m = inner

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device: str = "cpu",
             dtype: Optional[str] = None) -> "Model":
        """Load ``path`` onto ``device`` ("cpu", "cuda", "cuda:N") in ``dtype`` ("f32",
        "bf16", "f16"; default f32, bf16 for image models on CUDA)."""
        return cls(_Model.load(os.fspath(path), device, dtype))

    @property
    def path(self) -> str:
        return os.fspath(self._m.path)

    @property
    def sample_shape(self) -> list:
        """[D] for tabular models, [C, H, W] for image models."""
        return list(self._m.sample_shape)

    @property
    def num_classes(self) -> int:
        return self._m.num_classes

    @property
    def config(self) -> dict:
        import json
        return json.loads(self._m.config_json)

    def sample(self, n: int, *, sampler: str = "dpmpp-2m", steps: int = 20, seed: int = 0,
               labels: Union[None, int, Sequence[int], np.ndarray] = None,
               guidance: float = 1.0, init_noise: Optional[np.ndarray] = None,
               batch_size: int = 64, spacing: str = "auto", eta: Optional[float] = None,
               churn: float = 0.0, langevin_steps: int = 10,
               progress: bool = True) -> np.ndarray:
        """Draw ``n`` samples: rows [n, D] in data units, or images [n, C, H, W] in [-1, 1].

        ``sampler``: ddpm, ddim, langevin, pc, euler, euler-a, heun, lms, dpm2, dpm2-a,
        dpmpp-2m, dpmpp-2s-a, dpmpp-2m-sde, dpmpp-3m-sde, unipc-bh1, unipc-bh2, rk45, or a
        diffusers scheduler class name (its own loop). ``labels``: one class for all, or one
        per sample (class-conditional models); ``guidance``: classifier-free guidance scale.
        ``init_noise``: standard-normal starting noise [n, ...]."""
        if isinstance(labels, (int, np.integer)):
            labels = [int(labels)] * n
        elif labels is not None:
            labels = [int(k) for k in np.asarray(labels).reshape(-1)]
        z = None if init_noise is None else _f32(init_noise, "init_noise", (2, 4))
        return self._m.sample(n, sampler, steps, seed, labels, float(guidance), z, batch_size,
                              spacing, eta, float(churn), langevin_steps, _progress(progress))

    def inpaint(self, image: np.ndarray, mask: np.ndarray, *, sampler: str = "dpmpp-2m",
                steps: int = 20, seed: int = 0, label: Optional[int] = None,
                guidance: float = 1.0, resample: int = 1, jump: int = 1,
                progress: bool = True) -> np.ndarray:
        """Fill where ``mask`` is true (or > 0.5) in ``image`` [C, H, W] or [1, C, H, W]
        (projection at every step; RePaint with ``resample`` > 1). Returns [1, C, H, W]."""
        x = _image1(image, "image")
        m = _image1(mask, "mask")
        if m.shape[1] == 1 and x.shape[1] > 1:
            m = np.repeat(m, x.shape[1], axis=1)
        keep = np.ascontiguousarray((m <= 0.5).astype(np.float32))
        return self._m.inpaint(x, keep, sampler, steps, seed, label, float(guidance), resample,
                               jump, _progress(progress))

    def img2img(self, image: np.ndarray, strength: float, *, sampler: str = "dpmpp-2m",
                steps: int = 20, seed: int = 0, label: Optional[int] = None,
                guidance: float = 1.0, progress: bool = True) -> np.ndarray:
        """SDEdit: noise ``image`` to ``strength`` in (0, 1] and denoise (toward ``label``)."""
        return self._m.img2img(_image1(image, "image"), float(strength), sampler, steps, seed,
                               label, float(guidance), _progress(progress))

    def upscale(self, image: np.ndarray, *, zero_shot: bool = False,
                sampler: str = "dpmpp-2m", steps: int = 20, seed: int = 0,
                progress: bool = True) -> np.ndarray:
        """Upscale a low-resolution image to the model's size: an SR3 model (trained with
        ``superres``) conditions on it; ``zero_shot`` runs ILVR with an unconditional model."""
        return self._m.upscale(_image1(image, "image"), zero_shot, sampler, steps, seed,
                               _progress(progress))

    def __repr__(self) -> str:
        return f"langevin.Model({self.path!r}, sample_shape={self.sample_shape})"


def train(data: Union[str, np.ndarray, None], out: Union[str, os.PathLike], *, steps: int,
          seed: int = 0, labels: Optional[Sequence[int]] = None,
          class_names: Optional[Sequence[str]] = None, progress: bool = True,
          **options: Any) -> Model:
    """Train a model into the run folder ``out`` and return it loaded.

    ``data``: a table [N, D] (residual MLP; columns are standardised), images [N, C, H, W] in
    [-1, 1] (UNet; ``labels`` per image for ``class_cond=True``), or a source name as the CLI
    takes it (``"toy:swiss-roll"``, ``"table.csv"``, ``"fashion-mnist"``, ``"digits"``, a
    folder). ``options`` are the CLI's: prediction, schedule, beta, timesteps, beta_start,
    beta_end, batch_size, lr, warmup, weight_decay, grad_clip, ema_decay, checkpoint_every,
    time_limit, hidden, blocks, temb_dim, channels, layers_per_block, attention, norm_groups,
    class_cond, label_dropout, min_snr, hflip, image_size, grey, strict, per_class,
    sample_every, superres, n_toy, device, dtype, resume, overwrite. An existing run is never
    replaced unless ``overwrite=True`` (``resume=True`` continues it)."""
    out = os.fspath(out)
    source = table = images = None
    if isinstance(data, (str, os.PathLike)):
        source = os.fspath(data)
    elif data is not None:
        x = _f32(data, "data", (2, 4))
        if x.ndim == 2:
            table = x
        else:
            images = x
    if labels is not None:
        labels = [int(k) for k in np.asarray(labels).reshape(-1)]
    if class_names is not None:
        class_names = [str(c) for c in class_names]
    _train(out, steps, seed, source, table, images, labels, class_names, options,
           _progress(progress))
    return Model.load(out, device=options.get("device", "cpu"))


def resume(out: Union[str, os.PathLike], *, steps: int, data: Union[str, np.ndarray, None] = None,
           **options: Any) -> Model:
    """Continue the run in ``out`` to ``steps`` (bit-identical on CPU). A run trained from an
    array needs the same ``data`` again; a run from a named source finds it itself."""
    return train(data, out, steps=steps, resume=True, **options)


def schedule(kind: str = "linear", *, timesteps: int = 1000, beta: float = 0.5,
             beta_start: float = 1e-4, beta_end: float = 0.02) -> Dict[str, Any]:
    """A discrete noise schedule: numpy arrays ``betas``, ``alpha_bar``, ``sigmas``,
    ``log_snr`` (length ``timesteps``) and ``terminal_alpha_bar``, ``terminal_snr``.
    ``kind``: linear, scaled-linear, cosine, sigmoid or geometric (β_t = β(1-β)^(T-1-t))."""
    return _schedule(kind, timesteps, beta, beta_start, beta_end)


def fid(a: np.ndarray, b: np.ndarray, *, device: str = "cpu", batch_size: int = 100) -> float:
    """FID between two image arrays [N, C, H, W] in [-1, 1] (grey or RGB, any size), with the
    standard TF Inception-v3 (convert its weights once with ``langevin fid-setup``)."""
    return _fid(_f32(a, "a", (4,)), _f32(b, "b", (4,)), device, batch_size)
