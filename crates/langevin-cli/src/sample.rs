//! `langevin sample`: draw samples from a run directory.
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use clap::Args as ClapArgs;
use langevin::data::Table;
use langevin::denoiser::{Cond, Denoiser};
use langevin::model::{Run, Spacing};
use langevin::sampler::{generate, Job, SamplerKind, SamplerOptions};

use crate::common::write_table;
use crate::progress::bar;

/// Sampler choice and knobs, shared by `sample` and `demo`.
#[derive(ClapArgs, Clone)]
pub struct SamplerArgs {
    /// Sampler: ddpm, ddim, langevin (annealed Langevin), pc (predictor-corrector), euler,
    /// euler-a, heun, dpmpp-2m.
    #[arg(long, default_value = "heun")]
    pub sampler: String,
    /// Number of noise levels (Heun uses 2 network evaluations per level but the last;
    /// annealed Langevin --langevin-steps per level).
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Spacing of the noise levels: model (the training schedule's timesteps), karras,
    /// exponential, or auto (model for ddpm/ddim, exponential otherwise).
    #[arg(long, default_value = "auto")]
    pub schedule: String,
    /// DDIM / Euler-ancestral η.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// EDM churn S_churn for euler / heun.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Annealed Langevin: updates per noise level.
    #[arg(long, default_value_t = 10)]
    pub langevin_steps: usize,
    /// Annealed Langevin: NCSN's ε in α_i = ε·σ_i²/σ_min² (default σ_min², i.e. α_i = σ_i²).
    #[arg(long)]
    pub langevin_eps: Option<f64>,
    /// Predictor-corrector: target signal-to-noise ratio of the Langevin corrector.
    #[arg(long, default_value_t = 0.16)]
    pub snr: f64,
    /// Predictor-corrector: corrector steps per level.
    #[arg(long, default_value_t = 1)]
    pub corrector_steps: usize,
    /// Smallest noise level (karras / exponential spacing; default: the model's).
    #[arg(long)]
    pub sigma_min: Option<f64>,
    /// Largest noise level (karras / exponential spacing; default: the model's).
    #[arg(long)]
    pub sigma_max: Option<f64>,
    /// Start from N(0, σ_max²) instead of the variance-preserving N(0, (σ_max² + 1)·I).
    #[arg(long)]
    pub ve_prior: bool,
}

impl SamplerArgs {
    pub fn kind(&self) -> Result<SamplerKind> {
        Ok(self.sampler.parse()?)
    }
    pub fn options(&self) -> SamplerOptions {
        SamplerOptions {
            eta: self.eta,
            s_churn: self.churn,
            langevin_steps: self.langevin_steps,
            langevin_eps: self.langevin_eps,
            snr: self.snr,
            corrector_steps: self.corrector_steps,
            ..Default::default()
        }
    }
}

#[derive(ClapArgs)]
pub struct Args {
    /// Run directory written by `langevin train`.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Number of samples.
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// Sample i uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Standard-normal starting noise [n, ...] as .npy (scaled like drawn noise).
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// Output: .csv, .npy or .png (scatter of the first two columns), in data units.
    #[arg(long)]
    pub out: PathBuf,
}

/// Draw `n` samples and map them back to data units.
/// Draw `n` samples [n, ...] in the model's own units (standardised columns, or images in
/// [-1, 1]); also returns the network evaluations per sample.
pub fn draw_raw(
    run: &Run,
    s: &SamplerArgs,
    n: usize,
    seed: u64,
    batch_size: usize,
    init: Option<&Tensor>,
    cond: &Cond,
) -> Result<(Tensor, usize)> {
    let kind = s.kind()?;
    let opts = s.options();
    let spacing: Spacing = match s.schedule.as_str() {
        "auto" if matches!(kind, SamplerKind::Ddpm | SamplerKind::Ddim) => Spacing::Model,
        "auto" => Spacing::Exponential,
        other => other.parse()?,
    };
    let sigmas = run
        .config
        .diffusion
        .sigmas(s.steps, spacing, (s.sigma_min, s.sigma_max))?;
    let job = Job {
        kind,
        opts: &opts,
        sigmas: &sigmas,
        n,
        seed,
        batch_size,
        sample_shape: run.config.sample_shape()?,
        sigma_data: if s.ve_prior { 0.0 } else { 1.0 },
        init_noise: init,
    };
    let pb = bar(n as u64, kind.name());
    let den: &dyn Denoiser = &run.denoiser;
    let (x, nfe) = generate(den, cond, &job, &mut |done| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    let finite = x.abs()?.max_all()?.to_scalar::<f32>()?.is_finite();
    if !finite {
        bail!(
            "sampling diverged (non-finite values); try more --steps or a smaller --langevin-eps"
        );
    }
    Ok((x, nfe))
}

/// Draw `n` rows of a tabular model, mapped back to data units.
pub fn draw(
    run: &Run,
    s: &SamplerArgs,
    n: usize,
    seed: u64,
    batch_size: usize,
    init: Option<&Tensor>,
) -> Result<(Table, usize)> {
    let info = &run.config.data;
    let Some(std) = &info.standardizer else {
        bail!(
            "{}: not a tabular model (no column statistics)",
            run.dir.display()
        );
    };
    let (x, nfe) = draw_raw(run, s, n, seed, batch_size, init, &Cond::default())?;
    let data: Vec<f64> = x
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    let t = Table::new(info.columns.clone(), data)?;
    Ok((std.inverse(&t)?, nfe))
}

pub fn run(a: Args) -> Result<()> {
    let run = Run::load(&a.model, &Device::Cpu)?;
    let init = match &a.init_noise {
        Some(p) => {
            let (shape, v) = langevin::data::npy::load_npy_f32(p)?;
            Some(Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?)
        }
        None => None,
    };
    let (t, nfe) = draw(&run, &a.sampler, a.n, a.seed, a.batch_size, init.as_ref())?;
    write_table(
        &a.out,
        &t,
        &format!("{} samples ({} NFE)", a.sampler.sampler, nfe),
    )?;
    println!(
        "wrote {} samples ({} network evaluations each) to {}",
        a.n,
        nfe,
        a.out.display()
    );
    Ok(())
}
