//! diffusers' sampling loop over a model folder, for exact comparison with diffusers:
//! `x = noise·init_noise_sigma; for t in timesteps: x = step(net(scale_model_input(x, t), t), t, x)`.
use std::path::Path;

use candle_core::Tensor;

use crate::cond::Cond;
use crate::nn::Network;
use crate::rng::NoiseSource;
use crate::scheduler::{Scheduler, SchedulerClass, SchedulerConfig};
use crate::Result;

/// The scheduler of `class` configured from the folder's `scheduler_config.json` (diffusers'
/// `Class.from_config(pipe.scheduler.config)`), with `steps` inference steps set.
pub fn folder_scheduler(dir: &Path, class: SchedulerClass, steps: usize) -> Result<Scheduler> {
    let path = dir.join(super::run::SCHEDULER);
    // The value form keeps non-finite floats (diffusers writes `lambda_min_clipped: -Infinity`)
    // as marker strings that `from_value` reads back; the text form is Python's JSON dialect.
    let mut v = SchedulerConfig::from_file(&path)?.to_value();
    v["_class_name"] = class.name().into();
    let mut s = Scheduler::new(SchedulerConfig::from_value(&v)?)?;
    s.set_timesteps(steps)?;
    Ok(s)
}

/// Run diffusers' loop from standard-normal `init_noise` [B, ...]; stochastic schedulers draw
/// their per-step noise from `noise` (one stream per sample).
pub fn diffusers_loop(
    sched: &mut Scheduler,
    net: &(dyn Network + Sync),
    init_noise: &Tensor,
    cond: &Cond,
    noise: &mut NoiseSource,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    // The loop runs on the network's device in f32; the network sees its own dtype.
    let (dev, dt) = (net.device(), net.dtype());
    let mut x = (init_noise
        .to_device(&dev)?
        .to_dtype(candle_core::DType::F32)?
        * sched.init_noise_sigma())?;
    let cond = &cond.to_network(&dev, dt)?;
    let b = x.dim(0)?;
    let timesteps = sched.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let input = sched.scale_model_input(&x, i)?;
        let tt = Tensor::full(t as f32, b, x.device())?;
        let input = input.to_dtype(dt)?;
        // On the CPU on a worker of the thread pool, as `Precond::denoise_rows` runs it.
        let forward = || net.forward(&input, &tt, cond);
        let out = if dev.is_cpu() {
            crate::threads::on_pool(forward)?
        } else {
            forward()?
        }
        .to_dtype(x.dtype())?;
        let z = noise.randn_like(&x)?;
        x = sched.step(&out, i, &x, Some(&z))?;
        on_step(i + 1, timesteps.len());
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::SchedulerClass;

    /// Regression: a folder whose scheduler_config.json holds `-Infinity` (diffusers' default
    /// `lambda_min_clipped` for DPMSolverMultistepScheduler) panicked here.
    #[test]
    fn folder_scheduler_reads_negative_infinity() {
        let dir = std::env::temp_dir().join(format!("langevin-pipe-inf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(crate::model::run::SCHEDULER),
            r#"{"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000,
               "lambda_min_clipped": -Infinity}"#,
        )
        .unwrap();
        for class in [
            SchedulerClass::parse("DPMSolverMultistepScheduler").unwrap(),
            SchedulerClass::parse("DDIMScheduler").unwrap(),
        ] {
            let s = folder_scheduler(&dir, class, 10).unwrap();
            assert_eq!(s.timesteps().len(), 10);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
