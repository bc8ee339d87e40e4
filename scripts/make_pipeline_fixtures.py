"""Full diffusers sampling loops on a small UNet fixture, for `langevin sample --sampler <Class>`.

Run by hand (never by tests), with diffusers + torch installed:
    python scripts/make_pipeline_fixtures.py
Writes crates/langevin/tests/fixtures/pipeline/: a model folder 
`plain` UNet fixture re-saved with a DDPMScheduler config), `noise.npy` (standard normal, [2, 3, 16, 16]) and
one `<Class>-<steps>.npy` per loop: x = noise·init_noise_sigma; for t in timesteps:
x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample.
"""
import pathlib

import numpy as np
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler, UNet2DModel)

root = pathlib.Path(__file__).resolve().parents[1] / "crates/langevin/tests/fixtures"
out = root / "pipeline"
out.mkdir(parents=True, exist_ok=True)
unet = UNet2DModel.from_pretrained(root / "unet/plain").float().eval()
model_dir = out / "model"
unet.save_pretrained(model_dir)
DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False).save_pretrained(model_dir)

g = torch.Generator().manual_seed(0)
noise = torch.randn((2, 3, 16, 16), generator=g, dtype=torch.float32)
np.save(out / "noise.npy", noise.numpy())
for cls, steps in [(DDIMScheduler, 10), (EulerDiscreteScheduler, 10), (DPMSolverMultistepScheduler, 8)]:
    sched = cls.from_pretrained(model_dir)
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(eps, t, x).prev_sample
    np.save(out / f"{cls.__name__}-{steps}.npy", x.numpy().astype(np.float32))
    print(cls.__name__, steps, float(x.abs().max()))
