#!/usr/bin/env python3
"""PyTorch side of `langevin-bench` (see docs/benchmarks.md).

Reads the job list the Rust binary wrote (spec.json), loads the same weights and inputs
(safetensors; UNets as diffusers folders), times the same workloads with the same thread
count and prints one JSON object per job on stdout. For forward jobs it also reports the
largest relative difference between its output and langevin's on the same input.

On a GPU (`langevin-bench --gpu --device cuda`) jobs carry "device" and "dtype": bf16 forward
jobs time the weights cast to bf16 (and autocast as an extra), bf16 training jobs use autocast
over f32 weights (mixed precision, as langevin's trainer), and `--compile` adds torch.compile.
Every timed call is followed by torch.cuda.synchronize().

Never run by tests. Needs torch, safetensors and (for the UNet jobs) diffusers.
"""
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


class ResBlocks(torch.nn.Module):
    """x + conv2(silu(group_norm(conv1(x)))), repeated."""

    def __init__(self, n, ch, groups):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict(
                {
                    "conv1": torch.nn.Conv2d(ch, ch, 3, padding=1),
                    "norm": torch.nn.GroupNorm(groups, ch, eps=1e-5),
                    "conv2": torch.nn.Conv2d(ch, ch, 3, padding=1),
                }
            )
            for _ in range(n)
        )

    def forward(self, x, t):
        for b in self.blocks:
            x = x + b["conv2"](F.silu(b["norm"](b["conv1"](x))))
        return x


def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # flip_sin_to_cos


class Mlp(torch.nn.Module):
    """langevin's residual MLP (crates/langevin/src/nn/mlp.rs), same parameter names."""

    def __init__(self, in_dim, hidden, blocks, temb_dim):
        super().__init__()
        L = torch.nn.Linear
        self.temb_dim = temb_dim
        self.time_mlp = torch.nn.ModuleDict({"0": L(temb_dim, hidden), "2": L(hidden, hidden)})
        self.in_proj = L(in_dim, hidden)
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict(
                {"lin1": L(hidden, hidden), "temb": L(hidden, hidden), "lin2": L(hidden, hidden)}
            )
            for _ in range(blocks)
        )
        self.out_proj = L(hidden, in_dim)

    def forward(self, x, t):
        e = timestep_embedding(t, self.temb_dim)
        e = F.silu(self.time_mlp["2"](F.silu(self.time_mlp["0"](e))))
        h = self.in_proj(x)
        for b in self.blocks:
            u = b["lin1"](F.silu(h)) + b["temb"](e)
            h = h + b["lin2"](F.silu(u))
        return self.out_proj(F.silu(h))


def build(job):
    kind = job["kind"]
    if kind == "unet":
        from diffusers import UNet2DModel

        model = UNet2DModel.from_pretrained(job["model"])
        return lambda x, t: model(x, t).sample, model
    if kind == "resblocks":
        model = ResBlocks(job["blocks"], job["channels"], job["groups"])
    elif kind == "mlp":
        model = Mlp(job["in_dim"], job["hidden"], job["mlp_blocks"], job["temb_dim"])
    else:
        raise SystemExit(f"unknown job kind {kind}")
    model.load_state_dict(load_file(job["model"]))
    return model, model


def median_ms(fn, warmup, reps, device="cpu"):
    """Median wall time; on a GPU each call is followed by a synchronisation."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def count_gflop(fn):
    """FLOPs of one call by PyTorch's FLOP counter (matmuls and convolutions, fwd + bwd)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 1e9
    except Exception:  # noqa: BLE001 - the counter is optional
        return None


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def run(job, warmup, reps, compile_too=False):
    device = job.get("device", "cpu")
    dtype = DTYPES[job.get("dtype", "f32")]
    f, model = build(job)
    model.to(device)
    data = load_file(job["inputs"])
    x, t = data["x"].to(device), data["t"].to(device)
    out = {"name": job["name"], "extra": {}}
    timed = lambda fn: median_ms(fn, warmup, reps, device)  # noqa: E731
    if job["mode"] == "forward":
        model.eval()
        with torch.no_grad():
            if dtype != torch.float32 and device == "cuda":
                # Autocast over f32 weights first, then the weights cast (the faster eager form).
                with torch.autocast("cuda", dtype=dtype):
                    out["extra"]["PyTorch autocast"] = timed(lambda: f(x, t))
                model.to(dtype)
            xd = x.to(dtype)
            y = f(xd, t).float().cpu()
            ref = data["y"]
            out["max_rel_diff"] = float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
            out["gflop"] = count_gflop(lambda: f(xd, t))
            out["ms"] = timed(lambda: f(xd, t))
            if compile_too and device == "cuda":
                try:
                    cf = torch.compile(lambda a, b: f(a, b))
                    out["extra"]["PyTorch torch.compile"] = timed(lambda: cf(xd, t))
                except Exception as e:  # noqa: BLE001
                    print(f"torch.compile failed for {job['name']}: {e}", file=sys.stderr)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        target = data["target"].to(device)
        mixed = dtype != torch.float32 and device == "cuda"

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype, enabled=mixed):
                y = f(x, t)
            loss = F.mse_loss(y.float(), target)
            loss.backward()
            opt.step()

        out["gflop"] = count_gflop(step)
        out["ms"] = timed(step)
    return out


def quiet_diffusers():
    try:
        from diffusers.utils import logging

        logging.set_verbosity_error()
    except ImportError:
        pass


def main():
    """`torch_ref.py SPEC`: every job of the spec file. `torch_ref.py --serve`: the spec (without
    jobs) as the first line of stdin, then one job per line, each answered on stdout as it comes
    (langevin-bench --rounds: the two sides timed in alternation)."""
    quiet_diffusers()
    serve = sys.argv[1] == "--serve"
    spec = json.loads(sys.stdin.readline()) if serve else json.load(open(sys.argv[1]))
    torch.set_num_threads(spec["threads"])
    # f32 means f32: no TF32 in matmuls or cuDNN convolutions (candle uses none either).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    jobs = (json.loads(line) for line in sys.stdin if line.strip()) if serve else spec["jobs"]
    for job in jobs:
        r = run(job, spec["warmup"], job.get("reps", spec["reps"]), spec.get("compile", False))
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
