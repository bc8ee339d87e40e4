#!/usr/bin/env python3
"""Write crates/langevin/tests/fixtures/schedulers.json: diffusers' own numbers for the Rust
scheduler parity test (crates/langevin/tests/scheduler_parity.rs).

Run by hand, never by tests:  pip install torch "diffusers==0.36.0" numpy scipy
(scipy: LMSDiscreteScheduler integrates its coefficients with scipy.integrate.quad)
                              python scripts/make_scheduler_fixtures.py

For each configuration it records the config dict, the timesteps and sigmas after
set_timesteps(N), and a full sampling loop driven by a fixed analytic stand-in model
    model(x, t) = x * float32(t / num_train_timesteps * 0.1) + (x * x) / (x * x + 1) * 0.5  (float32;
    only + * / so both sides round identically)
from a fixed 2x3x4x4 sample x0[j] = float32(sin(0.37 j) * 1.5), multiplied by
init_noise_sigma. Stochastic schedulers get their noise from a formula instead of a generator:
    noise_k[j] = float32(sin(0.91 j + 1.7 k + 0.3))   at the k-th step() call.
Floats are written as the shortest repr of their float32 value. Heun and KDPM2 loops call
step() once per entry of their doubled timesteps, as diffusers' pipelines do. For LMS the script
also checks quad's coefficients against the exactly integrated Lagrange polynomials (the Rust
side integrates exactly) and records the worst relative gap as `lms_quad_vs_exact_max_rel`.
"""
import itertools
import json
import math
import os

import numpy as np
import torch
import diffusers
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, KDPM2DiscreteScheduler, LMSDiscreteScheduler,
                       UniPCMultistepScheduler)
from diffusers.schedulers import scheduling_ddpm, scheduling_euler_ancestral_discrete

SHAPE = (2, 3, 4, 4)
NUMEL = 96
OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "langevin", "tests", "fixtures",
                   "schedulers.json")


def f32s(a):
    return [float(str(np.float32(v))) for v in np.asarray(a, dtype=np.float32).reshape(-1)]


def x0():
    return torch.tensor([np.float32(math.sin(0.37 * j) * 1.5) for j in range(NUMEL)],
                        dtype=torch.float32).reshape(SHAPE)


def noise(k):
    return torch.tensor([np.float32(math.sin(0.91 * j + 1.7 * k + 0.3)) for j in range(NUMEL)],
                        dtype=torch.float32).reshape(SHAPE)


def model(x, t, T):
    return x * np.float32(float(t) / T * 0.1) + (x * x) / (x * x + np.float32(1.0)) * np.float32(0.5)


class NoiseFeed:
    def __init__(self):
        self.k = 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        z = noise(self.k)
        self.k += 1
        return z.to(dtype or torch.float32)


CLASSES = {
    "DDIMScheduler": DDIMScheduler,
    "DDPMScheduler": DDPMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "UniPCMultistepScheduler": UniPCMultistepScheduler,
    "HeunDiscreteScheduler": HeunDiscreteScheduler,
    "LMSDiscreteScheduler": LMSDiscreteScheduler,
    "KDPM2DiscreteScheduler": KDPM2DiscreteScheduler,
}

