//! Samplers: one function each, one shared signature ([`SamplerFn`]).
//!
//! Every sampler walks a decreasing σ sequence that ends in 0 (see [`crate::schedule::sigmas`]),
//! calls only [`Ctx::denoise`], draws noise only from the per-sample [`NoiseSource`], and reports
//! each step through [`Ctx::step_done`] (progress bars, previews, inpainting projections).
mod ddim;
mod ddpm;
mod dpm2;
mod dpmpp;
mod euler;
mod euler_a;
mod generate;
mod heun;
mod langevin;
mod lms;
mod pc;
pub(crate) mod rk45;
mod unipc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use ddim::ddim;
pub use ddpm::ddpm;
pub use dpm2::{dpm_2, dpm_2_ancestral};
pub use dpmpp::{dpmpp_2m, dpmpp_2m_sde, dpmpp_2s_ancestral, dpmpp_3m_sde};
pub use euler::euler;
pub use euler_a::euler_ancestral;
pub use generate::{generate, Job};
pub use heun::heun;
pub use langevin::annealed_langevin;
pub use lms::{lms, lms_coefficient};
pub use pc::predictor_corrector;
pub use rk45::rk45;
pub use unipc::{unipc, unipc_bh1, unipc_bh2, UniPcVariant};

use crate::denoiser::{Cond, Denoiser};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// Knobs of all samplers; each sampler reads the ones its paper defines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SamplerOptions {
    /// η: DDIM's stochasticity (0 = deterministic, 1 = DDPM-like) and the ancestral and SDE
    /// samplers' noise fraction; `None` is each sampler's own default (DDIM 0, ancestral 1).
    pub eta: Option<f64>,
    /// EDM churn S_churn, S_tmin, S_tmax, S_noise (Karras et al. 2022, Algorithm 2).
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
    /// Annealed Langevin: steps per noise level and NCSN's ε in α_i = ε·σ_i²/σ_min²;
    /// `None` takes ε = σ_min², i.e. α_i = σ_i² (the largest step that stays stable when σ_i
    /// dominates the data's spread).
    pub langevin_steps: usize,
    pub langevin_eps: Option<f64>,
    /// Finish annealed Langevin with one denoising step x ← D(x, σ_min) (Jolicoeur-Martineau et al.).
    pub denoise_final: bool,
    /// Predictor–corrector: Langevin corrector steps per level and target signal-to-noise ratio.
    pub corrector_steps: usize,
    pub snr: f64,
    /// Multistep order of UniPC (1–3).
    pub solver_order: usize,
    /// Order of the linear multistep method.
    pub lms_order: usize,
    /// Relative and absolute tolerances of the adaptive RK45 ODE solver.
    pub rtol: f64,
    pub atol: f64,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        Self {
            eta: None,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
            langevin_steps: 10,
            langevin_eps: None,
            denoise_final: true,
            corrector_steps: 1,
            snr: 0.16,
            solver_order: 2,
            lms_order: 4,
            rtol: 1e-5,
            atol: 1e-5,
        }
    }
}

/// What every step reports.
pub struct StepInfo<'a> {
    pub i: usize,
    pub sigma: f64,
    pub sigma_next: f64,
    pub x: &'a Tensor,
    pub denoised: &'a Tensor,
}

/// A step hook: sees each step and may replace x (e.g. to project a known region).
pub type Callback<'a> = dyn FnMut(&StepInfo) -> Result<Option<Tensor>> + 'a;

/// Everything a sampler may use besides x and σ.
pub struct Ctx<'a> {
    pub model: &'a dyn Denoiser,
    pub cond: &'a Cond,
    pub noise: &'a mut NoiseSource,
    pub opts: &'a SamplerOptions,
    pub callback: Option<&'a mut Callback<'a>>,
    /// Network evaluations so far.
    pub nfe: usize,
}

impl<'a> Ctx<'a> {
    pub fn new(
        model: &'a dyn Denoiser,
        cond: &'a Cond,
        noise: &'a mut NoiseSource,
        opts: &'a SamplerOptions,
    ) -> Self {
        Self {
            model,
            cond,
            noise,
            opts,
            callback: None,
            nfe: 0,
        }
    }

