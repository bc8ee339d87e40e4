//! The closed choices of the API as typed enums, each parsed from its name in one place:
//! the training schedule ([`ScheduleName`] + [`ScheduleOptions`]), the sampler
//! ([`SamplerChoice`]: one of ours, or a diffusers scheduler class) and the spacing of its
//! noise levels ([`SpacingChoice`]). With the `clap` feature they derive `clap::ValueEnum`.
use std::str::FromStr;

use crate::model::{NoiseDist, Spacing};
use crate::sampler::SamplerKind;
use crate::schedule::sigmas::{VeSde, VpSde};
use crate::schedule::BetaSchedule;
use crate::scheduler::SchedulerClass;
use crate::{Error, Result};

/// A training noise schedule by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ScheduleName {
    Linear,
    ScaledLinear,
    Cosine,
    Sigmoid,
    Geometric,
    /// EDM's log-normal noise levels (continuous; pair with --prediction edm).
    Edm,
    /// Variance-exploding SDE σ(t) = σ_min(σ_max/σ_min)^t (continuous).
    VeSde,
    /// Variance-preserving SDE with linear β(t) (continuous).
    VpSde,
}

impl ScheduleName {
    pub const ALL: [ScheduleName; 8] = [
        ScheduleName::Linear,
        ScheduleName::ScaledLinear,
        ScheduleName::Cosine,
        ScheduleName::Sigmoid,
        ScheduleName::Geometric,
        ScheduleName::Edm,
        ScheduleName::VeSde,
        ScheduleName::VpSde,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ScheduleName::Linear => "linear",
            ScheduleName::ScaledLinear => "scaled-linear",
            ScheduleName::Cosine => "cosine",
            ScheduleName::Sigmoid => "sigmoid",
            ScheduleName::Geometric => "geometric",
            ScheduleName::Edm => "edm",
            ScheduleName::VeSde => "ve-sde",
            ScheduleName::VpSde => "vp-sde",
        }
    }
}

impl std::fmt::Display for ScheduleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScheduleName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s2 = s.replace('_', "-");
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s2)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
                Error::config(
                    "schedule",
                    format!(
                        "unknown schedule '{s}'; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// The noise schedule a model is trained with (the CLI's `--schedule --timesteps --beta
/// --beta-start --beta-end`).
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleOptions {
    pub kind: ScheduleName,
    /// Number of discrete steps T.
    pub timesteps: usize,
    /// β of the geometric schedule β_t = β(1-β)^(T-1-t), in (0, 1).
    pub beta: f64,
    /// First β of linear / scaled-linear / sigmoid schedules.
    pub beta_start: f64,
    /// Last β of linear / scaled-linear / sigmoid schedules.
    pub beta_end: f64,
}

impl Default for ScheduleOptions {
    fn default() -> Self {
        ScheduleOptions {
            kind: ScheduleName::Linear,
            timesteps: 1000,
            beta: 0.5,
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }
}

impl ScheduleOptions {
    /// The β schedule of a discrete kind (continuous kinds have none: an error says so).
    pub fn beta_schedule(&self) -> Result<BetaSchedule> {
        let (beta_start, beta_end) = (self.beta_start, self.beta_end);
        Ok(match self.kind {
            ScheduleName::Linear => BetaSchedule::Linear { beta_start, beta_end },
            ScheduleName::ScaledLinear => BetaSchedule::ScaledLinear { beta_start, beta_end },
            ScheduleName::Cosine => BetaSchedule::Cosine,
            ScheduleName::Sigmoid => BetaSchedule::Sigmoid { beta_start, beta_end },
            ScheduleName::Geometric => BetaSchedule::Geometric {
                geometric_beta: self.beta,
            },
            other => {
                return Err(Error::config(
                    format!("--schedule {other}"),
                    "is continuous; it has no β_t table (use linear, scaled-linear, cosine, sigmoid or geometric)",
                ))
            }
        })
    }

    /// The discrete schedule table (β, ᾱ, σ, log-SNR over T steps).
    pub fn table(&self) -> Result<crate::schedule::Schedule> {
        self.beta_schedule()?.build(self.timesteps)
    }

    /// The training noise distribution, validated (a bad β fails before training starts).
    pub fn noise_dist(&self) -> Result<NoiseDist> {
        Ok(match self.kind {
            ScheduleName::Edm => NoiseDist::EdmLogNormal {
                p_mean: -1.2,
                p_std: 1.2,
                sigma_min: 0.002,
                sigma_max: 80.0,
            },
            ScheduleName::VeSde => NoiseDist::VeSde(VeSde::default()),
            ScheduleName::VpSde => NoiseDist::VpSde {
                sde: VpSde::default(),
                eps: 1e-3,
            },
            _ => {
                let beta = self.beta_schedule()?;
                beta.betas(self.timesteps)?;
                NoiseDist::Discrete {
                    beta,
                    num_train_timesteps: self.timesteps,
                }
            }
        })
    }
}

/// A sampler: one of ours, or a diffusers scheduler class, which runs diffusers' own loop on
/// image models (their `scheduler_config.json`) and the matching sampler of ours on tabular
/// models. Parsed once from the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerChoice {
    Ours(SamplerKind),
    Diffusers(SchedulerClass),
}

impl SamplerChoice {
    /// The sampler of ours that runs this choice when diffusers' loop does not apply.
    pub fn kind(self) -> Result<SamplerKind> {
        match self {
            SamplerChoice::Ours(k) => Ok(k),
            SamplerChoice::Diffusers(c) => c.name().parse(),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SamplerChoice::Ours(k) => k.name(),
            SamplerChoice::Diffusers(c) => c.name(),
        }
    }
}

impl std::fmt::Display for SamplerChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match SchedulerClass::parse(s) {
            Ok(c) => Ok(SamplerChoice::Diffusers(c)),
            Err(_) => Ok(SamplerChoice::Ours(s.parse()?)),
        }
    }
}

/// How the sampler's noise levels are spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum SpacingChoice {
    /// The training timesteps for DDPM / DDIM, exponential for every other sampler.
    #[default]
    Auto,
    /// The training schedule's own timesteps.
    Model,
    /// Karras et al. (ρ = 7).
    Karras,
    /// Evenly spaced in log σ.
    Exponential,
}

impl SpacingChoice {
    /// The spacing this choice means for sampler `kind`.
    pub fn resolve(self, kind: SamplerKind) -> Spacing {
        match self {
            SpacingChoice::Auto if matches!(kind, SamplerKind::Ddpm | SamplerKind::Ddim) => {
                Spacing::Model
            }
            SpacingChoice::Auto | SpacingChoice::Exponential => Spacing::Exponential,
            SpacingChoice::Model => Spacing::Model,
            SpacingChoice::Karras => Spacing::Karras { rho: 7.0 },
        }
    }
}

impl FromStr for SpacingChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => SpacingChoice::Auto,
            "model" | "default" => SpacingChoice::Model,
            "karras" => SpacingChoice::Karras,
            "exponential" => SpacingChoice::Exponential,
            _ => {
                return Err(Error::config(
                    "schedule",
                    format!("unknown spacing '{s}'; expected auto, model, karras or exponential"),
                ))
            }
        })
    }
}
