//! The diffusion process a model is trained for: prediction target and noise distribution.
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::denoiser::{NoiseCond, Prediction};
use crate::schedule::sigmas::{self, VeSde, VpSde};
use crate::schedule::{BetaSchedule, Schedule};
use crate::{Error, Result};

/// Where training draws its noise levels from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoiseDist {
    /// A discrete β schedule of `num_train_timesteps` steps; t ~ U{0..T-1}, c_noise = t.
    Discrete {
        beta: BetaSchedule,
        num_train_timesteps: usize,
    },
    /// EDM's log-normal ln σ ~ N(p_mean, p_std²), c_noise = ¼ ln σ (Karras et al. 2022).
    EdmLogNormal {
        p_mean: f64,
        p_std: f64,
        sigma_min: f64,
        sigma_max: f64,
    },
    /// Variance-exploding SDE, t ~ U(0, 1).
    VeSde(VeSde),
    /// Variance-preserving SDE, t ~ U(eps, 1).
    VpSde { sde: VpSde, eps: f64 },
}

impl Default for NoiseDist {
    fn default() -> Self {
        NoiseDist::Discrete {
            beta: BetaSchedule::default(),
            num_train_timesteps: 1000,
        }
    }
}

/// Prediction target + noise distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Diffusion {
    pub prediction: Prediction,
    pub noise: NoiseDist,
}

/// How a sampler's σ levels are spaced between the model's σ_max and σ_min.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Spacing {
    /// The model's own: the training timesteps for a discrete schedule, Karras for EDM,
    /// geometric for the VE SDE, score_sde's grid for the VP SDE.
    #[default]
    Model,
    Karras {
        rho: f64,
    },
    Exponential,
}

impl std::str::FromStr for Spacing {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "model" | "default" => Ok(Spacing::Model),
            "karras" => Ok(Spacing::Karras { rho: 7.0 }),
            "exponential" => Ok(Spacing::Exponential),
            _ => Err(Error::config(
                "schedule",
                format!("unknown spacing '{s}'; expected model, karras or exponential"),
            )),
        }
    }
}

impl Diffusion {
    /// The discrete training schedule, when there is one.
    pub fn discrete(&self) -> Result<Option<Schedule>> {
        match &self.noise {
            NoiseDist::Discrete {
                beta,
                num_train_timesteps,
            } => Ok(Some(beta.build(*num_train_timesteps)?)),
            _ => Ok(None),
        }
    }

    pub fn noise_cond(&self) -> Result<NoiseCond> {
        Ok(match self.discrete()? {
            Some(s) => NoiseCond::Timestep(s),
            None => NoiseCond::LogSigma,
        })
    }

    /// (σ_min, σ_max) the model was trained on.
    pub fn sigma_range(&self) -> Result<(f64, f64)> {
        Ok(match &self.noise {
            NoiseDist::Discrete { .. } => {
                let s = self.discrete()?.unwrap();
                (s.sigma_min(), s.sigma_max())
            }
            NoiseDist::EdmLogNormal {
                sigma_min,
                sigma_max,
                ..
            } => (*sigma_min, *sigma_max),
            NoiseDist::VeSde(v) => (v.sigma_min, v.sigma_max),
            NoiseDist::VpSde { sde, eps } => (sde.sigma(*eps), sde.sigma(1.0)),
        })
    }

    /// `n` sampling levels plus the trailing 0.
    /// `range` overrides (σ_min, σ_max) for the Karras and exponential spacings.
    pub fn sigmas(
        &self,
        n: usize,
        spacing: Spacing,
        range: (Option<f64>, Option<f64>),
    ) -> Result<Vec<f64>> {
        if n == 0 {
            return Err(Error::config("steps", "must be at least 1"));
        }
        let (mut lo, mut hi) = self.sigma_range()?;
        if range.0.is_some() || range.1.is_some() {
            if spacing == Spacing::Model {
                return Err(Error::config(
                    "sigma_min/sigma_max",
                    "apply to the karras and exponential spacings; pick one with --schedule",
                ));
            }
            lo = range.0.unwrap_or(lo);
            hi = range.1.unwrap_or(hi);
        }
        match spacing {
            Spacing::Karras { rho } => sigmas::karras(n, lo, hi, rho),
            Spacing::Exponential => sigmas::exponential(n, lo, hi),
            Spacing::Model => match &self.noise {
                NoiseDist::Discrete { .. } => Ok(sigmas::discrete(&self.discrete()?.unwrap(), n)),
                NoiseDist::EdmLogNormal { .. } => sigmas::karras(n, lo, hi, 7.0),
                NoiseDist::VeSde(v) => v.sigmas(n),
                NoiseDist::VpSde { sde, eps } => sde.sigmas(n, *eps),
            },
        }
    }

