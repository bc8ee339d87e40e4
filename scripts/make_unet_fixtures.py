#!/usr/bin/env python3
"""Make the diffusers UNet2DModel parity fixtures for crates/langevin/tests/unet_parity.rs.

Run by hand (never by the tests), with torch and diffusers installed:

    python3 scripts/make_unet_fixtures.py [--out crates/langevin/tests/fixtures/unet]

Each fixture is a small random-weight UNet2DModel saved with diffusers' own save_pretrained
(safetensors), plus io.safetensors holding the inputs `x` [B,C,H,W], `timesteps` [B],
optionally `labels` [B], and diffusers' output `out`, computed in float64 from the saved
(float32, or float16 for the fp16 variant) weights so that the reference is exact.
"""
import argparse
import math
import os
import shutil

import diffusers
import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

COMMON = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
)

# name -> (config overrides, batch, spatial size, timesteps, labels, save options)
FIXTURES = {
    # (a) plain resnets, positional embedding, no attention anywhere.
    "plain": (
        dict(
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            add_attention=False,
        ),
        2, 8, [3.0, 517.0], None, {},
    ),
    # (b) attention blocks + mid attention, several heads, three levels, two layers; saved
    # sharded (diffusion_pytorch_model.safetensors.index.json).
    "attn_sharded": (
        dict(
            sample_size=16,
            block_out_channels=(8, 16, 16),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=2,
            attention_head_dim=4,
        ),
        2, 16, [0.0, 999.0], None, dict(max_shard_size="50KB"),
    ),
    # (c) score-SDE style: fourier time embedding (output divided by sigma), scale_shift
    # resnets (mid attention then has no group norm), one attention head, mid scale sqrt(2),
    # downsample_padding 0.
    "fourier_scale_shift": (
        dict(
            time_embedding_type="fourier",
            resnet_time_scale_shift="scale_shift",
            mid_block_scale_factor=math.sqrt(2.0),
            attention_head_dim=None,
            downsample_padding=0,
            flip_sin_to_cos=False,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        ),
        2, 8, [0.05, 7.5], None, {},
    ),
    # (d) class-conditional (embedding table), centred input, sin-first embedding with
    # freq_shift 1; saved as the fp16 variant.
    "class_fp16": (
        dict(
            num_class_embeds=10,
            center_input_sample=True,
            flip_sin_to_cos=False,
            freq_shift=1,
            in_channels=1,
            out_channels=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        ),
        3, 8, [10.0, 250.0, 999.0], [0, 7, 3], dict(variant="fp16"),
    ),
    # (e) class labels embedded as timesteps, mish, custom time_embedding_dim and
    # attn_norm_num_groups.
    "class_timestep_mish": (
        dict(
            class_embed_type="timestep",
            act_fn="mish",
            time_embedding_dim=48,
            attn_norm_num_groups=2,
            attention_head_dim=8,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        ),
        2, 8, [40.0, 600.0], [2, 5], {},
    ),
    # (f) learned time embedding table (integer timesteps), relu.
    "learned_relu": (
        dict(
            time_embedding_type="learned",
            num_train_timesteps=50,
            act_fn="relu",
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            add_attention=False,
        ),
        2, 8, [0.0, 49.0], None, {},
    ),
}


def randomise(model, gen):
    """Perturb every parameter so that biases and norm affine parameters are not trivial."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name == "time_proj.weight" and p.dim() == 1:
                pass  # GaussianFourierProjection frequencies: keep randn * 16
            else:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))


def make(out_dir, name, spec, seed):
    overrides, batch, size, timesteps, labels, save_opts = spec
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = dict(COMMON)
    cfg.update(overrides)
    model = UNet2DModel(**cfg).eval()
    randomise(model, gen)

    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    if save_opts.get("variant") == "fp16":
        model = model.half()
    model.save_pretrained(folder, safe_serialization=True, **save_opts)

    ref = model.double()
    if cfg.get("class_embed_type") == "timestep":
        # diffusers feeds time_proj's float32 output to class_embedding without the cast it
        # applies to the time embedding; cast here so the float64 reference runs.
        inner = ref.class_embedding.forward
        ref.class_embedding.forward = lambda s, condition=None: inner(s.double(), condition)
    x = torch.randn(batch, cfg["in_channels"], size, size, generator=gen)
    learned = cfg.get("time_embedding_type") == "learned"
    t = torch.tensor(timesteps, dtype=torch.int64 if learned else torch.float32)
    lab = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    with torch.no_grad():
        out = ref(x.double(), t if learned else t.double(), class_labels=lab).sample.float()
    io = {"x": x.contiguous(), "timesteps": t.float(), "out": out.contiguous()}
    if lab is not None:
        io["labels"] = lab
    save_file(io, os.path.join(folder, "io.safetensors"))
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n} parameters, out abs max {out.abs().max():.4f}, files {sorted(os.listdir(folder))}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="crates/langevin/tests/fixtures/unet")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    for i, (name, spec) in enumerate(FIXTURES.items()):
        make(args.out, name, spec, seed=1234 + i)


if __name__ == "__main__":
    main()
