//! Running one job: the worker thread loads the run and calls the library (through the same
//! helpers as `langevin sample / inpaint / upscale / img2img`), wrapped so that the job reports
//! progress and stops when cancelled. No sampling logic lives here.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Tensor;
use langevin::api::apps::{guided_denoiser, upscale_with};
use langevin::api::sample::draw_with;
use langevin::api::{SampleOptions, SamplerChoice, Silent};
use langevin::apps::img2img::img2img;
use langevin::apps::inpaint::{inpaint, Resample};
use langevin::denoiser::{Cancellable, Cond, Denoiser};
use langevin::model::Run;
use langevin::sampler::SamplerKind;

use super::jobs::{Job, Queue, State};
use crate::common::ComputeArgs;

/// A checked request, ready to run.
pub struct Task {
    /// The run folder (validated to lie under --runs).
    pub dir: PathBuf,
    pub sampler: SamplerKind,
    pub steps: usize,
    pub seed: u64,
    pub what: What,
}

/// The application; images are [1, C, H, W] in [-1, 1] on the CPU, checked against the model.
pub enum What {
    Sample {
        count: usize,
        class: Option<u32>,
        guidance: f64,
    },
    Inpaint {
        image: Tensor,
        /// 1 where the image is kept, 0 where the painted mask says fill.
        keep: Tensor,
        resample: Resample,
        class: Option<u32>,
        guidance: f64,
    },
    Upscale {
        low: Tensor,
    },
    Img2img {
        image: Tensor,
        strength: f64,
        class: Option<u32>,
        guidance: f64,
    },
}

impl Task {
    pub fn kind(&self) -> &'static str {
        match self.what {
            What::Sample { .. } => "sample",
            What::Inpaint { .. } => "inpaint",
            What::Upscale { .. } => "upscale",
            What::Img2img { .. } => "img2img",
        }
    }
}

/// The library's sampling options (the CLI's defaults) for `kind` at `steps` levels, one
/// sample per batch.
pub fn sample_options(kind: SamplerKind, steps: usize) -> SampleOptions {
    SampleOptions {
        sampler: SamplerChoice::Ours(kind),
        steps,
        batch_size: 1,
        ..Default::default()
    }
}

/// Reports each network evaluation's σ (for the progress bar), then evaluates.
struct Observed<'a> {
    inner: &'a dyn Denoiser,
    on_eval: &'a dyn Fn(f64),
}

impl Denoiser for Observed<'_> {
    fn device(&self) -> candle_core::Device {
        self.inner.device()
    }
    fn denoise(&self, x: &Tensor, sigma: f64, cond: &Cond) -> langevin::Result<Tensor> {
        (self.on_eval)(sigma);
        self.inner.denoise(x, sigma, cond)
    }
    fn denoise_rows(&self, x: &Tensor, s: &[f64], cond: &Cond) -> langevin::Result<Tensor> {
        (self.on_eval)(s.iter().copied().fold(f64::INFINITY, f64::min));
        self.inner.denoise_rows(x, s, cond)
    }
}

/// How far along `sigmas` (decreasing, ending in 0) σ is, 0..=1 in log σ.
fn fraction(sigmas: &[f64], sigma: f64) -> f64 {
    let hi = sigmas[0];
    let lo = sigmas
        .iter()
        .copied()
        .filter(|s| *s > 0.0)
        .fold(hi, f64::min);
    if hi <= lo || sigma <= 0.0 {
        return 1.0;
    }
    ((hi / sigma).ln() / (hi / lo).ln()).clamp(0.0, 1.0)
}

/// One worker per device: owns the loaded model (the last one used stays loaded, and is
/// reloaded when its folder changes, e.g. by training on).
pub struct Worker {
    pub compute: ComputeArgs,
    pub out: PathBuf,
    loaded: Option<(Run, Option<std::time::SystemTime>)>,
    /// When the server started (Unix seconds), in the names of result files.
    started: u64,
}

/// The newest modification time of the files in `dir`.
fn changed_at(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .max()
}

