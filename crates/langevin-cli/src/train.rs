//! `langevin train`: fit a model and write a run directory.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args as ClapArgs;
use langevin::data::Standardizer;
use langevin::denoiser::Prediction;
use langevin::model::{DataInfo, Diffusion, NetworkConfig, RunConfig};
use langevin::nn::mlp::MlpConfig;
use langevin::train::{StepReport, TrainConfig, TrainData, Trainer};

use crate::common::{load_data, noise_dist, BetaArgs};
use crate::images::{is_image_source, ImageArgs};
use crate::progress::bar;

#[derive(ClapArgs)]
pub struct Args {
    /// Training data: toy:swiss-roll|two-moons|8-gaussians|checkerboard|rings, a .csv / .npy
    /// table, or images: fashion-mnist[:DIR], digits, emoji[:DIR], or a folder of PNG/JPEG files
    /// (class subfolders are labels).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<String>,
    /// Run directory to write (diffusers layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing run in --out (without it, an existing run is refused).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Points drawn from a toy set.
    #[arg(long, default_value_t = 20_000, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub n_toy: usize,
    #[command(flatten)]
    pub schedule: BetaArgs,
    #[command(flatten)]
    pub opt: OptArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub compute: crate::common::ComputeArgs,
}

#[derive(ClapArgs, Clone)]
pub struct OptArgs {
    /// What the network predicts: eps, x0, v, score or edm.
    #[arg(long, default_value = "eps")]
    pub prediction: String,
    #[arg(long, default_value_t = 4000, value_parser = crate::ranges::steps, allow_negative_numbers = true)]
    pub steps: u64,
    #[arg(long, default_value_t = 512, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2e-3, value_parser = crate::ranges::positive, allow_negative_numbers = true)]
    pub lr: f64,
    #[arg(long, default_value_t = 100, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub warmup: u64,
    #[arg(long, default_value_t = 0.0, value_parser = crate::ranges::non_negative, allow_negative_numbers = true)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0 = off).
    #[arg(long, default_value_t = 1.0, value_parser = crate::ranges::non_negative, allow_negative_numbers = true)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 0.995, value_parser = crate::ranges::decay, allow_negative_numbers = true)]
    pub ema_decay: f64,
    #[arg(long, default_value_t = 0, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub seed: u64,
    /// Checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value_t = 1000, value_parser = crate::ranges::whole, allow_negative_numbers = true)]
    pub checkpoint_every: u64,
    /// Stop after this many minutes (with a checkpoint; --resume continues).
    #[arg(long, value_parser = crate::ranges::positive, allow_negative_numbers = true)]
    pub time_limit: Option<f64>,
}

#[derive(ClapArgs, Clone)]
pub struct NetArgs {
    #[arg(long, default_value_t = 128, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub hidden: usize,
    #[arg(long, default_value_t = 3, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub blocks: usize,
    #[arg(long, default_value_t = 64, value_parser = crate::ranges::count, allow_negative_numbers = true)]
    pub temb_dim: usize,
}

impl OptArgs {
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            lr: self.lr,
            warmup_steps: self.warmup,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            ema_decay: self.ema_decay,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            ..Default::default()
        }
    }
}

/// Build a fresh trainer for standardised `data`.
pub fn new_trainer(
    source: String,
    data: &langevin::data::Table,
    std: &Standardizer,
    sched: &BetaArgs,
    opt: &OptArgs,
    net: &NetArgs,
    dev: &Device,
) -> Result<Trainer> {
    let prediction: Prediction = opt.prediction.parse()?;
    let run = RunConfig {
        network: NetworkConfig::Mlp(MlpConfig {
            in_dim: data.cols,
            hidden: net.hidden,
            blocks: net.blocks,
            temb_dim: net.temb_dim,
        }),
        diffusion: Diffusion {
            prediction,
            noise: noise_dist(sched)?,
        },
        data: DataInfo {
            source,
            columns: data.columns.clone(),
            standardizer: Some(std.clone()),
            ..Default::default()
        },
    };
    report_schedule(&run.diffusion)?;
    Ok(Trainer::new(run, opt.train_config(), dev)?)
}

/// Warn about a terminal ᾱ far from 0 and say which steps carry too little noise to train on.
pub fn report_schedule(d: &Diffusion) -> Result<()> {
    if let Some(s) = d.discrete()? {
        if let Some(w) = s.terminal_warning() {
            eprintln!("warning: {w}");
        }
        let first = s.first_active_step();
        if first > 0 {
            eprintln!(
                "note: steps 0..{first} of {} add noise below σ = {:.0e} (invisible in f32 data) and are skipped; training uses the last {} steps",
                s.len(),
                langevin::schedule::SIGMA_FLOOR,
                s.len() - first
            );
        }
    }
    Ok(())
}

/// Train to `trainer.cfg.steps`, checkpointing into `out`; writes loss.png at each checkpoint.
pub fn train_loop(
    trainer: &mut Trainer,
    data: &TrainData,
    out: &Path,
    time_limit: Option<f64>,
) -> Result<f64> {
    let mut step = |t: &mut Trainer| Ok(t.train_step(data)?);
    train_loop_with(trainer, out, time_limit, &mut step, &mut |_| Ok(()))
}

