//! Sampling a loaded model: [`SampleOptions`] (sampler, steps, spacing and its knobs),
//! [`draw_with`] (any denoiser, batched, sample i depends only on seed + i), [`draw_table`]
//! (rows in data units) and [`sample`], the whole request — class, guidance, initial noise,
//! diffusers' own loops — as `langevin sample` and the Python `Model.sample` run it.
use candle_core::{Device, Tensor};

use super::classes::{check_class, class_range, null_label};
use super::observe::Watched;
use super::{Observer, SamplerChoice, SpacingChoice};
use crate::data::Table;
use crate::denoiser::{Cond, Denoiser, Guided};
use crate::model::pipeline::{diffusers_loop, folder_scheduler};
use crate::model::{NetworkConfig, Run};
use crate::rng::NoiseSource;
use crate::sampler::{generate, Job, SamplerKind, SamplerOptions};
use crate::scheduler::SchedulerClass;
use crate::{Error, Result};

/// The sampler and its knobs; `Default` gives the CLI's defaults (Heun, 25 levels).
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    pub sampler: SamplerChoice,
    /// Number of noise levels.
    pub steps: usize,
    pub spacing: SpacingChoice,
    /// η of DDIM (default 0) and of the ancestral / SDE samplers (default 1).
    pub eta: Option<f64>,
    /// EDM churn S_churn for euler / heun.
    pub churn: f64,
    /// Annealed Langevin: updates per noise level, and NCSN's ε.
    pub langevin_steps: usize,
    pub langevin_eps: Option<f64>,
    /// Predictor-corrector: target SNR and corrector steps per level.
    pub snr: f64,
    pub corrector_steps: usize,
    /// Noise-level range of karras / exponential spacing (default: the model's).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// Start from N(0, σ_max²) instead of the variance-preserving N(0, (σ_max² + 1)·I).
    pub ve_prior: bool,
    /// Samples per network batch (does not change the samples).
    pub batch_size: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            sampler: SamplerChoice::Ours(SamplerKind::Heun),
            steps: 25,
            spacing: SpacingChoice::Auto,
            eta: None,
            churn: 0.0,
            langevin_steps: 10,
            langevin_eps: None,
            snr: 0.16,
            corrector_steps: 1,
            sigma_min: None,
            sigma_max: None,
            ve_prior: false,
            batch_size: 64,
        }
    }
}

impl SampleOptions {
    /// Our sampler for this choice (a diffusers class maps to its equivalent).
    pub fn kind(&self) -> Result<SamplerKind> {
        self.sampler.kind()
    }