impl Worker {
    pub fn new(compute: ComputeArgs, out: PathBuf) -> Self {
        Self {
            compute,
            out,
            loaded: None,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Take jobs from `queue` forever.
    pub fn spawn(mut self, queue: Arc<Queue>) {
        std::thread::spawn(move || loop {
            let job = queue.next();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(&job)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("internal error (the job panicked)")));
            let cancelled = |e: &anyhow::Error| {
                e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<langevin::Error>(),
                        Some(langevin::Error::Cancelled)
                    )
                })
            };
            job.update(|s| match &result {
                Ok(()) => {
                    s.state = State::Done;
                    s.progress = 1.0;
                }
                Err(e) if cancelled(e) => s.state = State::Cancelled,
                Err(e) => {
                    s.state = State::Failed;
                    s.error = Some(
                        e.chain()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(": "),
                    );
                }
            });
            queue.finished(&job);
        });
    }

    fn load(&mut self, dir: &Path) -> Result<&Run> {
        let stamp = changed_at(dir);
        let fresh = matches!(&self.loaded, Some((r, t)) if r.dir == dir && *t == stamp);
        if !fresh {
            self.loaded = None;
            self.loaded = Some((self.compute.load_run(dir)?, stamp));
        }
        Ok(&self.loaded.as_ref().unwrap().0)
    }

    fn run(&mut self, job: &Job) -> Result<()> {
        let self_started = self.started;
        let task = job.task.lock().unwrap().take();
        let t = task.as_ref().context("the job has no task (already run)")?;
        let folder = self.out.join(&job.client);
        std::fs::create_dir_all(&folder).with_context(|| folder.display().to_string())?;
        let run = self.load(&t.dir)?;
        let dev = langevin::nn::Network::device(&run.denoiser.net);
        let sopts = sample_options(t.sampler, t.steps);
        let sigmas = sopts.sigmas(run)?;
        let (class, guidance) = match &t.what {
            What::Sample {
                class, guidance, ..
            }
            | What::Inpaint {
                class, guidance, ..
            }
            | What::Img2img {
                class, guidance, ..
            } => (*class, *guidance),
            What::Upscale { .. } => (None, 1.0),
        };
        let (mut cond, mut guided) = (Cond::default(), None);
        let base = guided_denoiser(run, class, guidance, &mut cond, &mut guided)?;
        let stop = Cancellable {
            inner: base,
            flag: &job.cancel,
        };
        // Progress of image i of n: (i + fraction of the way down σ) / n.
        let (count, done) = match &t.what {
            What::Sample { count, .. } => (*count, std::cell::Cell::new(0usize)),
            _ => (1, std::cell::Cell::new(0)),
        };
        let report = |sigma: f64| {
            let p = (done.get() as f64 + fraction(&sigmas, sigma)) / count as f64;
            job.update(|s| s.progress = p);
        };
        let den = Observed {
            inner: &stop,
            on_eval: &report,
        };
        let save = |i: usize, x: &Tensor| -> Result<()> {
            let (_, c, h, w) = x.dims4()?;
            let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
            // Job ids restart with the server; its start time keeps older results.
            let name = format!("job-{}-{}-{i}.png", self_started, job.id);
            langevin::data::images::save_png(folder.join(&name), &v, c, h, w)?;
            let url = format!("/api/clients/{}/files/{name}", job.client);
            job.update(|s| s.images.push(url));
            Ok(())
        };
        let opts = sopts.options();
        match &t.what {
            What::Sample { count, .. } => {
                for i in 0..*count {
                    done.set(i);
                    // Sample i depends only on seed + i, as in `langevin sample`.
                    let seed = t.seed.wrapping_add(i as u64);
                    let (x, _) = draw_with(run, &den, &sopts, 1, seed, None, &cond, &Silent)?;
                    save(i, &x)?;
                }
            }
            What::Inpaint {
                image,
                keep,
                resample,
                ..
            } => {
                let (x, keep) = (image.to_device(&dev)?, keep.to_device(&dev)?);
                let out = inpaint(
                    &den, &cond, t.sampler, &opts, &sigmas, &x, &keep, t.seed, *resample,
                )?;
                save(0, &out)?;
            }
            What::Upscale { low } => {
                let low = low.to_device(&dev)?;
                let zero_shot = run.config.data.superres_scale.is_none();
                save(
                    0,
                    &upscale_with(
                        run,
                        &den,
                        cond.clone(),
                        &low,
                        zero_shot,
                        &sopts,
                        t.seed,
                        &Silent,
                    )?,
                )?;
            }
            What::Img2img {
                image, strength, ..
            } => {
                let x = image.to_device(&dev)?;
                let out = img2img(
                    &den, &cond, t.sampler, &opts, &sigmas, &x, *strength, t.seed,
                )?;
                save(0, &out)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_runs_from_zero_at_sigma_max_to_one_at_sigma_min() {
        let s = [10.0, 1.0, 0.1, 0.0];
        assert_eq!(fraction(&s, 10.0), 0.0);
        assert!((fraction(&s, 1.0) - 0.5).abs() < 1e-12);
        assert_eq!(fraction(&s, 0.1), 1.0);
        assert_eq!(fraction(&s, 0.0), 1.0);
    }

    #[test]
    fn sample_options_take_the_clis_defaults() {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            s: crate::sample::SamplerArgs,
        }
        let cli = <Only as clap::Parser>::try_parse_from([
            "serve",
            "--sampler",
            "dpmpp-2m",
            "--steps",
            "7",
        ])
        .unwrap()
        .s
        .sample_options(1);
        assert_eq!(sample_options(SamplerKind::Dpmpp2m, 7), cli);
    }
}
