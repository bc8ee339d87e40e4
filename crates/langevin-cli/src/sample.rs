//! `langevin sample`: draw samples from a run directory.
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use clap::Args as ClapArgs;
use langevin::api::{self, SampleOptions, SampleRequest, SamplerChoice, SpacingChoice};
use langevin::data::Table;
use langevin::denoiser::{Cond, Denoiser};
use langevin::model::Run;
use langevin::sampler::{SamplerKind, SamplerOptions};

use crate::common::write_table;
use crate::progress::Bar;

/// Sampler choice and knobs, shared by `sample` and `demo`.
#[derive(ClapArgs, Clone)]
pub struct SamplerArgs {
    /// Sampler: ddpm, ddim (--eta), langevin (annealed Langevin), pc (predictor-corrector),
    /// euler, euler-a, heun (--churn), lms, dpm2, dpm2-a, dpmpp-2m, dpmpp-2s-a, dpmpp-2m-sde,
    /// dpmpp-3m-sde, unipc-bh1, unipc-bh2 (alias unipc), rk45 (adaptive probability-flow ODE).
    /// A diffusers class name (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler,
    /// EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler,
    /// KDPM2DiscreteScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler) runs
    /// diffusers' own loop on image models (their scheduler_config.json) and the matching
    /// sampler above on tabular models.

    #[arg(long, default_value = "heun")]
    pub sampler: SamplerChoice,
    /// Number of noise levels (Heun uses 2 network evaluations per level but the last;
    /// annealed Langevin --langevin-steps per level).
    #[arg(long, default_value_t = 25, value_parser = crate::ranges::levels, allow_negative_numbers = true)]
    pub steps: usize,
    /// Spacing of the noise levels: model (the training schedule's timesteps), karras,
    /// exponential, or auto (model for ddpm/ddim, exponential otherwise).
    #[arg(long, value_enum, default_value_t = SpacingChoice::Auto)]
    pub schedule: SpacingChoice,
    /// η of DDIM (default 0, deterministic) and of the ancestral / SDE samplers (default 1;
    /// 0 makes them deterministic).
    #[arg(long, value_parser = crate::ranges::non_negative, allow_negative_numbers = true)]
    pub eta: Option<f64>,
    /// EDM churn S_churn for euler / heun.
    #[arg(long, default_value_t = 0.0, value_parser = crate::ranges::non_negative, allow_negative_numbers = true)]
    pub churn: f64,
    /// Annealed Langevin: updates per noise level.
    #[arg(long, default_value_t = 10, value_parser = crate::ranges::levels, allow_negative_numbers = true)]
    pub langevin_steps: usize,
    /// Annealed Langevin: NCSN's ε in α_i = ε·σ_i²/σ_min² (default σ_min², i.e. α_i = σ_i²).
    #[arg(long, value_parser = crate::ranges::positive, allow_negative_numbers = true)]
    pub langevin_eps: Option<f64>,
    /// Predictor-corrector: target signal-to-noise ratio of the Langevin corrector.
    #[arg(long, default_value_t = 0.16, value_parser = crate::ranges::positive, allow_negative_numbers = true)]
    pub snr: f64,
    /// Predictor-corrector: corrector steps per level.
    #[arg(long, default_value_t = 1, value_parser = crate::ranges::levels, allow_negative_numbers = true)]
    pub corrector_steps: usize,
    /// Smallest noise level (karras / exponential spacing; default: the model's).
    #[arg(long, value_parser = crate::ranges::positive, allow_negative_numbers = true)]
    pub sigma_min: Option<f64>,
    /// Largest noise level (karras / exponential spacing; default: the model's).
    #[arg(long, value_parser = crate::ranges::positive, allow_negative_numbers = true)]
    pub sigma_max: Option<f64>,
    /// Start from N(0, σ_max²) instead of the variance-preserving N(0, (σ_max² + 1)·I).
    #[arg(long)]
    pub ve_prior: bool,
}

impl SamplerArgs {
    /// The library's sampling options, drawing `batch_size` samples per network batch.
    pub fn sample_options(&self, batch_size: usize) -> SampleOptions {
        SampleOptions {
            sampler: self.sampler,
            steps: self.steps,
            spacing: self.schedule,
            eta: self.eta,
            churn: self.churn,
            langevin_steps: self.langevin_steps,
            langevin_eps: self.langevin_eps,
            snr: self.snr,
            corrector_steps: self.corrector_steps,
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            ve_prior: self.ve_prior,
            batch_size,
        }
    }

    pub fn kind(&self) -> Result<SamplerKind> {
        Ok(self.sampler.kind()?)
    }

    pub fn options(&self) -> SamplerOptions {
        self.sample_options(1).options()
    }
}

