#!/usr/bin/env python3
"""End-to-end sampling reference for docs/benchmarks.md: diffusers' own loop (UNet2DModel +
DPMSolverMultistepScheduler, bf16 weights) drawing N images in batches of B with S steps, the
same model folder `langevin sample --sampler dpmpp-2m --device cuda --dtype bf16` samples.

    python3 bench/sample_ref.py MODEL_DIR N STEPS BATCH [--compile]

Writes MODEL_DIR/scheduler_config.json (diffusers' DDPMScheduler defaults) when it is missing,
so the folder is a complete diffusers checkpoint for both sides. Prints one JSON line. Never
run by tests; needs torch and diffusers (on the GPU machine).
"""
import json
import os
import sys
import time

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel


def main():
    model_dir, n, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    compile_ = "--compile" in sys.argv
    if not os.path.exists(os.path.join(model_dir, "scheduler_config.json")):
        DDPMScheduler().save_config(model_dir)
    unet = UNet2DModel.from_pretrained(model_dir).to("cuda", torch.bfloat16).eval()
    fwd = torch.compile(unet) if compile_ else unet
    sched = DPMSolverMultistepScheduler.from_pretrained(model_dir)
    c, s = unet.config.in_channels, unet.config.sample_size
    gen = torch.Generator("cuda").manual_seed(0)

    @torch.no_grad()
    def draw(b):
        sched.set_timesteps(steps, device="cuda")
        x = torch.randn((b, c, s, s), generator=gen, device="cuda") * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = fwd(x.to(torch.bfloat16), t).sample.float()
            x = sched.step(eps, t, x).prev_sample
        return x

    draw(batch)  # warm-up (and compilation)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = 0
    while done < n:
        b = min(batch, n - done)
        draw(b)
        done += b
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(json.dumps({"torch": torch.__version__, "n": n, "steps": steps, "batch": batch,
                      "compile": compile_, "seconds": dt, "images_per_s": n / dt}))


if __name__ == "__main__":
    main()
