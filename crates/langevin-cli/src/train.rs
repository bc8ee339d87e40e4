//! `langevin train`: the command line of `langevin::api::train` (fit a model and write a run
//! directory); SIGINT / SIGTERM stop it with a checkpoint.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use langevin::api::{DataInput, MlpOptions, TrainOptions};
use langevin::denoiser::Prediction;

use crate::common::BetaArgs;
use crate::images::ImageArgs;
use crate::progress::Bar;

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
    pub prediction: Prediction,
    /// Total optimisation steps [default: 4000; with --resume, the run's own total, so a stopped
    /// run continues on its learning-rate schedule; give a larger one to extend it].
    #[arg(long, value_parser = crate::ranges::steps, allow_negative_numbers = true)]
    pub steps: Option<u64>,
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

impl Args {
    /// The library's training options from the command line.
    pub fn options(&self) -> Result<TrainOptions> {
        let o = &self.opt;
        Ok(TrainOptions {
            out: self.out.clone(),
            resume: self.resume,
            overwrite: self.overwrite,
            n_toy: self.n_toy,
            schedule: self.schedule.options(),
            prediction: o.prediction,
            steps: o.steps,
            batch_size: o.batch_size,
            lr: o.lr,
            warmup: o.warmup,
            weight_decay: o.weight_decay,
            grad_clip: o.grad_clip,
            ema_decay: o.ema_decay,
            seed: o.seed,
            checkpoint_every: o.checkpoint_every,
            time_limit: o.time_limit,
            mlp: self.net.options(),
            image: self.image.options(),
            device: langevin::compute::device(&self.compute.device)?,
            dtype: self.compute.dtype(),
        })
    }
}

impl NetArgs {
    pub fn options(&self) -> MlpOptions {
        MlpOptions {
            hidden: self.hidden,
            blocks: self.blocks,
            temb_dim: self.temb_dim,
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let opts = a.options()?;
    let obs = Bar::catching_signals();
    let summary = match langevin::api::train(&opts, a.data.clone().map(DataInput::Spec), &obs) {
        Ok(s) => s,
        Err(langevin::Error::Stopped { dir, step, total }) => {
            let signal = obs.signal().unwrap_or(signal_hook::consts::SIGINT);
            eprintln!(
                "{} at step {step} of {total}; checkpoint written to {} (continue with --resume)",
                crate::run_dir::signal_name(signal),
                dir.display()
            );
            return Err(crate::run_dir::Interrupted { signal }.into());
        }
        Err(e) => return Err(e.into()),
    };
    if summary.images {
        println!(
            "trained {} steps in {:.1} s; wrote {} (samples.png, loss.png)",
            summary.step,
            summary.secs,
            a.out.display()
        );
    } else {
        println!(
            "trained {} steps in {:.1} s; final loss (mean of last {}) {:.4}; wrote {}",
            summary.step,
            summary.secs,
            summary.loss_window,
            summary.final_loss,
            a.out.display()
        );
    }
    Ok(())
}