    /// Draw `b` training noise levels.
    pub fn sample_sigmas(
        &self,
        b: usize,
        schedule: Option<&Schedule>,
        rng: &mut impl Rng,
    ) -> Vec<f64> {
        (0..b)
            .map(|_| match &self.noise {
                NoiseDist::Discrete { .. } => {
                    let s = schedule.expect("discrete schedule");
                    s.sigmas[rng.random_range(s.first_active_step()..s.len())]
                }
                NoiseDist::EdmLogNormal { p_mean, p_std, .. } => {
                    let z: f64 = StandardNormal.sample(rng);
                    (p_mean + p_std * z).exp()
                }
                NoiseDist::VeSde(v) => v.sigma(rng.random::<f64>()),
                NoiseDist::VpSde { sde, eps } => sde.sigma(eps + (1.0 - eps) * rng.random::<f64>()),
            })
            .collect()
    }
}

impl Diffusion {
    /// The diffusion a diffusers `scheduler_config.json` describes (its betas and target).
    pub fn from_scheduler_config(sc: &crate::scheduler::SchedulerConfig) -> Result<Self> {
        use crate::scheduler::{BetaScheduleKind as K, PredictionType as P};
        let (beta_start, beta_end) = (sc.beta_start, sc.beta_end);
        let beta = match (&sc.trained_betas, sc.beta_schedule) {
            (Some(b), _) => BetaSchedule::Custom {
                trained_betas: b.clone(),
            },
            (None, K::Linear) => BetaSchedule::Linear {
                beta_start,
                beta_end,
            },
            (None, K::ScaledLinear) => BetaSchedule::ScaledLinear {
                beta_start,
                beta_end,
            },
            (None, K::SquaredcosCapV2) => BetaSchedule::Cosine,
            (None, K::Sigmoid) => BetaSchedule::Sigmoid {
                beta_start,
                beta_end,
            },
        };
        let prediction = match sc.prediction_type {
            P::Epsilon => Prediction::Epsilon,
            P::Sample => Prediction::Sample,
            P::VPrediction => Prediction::VPrediction,
        };
        Ok(Self {
            prediction,
            noise: NoiseDist::Discrete {
                beta,
                num_train_timesteps: sc.num_train_timesteps,
            },
        })
    }

    /// A DDPMScheduler config diffusers can load, for discrete schedules with a diffusers target;
    /// schedules diffusers has no name for (geometric, custom) are written as `trained_betas`.
    pub fn scheduler_config(&self) -> Result<Option<crate::scheduler::SchedulerConfig>> {
        use crate::scheduler::{
            BetaScheduleKind as K, PredictionType as P, SchedulerClass, SchedulerConfig,
        };
        let NoiseDist::Discrete {
            beta,
            num_train_timesteps,
        } = &self.noise
        else {
            return Ok(None);
        };
        let prediction_type = match self.prediction {
            Prediction::Epsilon => P::Epsilon,
            Prediction::Sample => P::Sample,
            Prediction::VPrediction => P::VPrediction,
            Prediction::Score | Prediction::Edm { .. } => return Ok(None),
        };
        let mut sc = SchedulerConfig::new(SchedulerClass::Ddpm);
        sc.num_train_timesteps = *num_train_timesteps;
        sc.prediction_type = prediction_type;
        sc.clip_sample = false;
        match beta {
            BetaSchedule::Linear {
                beta_start,
                beta_end,
            } => (sc.beta_start, sc.beta_end) = (*beta_start, *beta_end),
            BetaSchedule::ScaledLinear {
                beta_start,
                beta_end,
            } => {
                (sc.beta_start, sc.beta_end, sc.beta_schedule) =
                    (*beta_start, *beta_end, K::ScaledLinear)
            }
            BetaSchedule::Sigmoid {
                beta_start,
                beta_end,
            } => {
                (sc.beta_start, sc.beta_end, sc.beta_schedule) =
                    (*beta_start, *beta_end, K::Sigmoid)
            }
            BetaSchedule::Cosine => sc.beta_schedule = K::SquaredcosCapV2,
            other => sc.trained_betas = Some(other.betas(*num_train_timesteps)?),
        }
        Ok(Some(sc))
    }
}