    pub fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.nfe += 1;
        self.model.denoise(x, sigma, self.cond)
    }

    /// η of ancestral and SDE samplers: the option, or 1 (full ancestral noise) when none is
    /// given; an explicit 0 makes them deterministic.
    pub fn ancestral_eta(&self) -> f64 {
        self.opts.eta.unwrap_or(1.0)
    }

    pub fn randn_like(&mut self, x: &Tensor) -> Result<Tensor> {
        self.noise.randn_like(x)
    }

    /// Report step `i`; returns x, replaced if the callback says so.
    pub fn step_done(
        &mut self,
        i: usize,
        sigmas: &[f64],
        x: Tensor,
        denoised: &Tensor,
    ) -> Result<Tensor> {
        if let Some(cb) = self.callback.as_mut() {
            let info = StepInfo {
                i,
                sigma: sigmas[i],
                sigma_next: sigmas[i + 1],
                x: &x,
                denoised,
            };
            if let Some(nx) = cb(&info)? {
                return Ok(nx);
            }
        }
        Ok(x)
    }
}

/// The shared sampler signature: start from x at σ = sigmas[0], return the sample at 0.
pub type SamplerFn = fn(&mut Ctx, Tensor, &[f64]) -> Result<Tensor>;

/// d = (x - D(x))/σ, the probability-flow ODE's dx/dσ.
pub fn to_d(x: &Tensor, sigma: f64, denoised: &Tensor) -> Result<Tensor> {
    Ok(((x - denoised)? / sigma)?)
}

/// σ_down, σ_up of an ancestral step from σ to σ_next with noise fraction η
/// (k-diffusion's `get_ancestral_step`).
pub fn ancestral_step(sigma: f64, sigma_next: f64, eta: f64) -> (f64, f64) {
    if sigma_next == 0.0 || eta == 0.0 {
        return (sigma_next, 0.0);
    }
    let up = (eta
        * (sigma_next.powi(2) * (sigma.powi(2) - sigma_next.powi(2)) / sigma.powi(2)).sqrt())
    .min(sigma_next);
    ((sigma_next.powi(2) - up.powi(2)).sqrt(), up)
}

