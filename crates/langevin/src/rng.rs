//! Injected randomness: one ChaCha stream per sample seed.
//!
//! Sample `i` of a run with base seed `s` draws all its noise from the stream seeded with `s + i`,
//! in a fixed order, so its value does not depend on batch size or thread count.
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::Result;

/// Per-sample noise streams for a batch.
pub struct NoiseSource {
    streams: Vec<ChaCha8Rng>,
}

impl NoiseSource {
    /// Streams for samples with the given seeds (one per batch row).
    pub fn from_seeds(seeds: impl IntoIterator<Item = u64>) -> Self {
        Self {
            streams: seeds.into_iter().map(ChaCha8Rng::seed_from_u64).collect(),
        }
    }

    /// Streams for seeds `base, base+1, …, base+n-1`.
    pub fn consecutive(base: u64, n: usize) -> Self {
        Self::from_seeds((0..n as u64).map(|i| base.wrapping_add(i)))
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Standard normal noise of `shape`, whose first dimension is the batch; row `i` comes
    /// from stream `i`.
    pub fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        assert_eq!(shape[0], self.streams.len(), "noise batch mismatch");
        let per: usize = shape[1..].iter().product();
        let mut v = Vec::with_capacity(per * self.streams.len());
        for rng in self.streams.iter_mut() {
            for _ in 0..per {
                let z: f64 = StandardNormal.sample(rng);
                v.push(z as f32);
            }
        }
        Ok(Tensor::from_vec(v, shape, device)?)
    }

    /// Noise shaped like `x` (f32, on x's device and cast to its dtype).
    pub fn randn_like(&mut self, x: &Tensor) -> Result<Tensor> {
        Ok(self.randn(x.dims(), x.device())?.to_dtype(x.dtype())?)
    }
}

/// A generic seeded generator for trainers and data sets.
pub fn seeded(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}
