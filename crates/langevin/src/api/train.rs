//! Training a run folder: [`train`] starts or resumes a run (tabular data → residual MLP,
//! images → diffusers UNet2DModel) and runs the loop — checkpoints every N steps, a time
//! limit, and a stop request from the [`Observer`] (Ctrl-C) that writes a checkpoint first.
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::source::{load_tabular, DataInput, ImageLoad};
use super::{run_folder, Observer, ScheduleOptions};
use crate::data::{Standardizer, Table};
use crate::denoiser::Prediction;
use crate::model::{DataInfo, Diffusion, NetworkConfig, RunConfig};
use crate::nn::mlp::MlpConfig;
use crate::train::{StepReport, TrainConfig, TrainData, Trainer};
use crate::{Error, Result};

/// The residual MLP of tabular models.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpOptions {
    pub hidden: usize,
    pub blocks: usize,
    pub temb_dim: usize,
}

impl Default for MlpOptions {
    fn default() -> Self {
        MlpOptions {
            hidden: 128,
            blocks: 3,
            temb_dim: 64,
        }
    }
}

/// The UNet and image-training options.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageOptions {
    /// UNet widths per resolution level.
    pub channels: Vec<usize>,
    pub layers_per_block: usize,
    /// Self-attention at the lowest resolution (and in the mid block).
    pub attention: bool,
    pub norm_groups: usize,
    /// Condition on class labels (adds a null class for classifier-free guidance).
    pub class_cond: bool,
    /// Probability of dropping the label during training (classifier-free guidance).
    pub label_dropout: f64,
    /// Min-SNR-γ loss weighting.
    pub min_snr: Option<f64>,
    /// Random horizontal flips.
    pub hflip: bool,
    /// How image sources are read.
    pub load: ImageLoad,
    /// Write a grid of EMA samples every N steps (0 = only at the end).
    pub sample_every: u64,
    /// SR3 super-resolution factor: the network also sees each image box-downsampled by it.
    pub superres: Option<usize>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            channels: vec![32, 64, 64],
            layers_per_block: 1,
            attention: false,
            norm_groups: 8,
            class_cond: false,
            label_dropout: 0.1,
            min_snr: None,
            hflip: false,
            load: ImageLoad::default(),
            sample_every: 0,
            superres: None,
        }
    }
}

/// Everything `train` needs besides the data; `Default` gives the CLI's defaults.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The run folder to write (diffusers layout).
    pub out: PathBuf,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Replace an existing run in `out` (without it, an existing run is refused).
    pub overwrite: bool,
    /// Points drawn from a toy set.
    pub n_toy: usize,
    pub schedule: ScheduleOptions,
    pub prediction: Prediction,
    /// Total optimisation steps. `None`: 4000 for a new run; a resumed run keeps the total it
    /// was started with (so a run stopped by Ctrl-C continues on the same learning-rate
    /// schedule, as if never stopped).
    pub steps: Option<u64>,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    /// Clip the global gradient norm (0 = off).
    pub grad_clip: f64,
    pub ema_decay: f64,
    pub seed: u64,
    /// Checkpoint every N steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Stop after this many minutes (with a checkpoint; resuming continues).
    pub time_limit: Option<f64>,
    pub mlp: MlpOptions,
    pub image: ImageOptions,
    pub device: Device,
    /// The network's compute precision (bf16/f16 are mixed precision with f32 master weights).
    pub dtype: DType,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            out: PathBuf::new(),
            resume: false,
            overwrite: false,
            n_toy: 20_000,
            schedule: ScheduleOptions::default(),
            prediction: Prediction::Epsilon,
            steps: None,
            batch_size: 512,
            lr: 2e-3,
            warmup: 100,
            weight_decay: 0.0,
            grad_clip: 1.0,
            ema_decay: 0.995,
            seed: 0,
            checkpoint_every: 1000,
            time_limit: None,
            mlp: MlpOptions::default(),
            image: ImageOptions::default(),
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

impl TrainOptions {
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            steps: self.steps.unwrap_or(4000),
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

/// What a finished (or time-limited) training call did.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// The run's step now.
    pub step: u64,
    /// Wall time of the loop, seconds.
    pub secs: f64,
    /// Mean loss of the last (up to) 100 steps, and how many that was.
    pub final_loss: f64,
    pub loss_window: usize,
    /// Is it an image model (it wrote samples.png)?
    pub images: bool,
}