#[derive(ClapArgs)]
pub struct Args {
    /// Run directory written by `langevin train`, or a diffusers UNet2DModel folder.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub compute: crate::common::ComputeArgs,
    /// Number of samples.
    #[arg(long, default_value_t = 16, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub n: usize,
    /// Sample i uses seed + i.
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub seed: u64,
    #[arg(long, default_value_t = 64, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// Standard-normal starting noise [n, ...] as .npy (scaled like drawn noise), e.g. to start
    /// from the same point as another framework.
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// Class to draw (class-conditional models).
    #[arg(long, value_parser = crate::ranges::label, allow_negative_numbers = true)]
    pub class: Option<u32>,
    /// Classifier-free guidance scale w (1 = plain conditional; needs --class).
    #[arg(long, default_value_t = 1.0, value_parser = crate::ranges::non_negative, allow_negative_numbers = true)]
    pub guidance: f64,
    /// Output: tabular models write .csv, .npy or .png (scatter); image models a PNG grid.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Image models: also write one PNG per sample into this folder.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Also write the raw samples [n, ...] as .npy (images in [-1, 1]).
    #[arg(long)]
    pub npy: Option<PathBuf>,
}

/// `langevin::api::sample::draw_with` with a progress bar.
#[allow(clippy::too_many_arguments)]
pub fn draw_with(
    run: &Run,
    den: &dyn Denoiser,
    s: &SamplerArgs,
    n: usize,
    seed: u64,
    batch_size: usize,
    init: Option<&Tensor>,
    cond: &Cond,
) -> Result<(Tensor, usize)> {
    let opts = s.sample_options(batch_size);
    Ok(api::sample::draw_with(
        run,
        den,
        &opts,
        n,
        seed,
        init,
        cond,
        &Bar::new(),
    )?)
}

/// `langevin::api::sample::draw_table` (rows in data units) with a progress bar.
pub fn draw(
    run: &Run,
    s: &SamplerArgs,
    n: usize,
    seed: u64,
    batch_size: usize,
    init: Option<&Tensor>,
) -> Result<(Table, usize)> {
    let opts = s.sample_options(batch_size);
    Ok(api::sample::draw_table(
        run,
        &opts,
        n,
        seed,
        init,
        &Bar::new(),
    )?)
}

pub fn run(a: Args) -> Result<()> {
    let run = a.compute.load_run(&a.model)?;
    let init = match &a.init_noise {
        Some(p) => {
            let (shape, v) = langevin::data::npy::load_npy_f32(p)?;
            let z = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?;
            api::sample::check_init_noise(&run, a.n, &z, &p.display().to_string())?;
            Some(z)
        }
        None => None,
    };
    let tabular = run.config.data.standardizer.is_some();
    if tabular && a.out.is_none() {
        bail!("--out FILE (.csv, .npy or .png) is required");
    }
    let req = SampleRequest {
        n: a.n,
        seed: a.seed,
        class: a.class,
        labels: None,
        guidance: a.guidance,
        init_noise: init,
    };
    let (x, nfe) = api::sample(
        &run,
        &a.sampler.sample_options(a.batch_size),
        &req,
        &Bar::new(),
    )?;
    if tabular {
        let out = a.out.as_ref().unwrap();
        let data: Vec<f64> = x
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect();
        let t = Table::new(run.config.data.columns.clone(), data)?;
        let nfe = nfe.unwrap_or(0);
        write_table(
            out,
            &t,
            &format!("{} samples ({} NFE)", a.sampler.sampler, nfe),
        )?;
        println!(
            "wrote {} samples ({} network evaluations each) to {}",
            a.n,
            nfe,
            out.display()
        );
        return Ok(());
    }
    write_images(&x, a.out.as_deref(), a.out_dir.as_deref(), a.npy.as_deref())
}

/// Write image samples [n, C, H, W] in [-1, 1] as a grid PNG, per-sample PNGs and/or .npy.
pub fn write_images(
    x: &Tensor,
    grid: Option<&std::path::Path>,
    dir: Option<&std::path::Path>,
    npy: Option<&std::path::Path>,
) -> Result<()> {
    if grid.is_none() && dir.is_none() && npy.is_none() {
        bail!("nothing to write: give --out grid.png, --out-dir DIR and/or --npy FILE");
    }
    let dims = x.dims().to_vec();
    let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
    if let Some(p) = npy {
        langevin::data::npy::save_npy(p, &dims, &v)?;
        println!("wrote {}", p.display());
    }
    if grid.is_some() || dir.is_some() {
        if dims.len() != 4 {
            bail!("PNG output needs image samples [n, C, H, W], got {dims:?}");
        }
        let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        if let Some(p) = grid {
            let cols = (n as f64).sqrt().ceil() as usize;
            langevin::data::images::save_grid_png(p, &v, c, h, w, cols)?;
            println!("wrote {}", p.display());
        }
        if let Some(d) = dir {
            for i in 0..n {
                let img = &v[i * c * h * w..(i + 1) * c * h * w];
                langevin::data::images::save_png(&d.join(format!("{i:06}.png")), img, c, h, w)?;
            }
            println!("wrote {n} PNGs to {}", d.display());
        }
    }
    Ok(())
}
