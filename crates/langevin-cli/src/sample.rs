//! `langevin sample`: draw samples from a run directory.
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use clap::Args as ClapArgs;
use langevin::data::Table;
use langevin::denoiser::{Cond, Denoiser, Guided};
use langevin::model::pipeline::{diffusers_loop, folder_scheduler};
use langevin::model::NetworkConfig;
use langevin::model::{Run, Spacing};
use langevin::rng::NoiseSource;
use langevin::sampler::{generate, Job, SamplerKind, SamplerOptions};
use langevin::scheduler::SchedulerClass;

use crate::common::write_table;
use crate::progress::bar;

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
    pub sampler: String,
    /// Number of noise levels (Heun uses 2 network evaluations per level but the last;
    /// annealed Langevin --langevin-steps per level).
    #[arg(long, default_value_t = 25, value_parser = crate::ranges::levels, allow_negative_numbers = true)]
    pub steps: usize,
    /// Spacing of the noise levels: model (the training schedule's timesteps), karras,
    /// exponential, or auto (model for ddpm/ddim, exponential otherwise).
    #[arg(long, default_value = "auto")]
    pub schedule: String,
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
    /// The noise levels for `run`: `auto` spacing is the training timesteps for DDPM/DDIM and
    /// exponential for every other sampler.
    pub fn sigmas(&self, run: &Run) -> Result<Vec<f64>> {
        let spacing: Spacing = match self.schedule.as_str() {
            "auto" if matches!(self.kind()?, SamplerKind::Ddpm | SamplerKind::Ddim) => {
                Spacing::Model
            }
            "auto" => Spacing::Exponential,
            other => other.parse()?,
        };
        Ok(run
            .config
            .diffusion
            .sigmas(self.steps, spacing, (self.sigma_min, self.sigma_max))?)
    }

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

/// Draw `n` samples [n, ...] in the model's own units (standardised columns, or images in
/// [-1, 1]) with `den` (the run's own denoiser, or e.g. a guided one); also returns the network
/// evaluations per sample.
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
    let kind = s.kind()?;
    let opts = s.options();
    let sigmas = s.sigmas(run)?;
    let job = Job {
        kind,
        opts: &opts,
        sigmas: &sigmas,
        n,
        seed,
        batch_size,
        sample_shape: match init {
            Some(z) => z.dims()[1..].to_vec(),
            None => run.config.sample_shape()?,
        },

        sigma_data: if s.ve_prior { 0.0 } else { 1.0 },
        init_noise: init,
    };
    let need =
        langevin::memory::sampling_bytes(&run.config.network, &job.sample_shape, n, batch_size);
    langevin::memory::check(
        &format!("drawing {n} samples in batches of {batch_size}"),
        need,
        None,
        || {
            "lower --n (write in parts with --seed offsets, or use `langevin augment`, which streams) or --batch-size".into()
        },
    )?;
    let pb = bar(n as u64, kind.name());
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
    let (x, nfe) = draw_with(
        run,
        &run.denoiser,
        s,
        n,
        seed,
        batch_size,
        init,
        &Cond::default(),
    )?;
    let data: Vec<f64> = x
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    let t = Table::new(info.columns.clone(), data)?;
    Ok((std.inverse(&t)?, nfe))
}

/// diffusers' own loop with scheduler `class` on a model folder, in batches.
fn diffusers_draw(
    run: &Run,
    class: SchedulerClass,
    a: &Args,
    init: Option<&Tensor>,
    cond: &Cond,
) -> Result<Tensor> {
    if a.guidance != 1.0 {
        bail!("--guidance works with langevin's samplers (e.g. --sampler dpmpp-2m), not with diffusers scheduler classes");
    }
    let mut shape = vec![a.n];
    shape.extend(run.config.sample_shape()?);
    let pb = bar(a.n as u64, class.name());
    let mut outs = vec![];
    let mut start = 0;
    while start < a.n {
        let b = a.batch_size.min(a.n - start);
        let mut noise =
            NoiseSource::from_seeds((start..start + b).map(|i| a.seed.wrapping_add(i as u64)));
        let mut bshape = shape.clone();
        bshape[0] = b;
        let z = match init {
            Some(z) => z.narrow(0, start, b)?,
            None => noise.randn(&bshape, &langevin::nn::Network::device(&run.denoiser.net))?,
        };
        let mut sched = folder_scheduler(&run.dir, class, a.sampler.steps)?;
        let c = Cond {
            labels: cond
                .labels
                .as_ref()
                .map(|l| l.narrow(0, start, b))
                .transpose()?,
            image: None,
        };
        outs.push(diffusers_loop(
            &mut sched,
            &run.denoiser.net,
            &z,
            &c,
            &mut noise,
            &mut |_, _| {},
        )?);
        start += b;
        pb.set_position(start as u64);
    }
    pb.finish_and_clear();
    Ok(Tensor::cat(&outs, 0)?)
}

