//! Stopping a running sampler from another thread: [`Cancellable`] wraps a denoiser and fails
//! with [`Error::Cancelled`] at the next network evaluation once its flag is set. Every sampler
//! and application (inpainting, SDEdit, ILVR) evaluates the network at each step, so a job
//! stops within one evaluation whichever of them runs it.
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;

use super::{Cond, Denoiser};
use crate::{Error, Result};

pub struct Cancellable<'a> {
    pub inner: &'a dyn Denoiser,
    /// Set (by anyone, any thread) to stop at the next evaluation.
    pub flag: &'a AtomicBool,
}

impl Cancellable<'_> {
    fn check(&self) -> Result<()> {
        if self.flag.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        Ok(())
    }
}

impl Denoiser for Cancellable<'_> {
    fn device(&self) -> candle_core::Device {
        self.inner.device()
    }
    fn denoise(&self, x: &Tensor, sigma: f64, cond: &Cond) -> Result<Tensor> {
        self.check()?;
        self.inner.denoise(x, sigma, cond)
    }
    fn denoise_rows(&self, x: &Tensor, sigmas: &[f64], cond: &Cond) -> Result<Tensor> {
        self.check()?;
        self.inner.denoise_rows(x, sigmas, cond)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::GaussianDenoiser;
    use crate::sampler::{generate, Job, SamplerKind, SamplerOptions};
    use std::cell::Cell;

    /// Counts evaluations and raises the flag at the third.
    struct Raiser<'a> {
        inner: GaussianDenoiser,
        flag: &'a AtomicBool,
        calls: Cell<usize>,
    }
    impl Denoiser for Raiser<'_> {
        fn denoise(&self, x: &Tensor, sigma: f64, cond: &Cond) -> Result<Tensor> {
            self.calls.set(self.calls.get() + 1);
            if self.calls.get() == 3 {
                self.flag.store(true, Ordering::Relaxed);
            }
            self.inner.denoise(x, sigma, cond)
        }
    }

    #[test]
    fn a_raised_flag_stops_sampling_at_the_next_evaluation() {
        let flag = AtomicBool::new(false);
        let inner = Raiser {
            inner: GaussianDenoiser {
                mean: vec![0.0; 2],
                var: vec![1.0; 2],
            },
            flag: &flag,
            calls: Cell::new(0),
        };
        let den = Cancellable {
            inner: &inner,
            flag: &flag,
        };
        let sigmas = crate::schedule::sigmas::karras(20, 0.01, 10.0, 7.0).unwrap();
        let opts = SamplerOptions::default();
        let job = Job {
            kind: SamplerKind::Euler,
            opts: &opts,
            sigmas: &sigmas,
            n: 4,
            seed: 0,
            batch_size: 2,
            sample_shape: vec![2],
            sigma_data: 1.0,
            init_noise: None,
        };
        let e = generate(&den, &Cond::default(), &job, &mut |_| {}).unwrap_err();
        assert!(matches!(e, Error::Cancelled), "{e}");
        assert_eq!(
            inner.calls.get(),
            3,
            "no evaluation after the flag was raised"
        );
        // With the flag down the same job runs to the end: 20 Euler steps per batch.
        flag.store(false, Ordering::Relaxed);
        inner.calls.set(100);
        let (x, nfe) = generate(&den, &Cond::default(), &job, &mut |_| {}).unwrap();
        assert_eq!((x.dims(), nfe), (&[4, 2][..], 20));
    }
}
