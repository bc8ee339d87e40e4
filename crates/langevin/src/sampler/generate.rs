//! Drawing many samples in batches: sample i uses seed `seed + i` whatever the batch size.
use candle_core::Tensor;

use super::{initial_noise, Ctx, SamplerKind, SamplerOptions};
use crate::denoiser::{Cond, Denoiser};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// What to draw.
pub struct Job<'a> {
    pub kind: SamplerKind,
    pub opts: &'a SamplerOptions,
    /// Decreasing noise levels ending in 0.
    pub sigmas: &'a [f64],
    pub n: usize,
    pub seed: u64,
    pub batch_size: usize,
    /// Shape of one sample (without the batch dimension).
    pub sample_shape: Vec<usize>,
    /// Data standard deviation of the prior N(0, (σ_max² + σ_data²)·I): 1 for the
    /// variance-preserving start (diffusers' DDPM), 0 for the variance-exploding N(0, σ_max²).
    pub sigma_data: f64,
    /// Standard-normal starting noise [n, ...] to use instead of drawing it (e.g. from another
    /// framework); it is scaled like drawn noise.
    pub init_noise: Option<&'a Tensor>,
}

/// Run `job` with `model`; `on_batch(done)` is called after each batch. Returns the samples
/// [n, ...] and the number of network evaluations per sample. `cond.labels`, if any, has one
/// row per sample.
pub fn generate(
    model: &dyn Denoiser,
    cond: &Cond,
    job: &Job,
    on_batch: &mut dyn FnMut(usize),
) -> Result<(Tensor, usize)> {
    if job.n == 0 || job.batch_size == 0 {
        return Err(Error::config("n/batch_size", "must be at least 1"));
    }
    if let Some(z) = job.init_noise {
        let mut want = vec![job.n];
        want.extend(&job.sample_shape);
        if z.dims() != want.as_slice() {
            return Err(Error::config(
                "init_noise",
                format!("has shape {:?}, expected {:?}", z.dims(), want),
            ));
        }
    }
    let dev = model.device();
    let mut outs = vec![];
    let mut nfe = 0;
    let mut start = 0;
    while start < job.n {
        let b = job.batch_size.min(job.n - start);
        let mut noise =
            NoiseSource::from_seeds((start..start + b).map(|i| job.seed.wrapping_add(i as u64)));
        let mut shape = vec![b];
        shape.extend(&job.sample_shape);
        let x = match job.init_noise {
            Some(z) => {
                let s0 = job.sigmas[0];
                let z = z.narrow(0, start, b)?.to_device(&dev)?;
                (z * (s0 * s0 + job.sigma_data * job.sigma_data).sqrt())?
            }
            None => initial_noise(&mut noise, &shape, job.sigmas[0], job.sigma_data, &dev)?,
        };
        // Conditioning rows follow their samples into the batch.
        let bcond = cond.rows(start, b)?;
        let mut ctx = Ctx::new(model, &bcond, &mut noise, job.opts);
        outs.push(job.kind.function()(&mut ctx, x, job.sigmas)?);
        nfe = ctx.nfe;
        start += b;
        on_batch(start);
    }
    Ok((Tensor::cat(&outs, 0)?, nfe))
}