pub fn run(a: Args) -> Result<()> {
    let run = a.compute.load_run(&a.model)?;
    let init = match &a.init_noise {
        Some(p) => {
            let (shape, v) = langevin::data::npy::load_npy_f32(p)?;
            let mut want = vec![a.n];
            want.extend(run.config.sample_shape()?);
            // Image models take any spatial size their levels can halve, as diffusers does.
            let fits = match &run.config.network {
                NetworkConfig::Unet(_) => shape.len() == 4 && shape[..2] == want[..2],
                NetworkConfig::Mlp(_) => shape == want,
            };
            if !fits {
                bail!(
                    "{}: has shape {shape:?}, expected {want:?} (--n samples of the model's shape)",
                    p.display()
                );
            }
            Some(Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?)
        }
        None => None,
    };
    let cond = match check_class(&run, a.class)? {
        Some(k) => Cond {
            labels: Some(Tensor::full(k, a.n, &Device::Cpu)?),
            image: None,
        },
        None if a.guidance != 1.0 => bail!("--guidance needs --class"),
        None if run.config.network.is_class_conditional() => {
            let (n, _) = class_range(&run);
            bail!(
                "--class: {} is class-conditional; pass --class K with K in 0..{n}",
                run.dir.display()
            )
        }
        None => Cond::default(),
    };
    if run.config.data.standardizer.is_some() {
        let out = a
            .out
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--out FILE (.csv, .npy or .png) is required"))?;
        let (t, nfe) = draw(&run, &a.sampler, a.n, a.seed, a.batch_size, init.as_ref())?;
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
    let x = match SchedulerClass::parse(&a.sampler.sampler) {
        Ok(class) => diffusers_draw(&run, class, &a, init.as_ref(), &cond)?,
        Err(_) if a.guidance != 1.0 => {
            let null = null_label(&run)?;
            let g = Guided {
                inner: &run.denoiser,
                null_label: null,
                scale: a.guidance,
            };
            draw_with(
                &run,
                &g,
                &a.sampler,
                a.n,
                a.seed,
                a.batch_size,
                init.as_ref(),
                &cond,
            )?
            .0
        }
        Err(_) => {
            draw_with(
                &run,
                &run.denoiser,
                &a.sampler,
                a.n,
                a.seed,
                a.batch_size,
                init.as_ref(),
                &cond,
            )?
            .0
        }
    };
    write_images(&x, a.out.as_deref(), a.out_dir.as_deref(), a.npy.as_deref())
}

/// The null class of a class-conditional UNet (the last embedding row, trained by label dropout).
/// (number of real classes, their names) of a class-conditional model.
pub fn class_range(run: &Run) -> (usize, &[String]) {
    let names = &run.config.data.class_names;
    match &run.config.network {
        NetworkConfig::Unet(c) => match c.num_class_embeds {
            Some(_) if !names.is_empty() => (names.len(), names),
            Some(n) => (n, names),
            None => (0, names),
        },
        NetworkConfig::Mlp(_) => (0, names),
    }
}

/// `--class K` must name one of the model's classes (the null class is not one).
pub fn check_class(run: &Run, class: Option<u32>) -> Result<Option<u32>> {
    let Some(k) = class else { return Ok(None) };
    if !run.config.network.is_class_conditional() {
        bail!(
            "--class {k}: {} is not class-conditional (train with --class-cond)",
            run.dir.display()
        );
    }
    let (n, names) = class_range(run);
    if k as usize >= n {
        let list = if names.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                names
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("{i} {s}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        bail!("--class {k}: out of range; the model has {n} classes, 0..{n}{list}");
    }
    Ok(Some(k))
}

pub fn null_label(run: &Run) -> Result<u32> {
    match &run.config.network {
        NetworkConfig::Unet(c) => match c.num_class_embeds {
            Some(n) if n > run.config.data.class_names.len() => Ok((n - 1) as u32),
            _ => bail!("{}: guidance needs a class-conditional model trained with label dropout (langevin train --class-cond)", run.dir.display()),
        },
        NetworkConfig::Mlp(_) => bail!("guidance needs a class-conditional image model"),
    }
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
