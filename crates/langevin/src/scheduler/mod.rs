//! diffusers-compatible schedulers: the same configuration file gives the same timesteps, σ
//! and `step()` results as diffusers 0.36 (float32 tables, numpy spacing, torch arithmetic
//! order), so users coming from diffusers get the same numbers.
//!
//! Classes: DDPM, DDIM, Euler, Euler-ancestral, DPM-Solver(++) multistep, UniPC multistep,
//! Heun, LMS and KDPM2. Heun and KDPM2 take two model evaluations per step; like diffusers
//! their [`Scheduler::timesteps`] list every evaluation (`2n − 1` for `n` steps), and
//! `step(i)` is called once per entry, so the loop below serves every class.
//!
//! ```no_run
//! # use langevin::scheduler::{Scheduler, SchedulerConfig};
//! # fn model(x: &candle_core::Tensor, t: f64) -> candle_core::Tensor { x.clone() }
//! # fn main() -> langevin::Result<()> {
//! let config = SchedulerConfig::from_file("scheduler_config.json")?;
//! let mut sched = Scheduler::new(config)?;
//! sched.set_timesteps(25)?;
//! let mut x = candle_core::Tensor::zeros((1, 4, 8, 8), candle_core::DType::F32, &candle_core::Device::Cpu)?;
//! x = x.affine(sched.init_noise_sigma(), 0.0)?;
//! for i in 0..sched.timesteps().len() {
//!     let input = sched.scale_model_input(&x, i)?;
//!     let out = model(&input, sched.timesteps()[i]);
//!     x = sched.step(&out, i, &x, None)?;
//! }
//! # Ok(()) }
//! ```
pub mod config;
pub mod enums;
pub mod numerics;

mod alpha_family;
mod dpm_multistep;
mod euler;
mod heun;
mod kdpm2;
mod lms;
mod ops;
mod tables;
mod unipc;

#[cfg(test)]
mod tests;

use candle_core::Tensor;
use serde_json::{json, Value};

pub use config::{SchedulerConfig, DIFFUSERS_VERSION};
pub use enums::*;
pub use tables::{rescale_zero_terminal_snr, TrainTables};

use crate::{Error, Result};

/// A diffusers scheduler: configuration, float32 training tables and the inference schedule.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    tables: TrainTables,
    timesteps: Vec<f64>,
    timesteps_are_integer: bool,
    sigmas: Option<Vec<f64>>,
    num_inference_steps: Option<usize>,
    eta: f64,
    use_clipped_model_output: bool,
    history: Vec<Tensor>,
    lower_order_nums: usize,
    /// UniPC: the sample before the last predictor, and that predictor's order.
    last_sample: Option<Tensor>,
    this_order: usize,
    /// Heun / KDPM2: what the first-order half of a step leaves for the second.
    stash: Option<heun::Stash>,
    /// KDPM2: the interpolated (mid-point) σ, laid out like `sigmas`.
    sigmas_interpol: Option<Vec<f64>>,
}

impl Scheduler {
    /// Build the scheduler (diffusers' `__init__`).
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let tables = TrainTables::new(&config)?;
        Ok(Self {
            config,
            tables,
            timesteps: vec![],
            timesteps_are_integer: true,
            sigmas: None,
            num_inference_steps: None,
            eta: 0.0,
            use_clipped_model_output: false,
            history: vec![],
            lower_order_nums: 0,
            last_sample: None,
            this_order: 0,
            stash: None,
            sigmas_interpol: None,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// β and ᾱ as diffusers holds them (float32).
    pub fn tables(&self) -> &TrainTables {
        &self.tables
    }

    /// DDIM's η (0 = deterministic DDIM; 1 = DDPM-like). With η > 0 `step` needs noise.
    pub fn set_eta(&mut self, eta: f64) -> Result<()> {
        if !(eta >= 0.0 && eta.is_finite()) {
            return Err(Error::config(
                "eta",
                format!("must be finite and ≥ 0, got {eta}"),
            ));
        }
        self.eta = eta;
        Ok(())
    }

    /// DDIM's `use_clipped_model_output`.
    pub fn set_use_clipped_model_output(&mut self, on: bool) {
        self.use_clipped_model_output = on;
    }

    fn check_steps(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::config("num_inference_steps", "must be at least 1"));
        }
        if matches!(
            self.config.class,
            SchedulerClass::Ddim | SchedulerClass::Ddpm
        ) && n > self.config.num_train_timesteps
        {
            return Err(Error::config(
                "num_inference_steps",
                format!(
                    "{n} cannot exceed num_train_timesteps = {}",
                    self.config.num_train_timesteps
                ),
            ));
        }
        Ok(())
    }