/// Train (or resume, with `opts.resume`) the run in `opts.out` on `data` (on resume `None`
/// means the run's stored source). Keeps every run-folder guarantee: an existing run is
/// refused without `resume` / `overwrite`, the folder is locked while training, every write
/// is atomic, and a stop request writes a checkpoint and returns [`Error::Stopped`].
pub fn train(
    opts: &TrainOptions,
    data: Option<DataInput>,
    obs: &dyn Observer,
) -> Result<TrainSummary> {
    run_folder::check_out(&opts.out, opts.resume, opts.overwrite)?;
    crate::compute::check(&opts.device, opts.dtype)?;
    let stored = data.is_none();
    let data = match data {
        Some(d) => d,
        None if opts.resume => {
            let source = RunConfig::load(&opts.out)?.data.source;
            if source == IN_MEMORY {
                return Err(Error::config(
                    "data",
                    format!(
                        "the run in {} was trained from an in-memory array; pass the same data to resume it",
                        opts.out.display()
                    ),
                ));
            }
            DataInput::Spec(source)
        }
        None => {
            return Err(Error::config(
                "data",
                "training data is required (a source such as toy:swiss-roll, or an array)",
            ))
        }
    };
    match data {
        DataInput::Spec(s) if super::source::is_image_source(&s) => {
            super::train_images::train_images(opts, ImageData::Spec(s), obs)
        }
        DataInput::Images(set) => super::train_images::train_images(opts, ImageData::Set(set), obs),
        DataInput::Spec(s) => {
            if opts.resume {
                run_folder::check_stored_source(&s, stored)?;
            }
            train_table(opts, TableData::Spec(s), obs)
        }
        DataInput::Table(t) => train_table(opts, TableData::Table(t), obs),
    }
}

/// The source a run trained from an in-memory array records.
pub const IN_MEMORY: &str = "array";

pub(super) enum ImageData {
    Spec(String),
    Set(crate::data::images::ImageSet),
}

enum TableData {
    Spec(String),
    Table(Table),
}

impl TableData {
    /// The table and the source stored in the run (toy sets are drawn with `seed`).
    fn load(self, n_toy: usize, seed: u64) -> Result<(Table, String)> {
        match self {
            TableData::Spec(s) => load_tabular(&s, n_toy, seed),
            TableData::Table(t) => Ok((t, IN_MEMORY.into())),
        }
    }
}

fn train_table(opts: &TrainOptions, data: TableData, obs: &dyn Observer) -> Result<TrainSummary> {
    let dev = &opts.device;
    let (mut trainer, std, table) = if opts.resume {
        let t = Trainer::resume(&opts.out, opts.steps, dev)?;
        run_folder::check_resume_steps(&opts.out, t.step(), t.cfg.steps)?;
        let (table, source) = data.load(opts.n_toy, t.cfg.seed)?;
        let Some(std) = t.run.data.standardizer.clone() else {
            return Err(Error::config(
                opts.out.display().to_string(),
                "the run has no column statistics; it was not trained on a table",
            ));
        };
        if table.cols != std.dims() {
            return Err(Error::config(
                source,
                format!(
                    "has {} columns but the run in {} was trained on {}",
                    table.cols,
                    opts.out.display(),
                    std.dims()
                ),
            ));
        }
        obs.note(&format!(
            "resuming {} at step {} of {}",
            opts.out.display(),
            t.step(),
            t.cfg.steps
        ));
        (t, std, table)
    } else {
        let (table, source) = data.load(opts.n_toy, opts.seed)?;
        let std = Standardizer::fit(&table);
        (
            new_table_trainer(source, &table, &std, opts, obs)?,
            std,
            table,
        )
    };
    let x = table_tensor(&std.transform(&table)?)?;
    crate::memory::check_training(
        &format!("a training batch of {}", trainer.cfg.batch_size),
        &trainer.run.network,
        &[x.dim(1)?],
        trainer.cfg.batch_size,
        "",
    )?;
    let _lock = run_folder::lock(&opts.out, opts.resume, opts.overwrite, &trainer, obs)?;
    trainer.set_compute_dtype(opts.dtype)?;
    let data = TrainData::unlabelled(x.to_device(dev)?);
    let mut step = |t: &mut Trainer| t.train_step(&data);
    let secs = train_loop(&mut trainer, &opts.out, opts.time_limit, &mut step, obs)?;
    Ok(summary(&trainer, secs, false))
}

fn summary(trainer: &Trainer, secs: f64, images: bool) -> TrainSummary {
    let tail = &trainer.losses[trainer.losses.len().saturating_sub(100)..];
    let avg = tail.iter().map(|l| l.1).sum::<f64>() / tail.len().max(1) as f64;
    TrainSummary {
        step: trainer.step(),
        secs,
        final_loss: avg,
        loss_window: tail.len(),
        images,
    }
}

pub(super) fn image_summary(trainer: &Trainer, secs: f64) -> TrainSummary {
    summary(trainer, secs, true)
}