/// The samplers by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    Ddpm,
    Ddim,
    Langevin,
    Pc,
    Euler,
    EulerA,
    Heun,
    Lms,
    Dpm2,
    Dpm2A,
    Dpmpp2m,
    Dpmpp2sA,
    Dpmpp2mSde,
    Dpmpp3mSde,
    UnipcBh1,
    UnipcBh2,
    Rk45,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 17] = [
        SamplerKind::Ddpm,
        SamplerKind::Ddim,
        SamplerKind::Langevin,
        SamplerKind::Pc,
        SamplerKind::Euler,
        SamplerKind::EulerA,
        SamplerKind::Heun,
        SamplerKind::Lms,
        SamplerKind::Dpm2,
        SamplerKind::Dpm2A,
        SamplerKind::Dpmpp2m,
        SamplerKind::Dpmpp2sA,
        SamplerKind::Dpmpp2mSde,
        SamplerKind::Dpmpp3mSde,
        SamplerKind::UnipcBh1,
        SamplerKind::UnipcBh2,
        SamplerKind::Rk45,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Langevin => "langevin",
            SamplerKind::Pc => "pc",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerA => "euler-a",
            SamplerKind::Heun => "heun",
            SamplerKind::Lms => "lms",
            SamplerKind::Dpm2 => "dpm2",
            SamplerKind::Dpm2A => "dpm2-a",
            SamplerKind::Dpmpp2m => "dpmpp-2m",
            SamplerKind::Dpmpp2sA => "dpmpp-2s-a",
            SamplerKind::Dpmpp2mSde => "dpmpp-2m-sde",
            SamplerKind::Dpmpp3mSde => "dpmpp-3m-sde",
            SamplerKind::UnipcBh1 => "unipc-bh1",
            SamplerKind::UnipcBh2 => "unipc-bh2",
            SamplerKind::Rk45 => "rk45",
        }
    }

    pub fn function(self) -> SamplerFn {
        match self {
            SamplerKind::Ddpm => ddpm,
            SamplerKind::Ddim => ddim,
            SamplerKind::Langevin => annealed_langevin,
            SamplerKind::Pc => predictor_corrector,
            SamplerKind::Euler => euler,
            SamplerKind::EulerA => euler_ancestral,
            SamplerKind::Heun => heun,
            SamplerKind::Lms => lms,
            SamplerKind::Dpm2 => dpm_2,
            SamplerKind::Dpm2A => dpm_2_ancestral,
            SamplerKind::Dpmpp2m => dpmpp_2m,
            SamplerKind::Dpmpp2sA => dpmpp_2s_ancestral,
            SamplerKind::Dpmpp2mSde => dpmpp_2m_sde,
            SamplerKind::Dpmpp3mSde => dpmpp_3m_sde,
            SamplerKind::UnipcBh1 => unipc_bh1,
            SamplerKind::UnipcBh2 => unipc_bh2,
            SamplerKind::Rk45 => rk45,
        }
    }

    /// Number of σ levels (before the trailing 0) that spends about `nfe` network evaluations.
    pub fn levels_for_nfe(self, nfe: usize, opts: &SamplerOptions) -> usize {
        let n = match self {
            // Heun, DPM-2: 2 evaluations per step but one for the last.
            SamplerKind::Heun | SamplerKind::Dpm2 => (nfe + 1) / 2,
            SamplerKind::Dpm2A | SamplerKind::Dpmpp2sA => (nfe + 1) / 2,
            SamplerKind::Langevin => nfe / opts.langevin_steps.max(1),
            SamplerKind::Pc => nfe / (opts.corrector_steps + 1),
            // The adaptive solver only uses the end points; its tolerances set the cost.
            SamplerKind::Rk45 => 2,

            _ => nfe,
        };
        n.max(1)
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let alias = match s {
            "euler_a" | "euler-ancestral" | "k_euler_a" => "euler-a",
            "dpm++2m" | "dpmpp_2m" | "dpm++-2m" | "dpm-solver++" => "dpmpp-2m",
            "dpmpp_2s_ancestral" | "dpm++-2s-a" => "dpmpp-2s-a",
            "dpmpp_2m_sde" | "dpm++-2m-sde" => "dpmpp-2m-sde",
            "dpmpp_3m_sde" | "dpm++-3m-sde" => "dpmpp-3m-sde",
            "dpm_2" => "dpm2",
            "dpm_2_ancestral" | "dpm2-ancestral" => "dpm2-a",
            "unipc" => "unipc-bh2",
            "ode" | "pf-ode" | "probability-flow" => "rk45",
            "ald" | "annealed-langevin" => "langevin",
            // diffusers class names, for models that run through our samplers.
            "DDPMScheduler" => "ddpm",
            "DDIMScheduler" => "ddim",
            "EulerDiscreteScheduler" => "euler",
            "EulerAncestralDiscreteScheduler" => "euler-a",
            "HeunDiscreteScheduler" => "heun",
            "LMSDiscreteScheduler" => "lms",
            "KDPM2DiscreteScheduler" => "dpm2",
            "KDPM2AncestralDiscreteScheduler" => "dpm2-a",
            "DPMSolverMultistepScheduler" => "dpmpp-2m",
            "DPMSolverSinglestepScheduler" => "dpmpp-2s-a",
            "UniPCMultistepScheduler" => "unipc-bh2",

            "predictor-corrector" => "pc",
            other => other,
        };
        SamplerKind::ALL
            .into_iter()
            .find(|k| k.name() == alias)
            .ok_or_else(|| {
                let names: Vec<_> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
                Error::config(
                    "sampler",
                    format!(
                        "unknown sampler '{s}'; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// Draw the starting point x_T ~ N(0, (σ_0² + σ_data²)·I) (the variance-preserving prior when
/// σ_data = 1; with σ_data = 0 the variance-exploding N(0, σ_0²)).
pub fn initial_noise(
    noise: &mut NoiseSource,
    shape: &[usize],
    sigma0: f64,
    sigma_data: f64,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let z = noise.randn(shape, dev)?;
    Ok((z * (sigma0 * sigma0 + sigma_data * sigma_data).sqrt())?)
}

#[cfg(test)]
mod tests;