COMMON = [
    {},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"timestep_spacing": "linspace"},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "trailing"},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "sample"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
     "prediction_type": "v_prediction", "beta_schedule": "scaled_linear",
     "beta_start": 0.00085, "beta_end": 0.012},
    {"num_train_timesteps": 500, "beta_start": 0.0002, "beta_end": 0.03},
]
ALPHA = [
    {"clip_sample": False},
    {"clip_sample_range": 0.5},
    {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9},
]
SIGMA = [
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True},
    {"use_karras_sigmas": True, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
     "beta_end": 0.012, "prediction_type": "v_prediction"},
]
EXTRA = {
    "DDIMScheduler": ALPHA + [{"set_alpha_to_one": False}, {"_eta": 0.5}, {"_eta": 1.0, "clip_sample": False}],
    "DDPMScheduler": ALPHA + [{"variance_type": "fixed_small_log"}, {"variance_type": "fixed_large"},
                              {"beta_schedule": "sigmoid"}],
    "EulerDiscreteScheduler": SIGMA + [
        {"final_sigmas_type": "sigma_min"},
        {"interpolation_type": "log_linear"},
        {"timestep_type": "continuous", "prediction_type": "v_prediction"},
        {"use_karras_sigmas": True, "sigma_min": 0.03, "sigma_max": 14.6},
        {"timestep_spacing": "leading", "steps_offset": 1, "use_karras_sigmas": True},
    ],
    "EulerAncestralDiscreteScheduler": [],
    "DPMSolverMultistepScheduler": SIGMA + [
        {"solver_order": 1}, {"solver_order": 3},
        {"solver_type": "heun"},
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun",
         "solver_order": 3},
        {"algorithm_type": "sde-dpmsolver++"},
        {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "solver_order": 3},
        {"lower_order_final": False, "final_sigmas_type": "sigma_min"},
        {"euler_at_final": True, "final_sigmas_type": "sigma_min", "lower_order_final": False},
        {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9},
        {"final_sigmas_type": "sigma_min"},
        {"lambda_min_clipped": -5.1},
        {"use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"},
    ],
}
# diffusers' UniPC only reaches a final σ of 0 with bh2 and predict_x0 (bh1's B(h) = h and the
# noise-prediction form turn 0·∞ into NaN there), so those variants end at sigma_min.
EXTRA["UniPCMultistepScheduler"] = SIGMA + [
    {"solver_order": 1}, {"solver_order": 3},
    {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    {"solver_type": "bh1", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    {"predict_x0": False, "final_sigmas_type": "sigma_min"},
    {"predict_x0": False, "solver_type": "bh1", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    {"predict_x0": False, "prediction_type": "v_prediction", "solver_order": 1,
     "final_sigmas_type": "sigma_min"},
    {"predict_x0": False, "prediction_type": "sample", "final_sigmas_type": "sigma_min"},
    {"lower_order_final": False, "final_sigmas_type": "sigma_min"},
    {"lower_order_final": False, "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"disable_corrector": [0, 1, 2]},
    {"disable_corrector": [0, 3], "solver_order": 3},
    {"final_sigmas_type": "sigma_min"},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min", "predict_x0": False},
    {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9},
    {"solver_order": 3, "timestep_spacing": "trailing", "beta_schedule": "scaled_linear",
     "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction"},
]
EXTRA["HeunDiscreteScheduler"] = SIGMA + [
    {"clip_sample": True, "clip_sample_range": 0.5},
    {"use_exponential_sigmas": True, "prediction_type": "v_prediction"},
]
EXTRA["LMSDiscreteScheduler"] = SIGMA + [
    {"use_exponential_sigmas": True, "prediction_type": "v_prediction"},
]
EXTRA["KDPM2DiscreteScheduler"] = SIGMA + [
    {"use_exponential_sigmas": True, "prediction_type": "v_prediction"},
]
# DDPM/DDIM/Euler/DPM-Solver also run 50 steps (default config); the newer classes 1, 7, 25.
STEPS = {name: [1, 7, 25] for name in ["UniPCMultistepScheduler", "HeunDiscreteScheduler",
                                       "LMSDiscreteScheduler", "KDPM2DiscreteScheduler"]}
OLD_STEPS = [1, 7, 25, 50]
# zero-terminal-SNR rescaling is a UniPC option but not a Heun/LMS/KDPM2 one.
NO_RESCALE = {"HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler"}


def lms_exact(sigmas, order, t, j):
    """The LMS coefficient integrated exactly (numpy polynomial, float64)."""
    s = [float(v) for v in sigmas]
    p = np.poly1d([1.0])
    for k in range(order):
        if k != j:
            p = p * np.poly1d([1.0, -s[t - k]]) / (s[t - j] - s[t - k])
    P = p.integ()
    return P(s[t + 1]) - P(s[t])


LMS_CHECK = [0.0]


def check_lms(sched):
    """diffusers' quad-integrated coefficients against the exact integral (Rust integrates
    exactly): record the worst relative difference."""
    n = len(sched.timesteps)
    for t in range(n):
        order = min(t + 1, 4)
        for j in range(order):
            q = sched.get_lms_coefficient(order, t, j)
            e = lms_exact(sched.sigmas.numpy(), order, t, j)
            LMS_CHECK[0] = max(LMS_CHECK[0], abs(q - e) / max(abs(e), 1e-12))


def run(name, cls, kwargs, n):
    eta = kwargs.pop("_eta", None)
    sched = cls(**kwargs)
    sched.set_timesteps(n)
    entry = {
        "class": name,
        "steps": n,
        # the config dict as diffusers' json module writes it (may hold -Infinity)
        "config_json": json.dumps({k: v for k, v in json.loads(sched.to_json_string()).items()}, sort_keys=True),
    }
    ts = sched.timesteps
    if ts.dtype in (torch.int64, torch.int32):
        entry["timesteps"] = [int(t) for t in ts]
    else:
        entry["timesteps"] = f32s(ts.numpy())
    if name != "DDIMScheduler" and name != "DDPMScheduler":
        entry["sigmas"] = f32s(sched.sigmas.numpy())
    if eta is not None:
        entry["eta"] = eta
    feed = NoiseFeed()
    scheduling_ddpm.randn_tensor = feed
    scheduling_euler_ancestral_discrete.randn_tensor = feed
    T = sched.config.num_train_timesteps
    x = x0() * sched.init_noise_sigma
    mid = None
    try:
        for i, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(x, t)
            out = model(inp, t, T)
            kw = {}
            if name == "DDIMScheduler" and eta:
                kw = {"eta": eta, "variance_noise": feed(SHAPE)}
            elif name == "DPMSolverMultistepScheduler" and "sde" in sched.config.algorithm_type:
                kw = {"variance_noise": feed(SHAPE)}
            x = sched.step(out, t, x, **kw).prev_sample
        if not torch.isfinite(x).all():
            raise ValueError("non-finite result")
        entry["final"] = f32s(x.numpy())
        entry["noise_calls"] = feed.k
        if name == "LMSDiscreteScheduler":
            check_lms(sched)
            # The Rust side integrates exactly; where the loop amplifies quad's ~1e-7 noise
            # (sample prediction ends near 0), allow twice diffusers' own quad-vs-exact gap.
            alt = cls(**kwargs)
            alt.set_timesteps(n)
            alt.get_lms_coefficient = lambda order, t, j, a=alt: lms_exact(a.sigmas.numpy(), order, t, j)
            y = x0() * alt.init_noise_sigma
            for t in alt.timesteps:
                y = alt.step(model(alt.scale_model_input(y, t), t, T), t, y).prev_sample
            gap = float((y - x).abs().max() / x.abs().max())
            if gap > 5e-6:
                entry["loop_tol"] = 2 * gap
    except (NotImplementedError, ValueError, IndexError) as e:
        entry["loop_error"] = str(e)
    return entry


def main():
    entries = []
    for name, cls in CLASSES.items():
        for var in COMMON + EXTRA[name]:
            if name in NO_RESCALE and "rescale_betas_zero_snr" in var:
                continue
            # 50-step loops only for the default configuration (keeps the fixture < 1 MB).
            for n in STEPS.get(name, OLD_STEPS if not var else OLD_STEPS[:-1]):
                kwargs = dict(var)
                try:
                    entries.append(run(name, cls, kwargs, n))
                except (ValueError, NotImplementedError, IndexError, TypeError) as e:
                    print("skip", name, var, n, e)
    doc = {
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "shape": list(SHAPE),
        "x0": f32s(x0().numpy()),
        "lms_quad_vs_exact_max_rel": LMS_CHECK[0],
        "entries": entries,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(len(entries), "entries,", os.path.getsize(OUT), "bytes; LMS quad vs exact max rel",
          LMS_CHECK[0])
    assert LMS_CHECK[0] <= 1e-5, LMS_CHECK[0]


if __name__ == "__main__":
    main()