/// A fresh trainer for the residual MLP on `data` (standardised by `std`).
pub fn new_table_trainer(
    source: String,
    data: &Table,
    std: &Standardizer,
    opts: &TrainOptions,
    obs: &dyn Observer,
) -> Result<Trainer> {
    let run = RunConfig {
        network: NetworkConfig::Mlp(MlpConfig {
            in_dim: data.cols,
            hidden: opts.mlp.hidden,
            blocks: opts.mlp.blocks,
            temb_dim: opts.mlp.temb_dim,
        }),
        diffusion: Diffusion {
            prediction: opts.prediction,
            noise: opts.schedule.noise_dist()?,
        },
        data: DataInfo {
            source,
            columns: data.columns.clone(),
            standardizer: Some(std.clone()),
            ..Default::default()
        },
    };
    report_schedule(&run.diffusion, obs)?;
    Trainer::new(run, opts.train_config(), &opts.device)
}

/// Warn about a terminal ᾱ far from 0 and say which steps carry too little noise to train on.
pub fn report_schedule(d: &Diffusion, obs: &dyn Observer) -> Result<()> {
    if let Some(s) = d.discrete()? {
        if let Some(w) = s.terminal_warning() {
            obs.note(&format!("warning: {w}"));
        }
        let first = s.first_active_step();
        if first > 0 {
            obs.note(&format!(
                "note: steps 0..{first} of {} add noise below σ = {:.0e} (invisible in f32 data) and are skipped; training uses the last {} steps",
                s.len(),
                crate::schedule::SIGMA_FLOOR,
                s.len() - first
            ));
        }
    }
    Ok(())
}

/// A table as an f32 tensor [N, D] on the CPU.
pub fn table_tensor(t: &Table) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        t.to_f32(),
        (t.rows, t.cols),
        &Device::Cpu,
    )?)
}

/// Train to `trainer.cfg.steps` with `step` drawing each batch, checkpointing into `out` (and
/// writing loss.png) every `checkpoint_every` steps and at the end. With `time_limit`
/// (minutes) training stops after that long with a checkpoint; a stop request from `obs`
/// writes a checkpoint and returns [`Error::Stopped`]. A failed step (a diverged loss) leaves
/// the last checkpoint as it was. Returns the loop's wall time in seconds.
pub fn train_loop(
    trainer: &mut Trainer,
    out: &Path,
    time_limit: Option<f64>,
    step: &mut (dyn FnMut(&mut Trainer) -> Result<StepReport> + Send),
    obs: &dyn Observer,
) -> Result<f64> {
    let total = trainer.cfg.steps;
    let mut last_saved = out
        .join(crate::model::run::TRAIN_STATE)
        .exists()
        .then(|| trainer.step());
    obs.start("train", total, trainer.step());
    let start = Instant::now();
    let every = trainer.cfg.checkpoint_every;
    let result = (|| {
        while trainer.step() < total {
            // On the CPU, on a pool worker: the step's parallel sections then start from inside
            // the pool. Elsewhere on this thread (a CUDA context and graph capture belong to the
            // thread that set them up).
            let r = if trainer.device().is_cpu() {
                crate::threads::on_pool(|| step(trainer))
            } else {
                step(trainer)
            };
            let r = r.map_err(|e| Error::Context {
                context: match last_saved {
                    Some(s) => format!(
                        "{}: training stopped; the run keeps its last checkpoint (step {s})",
                        out.display()
                    ),
                    None => format!(
                        "{}: training stopped before its first checkpoint",
                        out.display()
                    ),
                },
                source: Box::new(e),
            })?;
            let msg = (r.step % 50 == 0 || r.step == total).then(|| {
                let recent = &trainer.losses[trainer.losses.len().saturating_sub(50)..];
                let avg = recent.iter().map(|l| l.1).sum::<f64>() / recent.len() as f64;
                format!("loss {avg:.4} lr {:.1e}", r.lr)
            });
            obs.advance(r.step, msg.as_deref());
            let out_of_time = time_limit.is_some_and(|m| start.elapsed().as_secs_f64() > 60.0 * m);
            let stop = obs.should_stop();
            if (every > 0 && r.step % every == 0) || r.step == total || out_of_time || stop {
                checkpoint(trainer, out)?;
                last_saved = Some(r.step);
            }
            if stop {
                return Err(Error::Stopped {
                    dir: out.to_path_buf(),
                    step: r.step,
                    total,
                });
            }
            if out_of_time && r.step < total {
                obs.note(&format!(
                    "--time-limit reached at step {} of {total}; checkpoint written (continue with --resume)",
                    r.step
                ));
                break;
            }
        }
        Ok(())
    })();
    obs.finish();
    result.map(|()| start.elapsed().as_secs_f64())
}

fn checkpoint(trainer: &Trainer, out: &Path) -> Result<()> {
    trainer.save(out)?;
    let losses: Vec<(usize, f64)> = trainer
        .losses
        .iter()
        .map(|(s, l)| (*s as usize, *l))
        .collect();
    crate::plot::loss_png(out.join("loss.png"), &losses)?;
    Ok(())
}
