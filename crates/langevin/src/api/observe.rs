//! Progress reports and stop requests from long calls (training, sampling) to whoever runs
//! them: a terminal progress bar, a web page, or Python's tqdm and Ctrl-C.
use candle_core::Tensor;

use crate::denoiser::{Cond, Denoiser};
use crate::{Error, Result};

/// Callbacks of a long call. Every method has a default, so an observer implements only
/// what it shows. Methods take `&self` (use interior mutability): a sampler asks
/// [`Observer::should_stop`] at each network evaluation while progress is reported.
pub trait Observer {
    /// Work named `what` of `total` units starts, `done` of them already done (a resumed run).
    fn start(&self, _what: &str, _total: u64, _done: u64) {}
    /// `done` units are done; `message` is a short status (e.g. the recent loss).
    fn advance(&self, _done: u64, _message: Option<&str>) {}
    /// The work ended (successfully or not).
    fn finish(&self) {}
    /// A warning or note for the user.
    fn note(&self, text: &str) {
        eprintln!("{text}");
    }
    /// Stop as soon as possible: training writes a checkpoint and returns
    /// [`Error::Stopped`], sampling returns [`Error::Cancelled`].
    fn should_stop(&self) -> bool {
        false
    }
}

/// Reports nothing (notes still go to stderr) and never stops.
pub struct Silent;
impl Observer for Silent {}

/// A denoiser that fails with [`Error::Cancelled`] once its observer asks to stop; checked at
/// every network evaluation.
pub struct Watched<'a> {
    pub inner: &'a dyn Denoiser,
    pub observer: &'a dyn Observer,
}

impl Watched<'_> {
    fn check(&self) -> Result<()> {
        if self.observer.should_stop() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }
}

impl Denoiser for Watched<'_> {
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