/// Train to `trainer.cfg.steps` with `step` drawing each batch; `on_checkpoint` runs after each
/// checkpoint (sample grids). With `time_limit` (minutes) training stops after that long with
/// a checkpoint, resumable with `--resume`; so does SIGINT / SIGTERM (then the error is
/// [`Interrupted`]). A failed step (a diverged loss) leaves the last checkpoint as it was.
pub fn train_loop_with(
    trainer: &mut Trainer,
    out: &Path,
    time_limit: Option<f64>,
    step: &mut dyn FnMut(&mut Trainer) -> Result<StepReport>,
    on_checkpoint: &mut dyn FnMut(&Trainer) -> Result<()>,
) -> Result<f64> {
    let total = trainer.cfg.steps;
    let signal = crate::run_dir::catch_signals()?;
    let mut last_saved = out
        .join(langevin::model::run::TRAIN_STATE)
        .exists()
        .then(|| trainer.step());
    let pb = bar(total, "train");
    pb.set_position(trainer.step());
    let start = Instant::now();
    let every = trainer.cfg.checkpoint_every;
    while trainer.step() < total {
        let r = step(trainer).with_context(|| match last_saved {
            Some(s) => format!(
                "{}: training stopped; the run keeps its last checkpoint (step {s})",
                out.display()
            ),
            None => format!(
                "{}: training stopped before its first checkpoint",
                out.display()
            ),
        })?;
        if r.step % 50 == 0 || r.step == total {
            let recent = &trainer.losses[trainer.losses.len().saturating_sub(50)..];
            let avg = recent.iter().map(|l| l.1).sum::<f64>() / recent.len() as f64;
            pb.set_message(format!("loss {avg:.4} lr {:.1e}", r.lr));
        }
        pb.inc(1);
        let out_of_time = time_limit.is_some_and(|m| start.elapsed().as_secs_f64() > 60.0 * m);
        let caught = signal.caught();
        if (every > 0 && r.step % every == 0) || r.step == total || out_of_time || caught.is_some()
        {
            checkpoint(trainer, out)?;
            last_saved = Some(r.step);
            on_checkpoint(trainer)?;
        }
        if let Some(sig) = caught {
            pb.finish_and_clear();
            eprintln!(
                "{} at step {} of {total}; checkpoint written to {} (continue with --resume)",
                crate::run_dir::signal_name(sig),
                r.step,
                out.display()
            );
            return Err(crate::run_dir::Interrupted { signal: sig }.into());
        }
        if out_of_time && r.step < total {
            eprintln!(
                "--time-limit reached at step {} of {total}; checkpoint written (continue with --resume)",
                r.step
            );
            break;
        }
    }
    pb.finish_and_clear();
    Ok(start.elapsed().as_secs_f64())
}

fn checkpoint(trainer: &Trainer, out: &Path) -> Result<()> {
    trainer.save(out)?;
    let losses: Vec<(usize, f64)> = trainer
        .losses
        .iter()
        .map(|(s, l)| (*s as usize, *l))
        .collect();
    langevin::plot::loss_png(&out.join("loss.png"), &losses)?;
    Ok(())
}

/// The data as a standardised [N, D] tensor.
pub fn to_tensor(t: &langevin::data::Table) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        t.to_f32(),
        (t.rows, t.cols),
        &Device::Cpu,
    )?)
}

pub fn run(a: Args) -> Result<()> {
    crate::run_dir::check_out(&a.out, a.resume, a.overwrite)?;
    let spec = match (&a.data, a.resume) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => Some(langevin::model::RunConfig::load(&a.out)?.data.source),
        (None, false) => None,
    };
    if spec.as_deref().is_some_and(is_image_source) {
        return crate::train_images::run(&a, spec.as_deref().unwrap());
    }
    let dev = a.compute.device()?;
    let (mut trainer, data) = if a.resume {
        let mut t = Trainer::resume(&a.out, Some(a.opt.steps), &dev)?;
        crate::run_dir::check_resume_steps(&a.out, t.step(), a.opt.steps)?;
        let info = t.run.data.clone();
        let spec = a.data.clone().unwrap_or(info.source.clone());
        crate::run_dir::check_stored_source(&spec, a.data.is_none())?;
        let (table, _) = load_data(&spec, a.n_toy, t.cfg.seed)?;
        let Some(std) = info.standardizer else {
            bail!(
                "{}: the run has no column statistics; it was not trained on a table",
                a.out.display()
            );
        };
        if table.cols != std.dims() {
            bail!(
                "{spec}: has {} columns but the run in {} was trained on {}",
                table.cols,
                a.out.display(),
                std.dims()
            );
        }
        t.cfg.steps = a.opt.steps;
        eprintln!(
            "resuming {} at step {} of {}",
            a.out.display(),
            t.step(),
            t.cfg.steps
        );
        (
            t,
            TrainData::unlabelled(to_tensor(&std.transform(&table)?)?),
        )
    } else {
        let spec = a.data.as_deref().unwrap();
        let (table, source) = load_data(spec, a.n_toy, a.opt.seed)?;
        let std = Standardizer::fit(&table);
        let t = new_trainer(source, &table, &std, &a.schedule, &a.opt, &a.net, &dev)?;
        (
            t,
            TrainData::unlabelled(to_tensor(&std.transform(&table)?)?),
        )
    };
    langevin::memory::check_training(
        &format!("a training batch of {}", trainer.cfg.batch_size),
        &trainer.run.network,
        &[data.x.dim(1)?],
        trainer.cfg.batch_size,
        "",
    )?;
    let _lock = crate::run_dir::lock(&a.out, a.resume, a.overwrite, &trainer)?;
    trainer.set_compute_dtype(a.compute.dtype())?;
    let data = TrainData {
        x: data.x.to_device(&dev)?,
        ..data
    };
    let secs = train_loop(&mut trainer, &data, &a.out, a.opt.time_limit)?;
    let tail = &trainer.losses[trainer.losses.len().saturating_sub(100)..];
    let avg = tail.iter().map(|l| l.1).sum::<f64>() / tail.len().max(1) as f64;
    println!(
        "trained {} steps in {secs:.1} s; final loss (mean of last {}) {avg:.4}; wrote {}",
        trainer.step(),
        tail.len(),
        a.out.display()
    );
    Ok(())
}