    /// diffusers' `set_timesteps(num_inference_steps=n)`.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.check_steps(n)?;
        self.history.clear();
        self.lower_order_nums = 0;
        self.last_sample = None;
        self.stash = None;
        self.sigmas_interpol = None;
        use SchedulerClass::*;
        match self.config.class {
            Ddim | Ddpm => {
                self.timesteps = tables::spaced_timesteps(&self.config, n)?;
                self.timesteps_are_integer = true;
                self.sigmas = None;
                self.num_inference_steps = Some(n);
                Ok(())
            }
            EulerDiscrete | EulerAncestralDiscrete => {
                euler::set_timesteps(self, n, euler::Custom::None)
            }
            DpmSolverMultistep => dpm_multistep::set_timesteps(self, n, None),
            UniPcMultistep => unipc::set_timesteps(self, n),
            HeunDiscrete => heun::set_timesteps(self, n),
            LmsDiscrete => lms::set_timesteps(self, n),
            KDpm2Discrete => kdpm2::set_timesteps(self, n),
        }
    }

    /// diffusers' `set_timesteps(timesteps=[...])` (DDPM, Euler, DPMSolverMultistep).
    pub fn set_custom_timesteps(&mut self, timesteps: &[f64]) -> Result<()> {
        if timesteps.is_empty() {
            return Err(Error::config("timesteps", "is empty"));
        }
        for w in timesteps.windows(2) {
            if w[1] >= w[0] {
                return Err(Error::config("timesteps", "must be in descending order"));
            }
        }
        if timesteps[0] >= self.config.num_train_timesteps as f64
            || *timesteps.last().unwrap() < 0.0
        {
            return Err(Error::config(
                "timesteps",
                format!("must lie in [0, {})", self.config.num_train_timesteps),
            ));
        }
        self.history.clear();
        self.lower_order_nums = 0;
        use SchedulerClass::*;
        match self.config.class {
            Ddpm => {
                self.timesteps = timesteps.iter().map(|t| t.trunc()).collect();
                self.timesteps_are_integer = true;
                self.sigmas = None;
                self.num_inference_steps = Some(timesteps.len());
                Ok(())
            }
            EulerDiscrete => euler::set_timesteps(self, 0, euler::Custom::Timesteps(timesteps)),
            DpmSolverMultistep => dpm_multistep::set_timesteps(self, 0, Some(timesteps)),
            other => Err(Error::config(
                "timesteps",
                format!("{other} does not take custom timesteps"),
            )),
        }
    }

    /// diffusers' `set_timesteps(sigmas=[...])` (EulerDiscrete): `sigmas` includes the final
    /// value, so `len - 1` steps are taken.
    pub fn set_custom_sigmas(&mut self, sigmas: &[f64]) -> Result<()> {
        if sigmas.len() < 2 {
            return Err(Error::config("sigmas", "needs at least two values"));
        }
        match self.config.class {
            SchedulerClass::EulerDiscrete => {
                euler::set_timesteps(self, 0, euler::Custom::Sigmas(sigmas))
            }
            other => Err(Error::config(
                "sigmas",
                format!("{other} does not take custom sigmas"),
            )),
        }
    }

    /// The inference timesteps, as diffusers holds them: integers for DDPM/DDIM/DPM-Solver/
    /// UniPC, float32 values for Euler/Heun/LMS/KDPM2 (float64 for KDPM2 with Karras or
    /// exponential σ). Heun and KDPM2 list each model evaluation (`2n − 1` entries).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Whether diffusers holds the timesteps as integers (int64).
    pub fn timesteps_are_integer(&self) -> bool {
        self.timesteps_are_integer
    }

    /// σ after `set_timesteps` (float32 values, one more than the timesteps; Heun and KDPM2
    /// hold diffusers' repeated layout), for the schedulers that hold them.
    pub fn sigmas(&self) -> Option<&[f64]> {
        self.sigmas.as_deref()
    }

    /// KDPM2's interpolated σ (√(σ_{j-1}·σ_j), laid out like [`Self::sigmas`]).
    pub fn sigmas_interpol(&self) -> Option<&[f64]> {
        self.sigmas_interpol.as_deref()
    }

    /// The standard deviation of the initial noise.
    pub fn init_noise_sigma(&self) -> f64 {
        match self.config.class {
            SchedulerClass::EulerDiscrete
            | SchedulerClass::EulerAncestralDiscrete
            | SchedulerClass::HeunDiscrete
            | SchedulerClass::LmsDiscrete
            | SchedulerClass::KDpm2Discrete => euler::init_noise_sigma(self),
            _ => 1.0,
        }
    }

    fn check_ready(&self, i: usize) -> Result<()> {
        if self.num_inference_steps.is_none() {
            return Err(Error::config(
                "num_inference_steps",
                "set_timesteps must run before step",
            ));
        }
        if i >= self.timesteps.len() {
            return Err(Error::config(
                "step_index",
                format!("{i} is past the schedule's {} steps", self.timesteps.len()),
            ));
        }
        Ok(())
    }

    /// The model input at step `i` (σ-space schedulers divide by √(σ²+1); KDPM2 uses the
    /// interpolated σ at its second-order positions).
    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        self.check_ready(i)?;
        match self.config.class {
            SchedulerClass::EulerDiscrete
            | SchedulerClass::EulerAncestralDiscrete
            | SchedulerClass::HeunDiscrete
            | SchedulerClass::LmsDiscrete => euler::scale_model_input(self, sample, i),
            SchedulerClass::KDpm2Discrete => kdpm2::scale_model_input(self, sample, i),
            _ => Ok(sample.clone()),
        }
    }

    /// One reverse step at step index `i` (0-based position in [`Self::timesteps`]); f32
    /// tensors of any shape. Stochastic schedulers (DDPM, Euler-ancestral, DDIM with η > 0,
    /// SDE-DPM-Solver) take their standard-normal `noise` explicitly. Multistep and two-stage
    /// schedulers (DPM-Solver, UniPC, LMS, Heun, KDPM2) must be stepped in order 0, 1, 2, ….
    /// Heun and KDPM2: an even `i` is the first-order half of a step and returns the
    /// intermediate sample the model is evaluated on at `i + 1`.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.check_ready(i)?;
        ops::check_f32(model_output, "model_output")?;
        ops::check_f32(sample, "sample")?;
        if model_output.dims() != sample.dims() {
            return Err(Error::config(
                "model_output",
                format!(
                    "shape {:?} differs from the sample's {:?}",
                    model_output.dims(),
                    sample.dims()
                ),
            ));
        }
        use SchedulerClass::*;
        match self.config.class {
            Ddim => alpha_family::ddim_step(self, model_output, i, sample, noise),
            Ddpm => alpha_family::ddpm_step(self, model_output, i, sample, noise),
            EulerDiscrete => euler::euler_step(self, model_output, i, sample),
            EulerAncestralDiscrete => {
                euler::euler_ancestral_step(self, model_output, i, sample, noise)
            }
            DpmSolverMultistep => dpm_multistep::step(self, model_output, i, sample, noise),
            UniPcMultistep => unipc::step(self, model_output, i, sample),
            HeunDiscrete => heun::step(self, model_output, i, sample),
            LmsDiscrete => lms::step(self, model_output, i, sample),
            KDpm2Discrete => kdpm2::step(self, model_output, i, sample),
        }
    }
}

fn number(x: f64, integer: bool) -> Value {
    if integer && x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// `{"timesteps": [...], "sigmas": [...]}`: exactly what diffusers holds after
/// `set_timesteps(steps)` (`sigmas` only for schedulers that hold them; integers stay integers).
pub fn schedule_json(config: &SchedulerConfig, steps: usize) -> Result<Value> {
    let mut s = Scheduler::new(config.clone())?;
    s.set_timesteps(steps)?;
    let int = s.timesteps_are_integer();
    let mut out = serde_json::Map::new();
    out.insert(
        "timesteps".into(),
        Value::Array(s.timesteps().iter().map(|&t| number(t, int)).collect()),
    );
    if let Some(sig) = s.sigmas() {
        out.insert(
            "sigmas".into(),
            Value::Array(sig.iter().map(|&x| number(x, false)).collect()),
        );
    }
    Ok(Value::Object(out))
}