    /// The noise levels for `run` (decreasing, ending in 0).
    pub fn sigmas(&self, run: &Run) -> Result<Vec<f64>> {
        let spacing = self.spacing.resolve(self.kind()?);
        run.config
            .diffusion
            .sigmas(self.steps, spacing, (self.sigma_min, self.sigma_max))
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

/// What to draw besides the sampler.
#[derive(Clone, Debug, Default)]
pub struct SampleRequest {
    pub n: usize,
    /// Sample i uses seed + i.
    pub seed: u64,
    /// A class for every sample (class-conditional models).
    pub class: Option<u32>,
    /// One class per sample (instead of `class`).
    pub labels: Option<Vec<u32>>,
    /// Classifier-free guidance scale (1 = plain conditional).
    pub guidance: f64,
    /// Standard-normal starting noise [n, ...] (scaled like drawn noise).
    pub init_noise: Option<Tensor>,
}

/// Draw `n` samples [n, ...] in the model's own units (standardised columns, or images in
/// [-1, 1]) with `den` (the run's own denoiser, or e.g. a guided one); also returns the
/// network evaluations per sample. `obs` sees progress in samples and can stop the call.
#[allow(clippy::too_many_arguments)]
pub fn draw_with(
    run: &Run,
    den: &dyn Denoiser,
    s: &SampleOptions,
    n: usize,
    seed: u64,
    init: Option<&Tensor>,
    cond: &Cond,
    obs: &dyn Observer,
) -> Result<(Tensor, usize)> {
    let kind = s.kind()?;
    let opts = s.options();
    let sigmas = s.sigmas(run)?;
    let batch_size = s.batch_size;
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
    let need = crate::memory::sampling_bytes(&run.config.network, &job.sample_shape, n, batch_size);
    crate::memory::check(
        &format!("drawing {n} samples in batches of {batch_size}"),
        need,
        None,
        || {
            "lower --n (write in parts with --seed offsets, or use `langevin augment`, which streams) or --batch-size".into()
        },
    )?;
    let watched = Watched {
        inner: den,
        observer: obs,
    };
    obs.start(kind.name(), n as u64, 0);
    let r = generate(&watched, cond, &job, &mut |done| {
        obs.advance(done as u64, None)
    });
    obs.finish();
    let (x, nfe) = r?;
    let finite = x.abs()?.max_all()?.to_scalar::<f32>()?.is_finite();
    if !finite {
        return Err(Error::config(
            "sampler",
            "sampling diverged (non-finite values); try more --steps or a smaller --langevin-eps",
        ));
    }
    Ok((x, nfe))
}

/// Draw `n` rows of a tabular model, mapped back to data units.
pub fn draw_table(
    run: &Run,
    s: &SampleOptions,
    n: usize,
    seed: u64,
    init: Option<&Tensor>,
    obs: &dyn Observer,
) -> Result<(Table, usize)> {
    let info = &run.config.data;
    let Some(std) = &info.standardizer else {
        return Err(Error::config(
            run.dir.display().to_string(),
            "not a tabular model (no column statistics)",
        ));
    };
    let (x, nfe) = draw_with(run, &run.denoiser, s, n, seed, init, &Cond::default(), obs)?;
    let data: Vec<f64> = x
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    let t = Table::new(info.columns.clone(), data)?;
    Ok((std.inverse(&t)?, nfe))
}

/// Check `init` [n, ...] against the model: tabular models want exactly [n, D]; image models
/// take any spatial size their levels can halve, as diffusers does.
pub fn check_init_noise(run: &Run, n: usize, init: &Tensor, what: &str) -> Result<()> {
    let shape = init.dims();
    let mut want = vec![n];
    want.extend(run.config.sample_shape()?);
    let fits = match &run.config.network {
        NetworkConfig::Unet(_) => shape.len() == 4 && shape[..2] == want[..2],
        NetworkConfig::Mlp(_) => shape == want.as_slice(),
    };
    if !fits {
        return Err(Error::config(
            what,
            format!("has shape {shape:?}, expected {want:?} (n samples of the model's shape)"),
        ));
    }
    Ok(())
}

/// The labels of a request as conditioning (checked against the model's classes).
fn request_cond(run: &Run, req: &SampleRequest) -> Result<Cond> {
    let labels = match (&req.labels, req.class) {
        (Some(_), Some(_)) => {
            return Err(Error::config(
                "labels",
                "give either one class or labels, not both",
            ))
        }
        (Some(l), None) => {
            if l.len() != req.n {
                return Err(Error::config(
                    "labels",
                    format!(
                        "has {} entries, expected one per sample ({})",
                        l.len(),
                        req.n
                    ),
                ));
            }
            for &k in l {
                check_class(run, Some(k))?;
            }
            Some(l.clone())
        }
        (None, Some(k)) => check_class(run, Some(k))?.map(|k| vec![k; req.n]),
        (None, None) => None,
    };
    match labels {
        Some(l) => Ok(Cond {
            labels: Some(Tensor::new(l.as_slice(), &Device::Cpu)?),
            image: None,
        }),
        None if req.guidance != 1.0 => Err(Error::config("--guidance", "needs --class")),
        None if run.config.network.is_class_conditional() => {
            let (n, _) = class_range(run);
            Err(Error::config(
                "--class",
                format!(
                    "{} is class-conditional; pass --class K with K in 0..{n}",
                    run.dir.display()
                ),
            ))
        }
        None => Ok(Cond::default()),
    }
}

/// Draw a request from `run`: tabular models return rows in data units [n, D], image models
/// images [n, C, H, W] in [-1, 1], with the network evaluations per sample (`None` for
/// diffusers' loops). A diffusers scheduler class runs diffusers' own loop on image models.
/// Sample i depends only on seed + i (whatever the batch size).
pub fn sample(
    run: &Run,
    s: &SampleOptions,
    req: &SampleRequest,
    obs: &dyn Observer,
) -> Result<(Tensor, Option<usize>)> {
    if req.n == 0 {
        return Err(Error::config("n", "must be at least 1"));
    }
    if let Some(z) = &req.init_noise {
        check_init_noise(run, req.n, z, "init_noise")?;
    }
    let cond = request_cond(run, req)?;
    let init = req.init_noise.as_ref();
    if run.config.data.standardizer.is_some() {
        let (t, nfe) = draw_table(run, s, req.n, req.seed, init, obs)?;
        let v: Vec<f32> = t.to_f32();
        return Ok((
            Tensor::from_vec(v, (t.rows, t.cols), &Device::Cpu)?,
            Some(nfe),
        ));
    }
    let (x, nfe) = match s.sampler {
        SamplerChoice::Diffusers(class) => {
            (diffusers_draw(run, class, s, req, init, &cond, obs)?, None)
        }
        SamplerChoice::Ours(_) if req.guidance != 1.0 => {
            let g = Guided {
                inner: &run.denoiser,
                null_label: null_label(run)?,
                scale: req.guidance,
            };
            let (x, nfe) = draw_with(run, &g, s, req.n, req.seed, init, &cond, obs)?;
            (x, Some(nfe))
        }
        SamplerChoice::Ours(_) => {
            let (x, nfe) = draw_with(run, &run.denoiser, s, req.n, req.seed, init, &cond, obs)?;
            (x, Some(nfe))
        }
    };
    Ok((x, nfe))
}

/// diffusers' own loop with scheduler `class` on a model folder, in batches.
fn diffusers_draw(
    run: &Run,
    class: SchedulerClass,
    s: &SampleOptions,
    req: &SampleRequest,
    init: Option<&Tensor>,
    cond: &Cond,
    obs: &dyn Observer,
) -> Result<Tensor> {
    if req.guidance != 1.0 {
        return Err(Error::config("--guidance", "works with langevin's samplers (e.g. --sampler dpmpp-2m), not with diffusers scheduler classes"));
    }
    let n = req.n;
    let mut shape = vec![n];
    shape.extend(run.config.sample_shape()?);
    obs.start(class.name(), n as u64, 0);
    let result = (|| {
        let mut outs = vec![];
        let mut start = 0;
        while start < n {
            let b = s.batch_size.min(n - start);
            let mut noise = NoiseSource::from_seeds(
                (start..start + b).map(|i| req.seed.wrapping_add(i as u64)),
            );
            let mut bshape = shape.clone();
            bshape[0] = b;
            let z = match init {
                Some(z) => z.narrow(0, start, b)?,
                None => noise.randn(&bshape, &crate::nn::Network::device(&run.denoiser.net))?,
            };
            let mut sched = folder_scheduler(&run.dir, class, s.steps)?;
            let c = Cond {
                labels: (cond.labels.as_ref())
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
            obs.advance(start as u64, None);
            if obs.should_stop() {
                return Err(Error::Cancelled);
            }
        }
        Ok(Tensor::cat(&outs, 0)?)
    })();
    obs.finish();
    result
}
