//! Job requests as the page sends them (JSON), and their checks: every value is validated
//! here, before a job is queued, so a bad request is answered with 4xx and a message instead
//! of failing later on the worker.
use std::path::Path;

use candle_core::{DType, Tensor};
use langevin::apps::inpaint::Resample;
use langevin::model::RunConfig;
use langevin::sampler::SamplerKind;
use serde::Deserialize;

use super::paths::{self, RunInfo};
use super::routes::ApiError;
use super::work::{Task, What};

/// Largest values a request may ask for (the page's sliders stop there too).
pub const MAX_STEPS: usize = 1000;
pub const MAX_COUNT: usize = 64;
pub const MAX_GUIDANCE: f64 = 30.0;
pub const MAX_RESAMPLE: usize = 20;

#[derive(Deserialize)]
pub struct JobRequest {
    pub client: String,
    pub run: String,
    #[serde(default = "default_sampler")]
    pub sampler: SamplerKind,
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(flatten)]
    pub app: AppRequest,
}

fn default_sampler() -> SamplerKind {
    SamplerKind::Heun
}
fn default_steps() -> usize {
    25
}
fn one() -> usize {
    1
}
fn unit() -> f64 {
    1.0
}

/// RePaint's resampling: `count` passes through every stretch of `jump` steps.
#[derive(Deserialize)]
pub struct Repaint {
    pub jump: usize,
    pub count: usize,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AppRequest {
    Sample {
        #[serde(default = "one")]
        count: usize,
        #[serde(default)]
        class: Option<u32>,
        #[serde(default = "unit")]
        guidance: f64,
    },
    /// `image` and `mask` name uploads (or results) in the client's folder; the mask is white
    /// where the painted region is to be filled.
    Inpaint {
        image: String,
        mask: String,
        /// None: projection only.
        #[serde(default)]
        repaint: Option<Repaint>,
        #[serde(default)]
        class: Option<u32>,
        #[serde(default = "unit")]
        guidance: f64,
    },
    Upscale {
        image: String,
    },
    Img2img {
        image: String,
        strength: f64,
        #[serde(default)]
        class: Option<u32>,
        #[serde(default = "unit")]
        guidance: f64,
    },
}

fn range<T: PartialOrd + std::fmt::Display>(
    what: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), ApiError> {
    if v >= lo && v <= hi {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "{what} must lie in [{lo}, {hi}], got {v}"
        )))
    }
}

fn check_class(info: &RunInfo, class: Option<u32>, guidance: f64) -> Result<(), ApiError> {
    if !guidance.is_finite() {
        return Err(ApiError::bad("guidance must be a number"));
    }
    range("guidance", guidance, 0.0, MAX_GUIDANCE)?;
    match class {
        Some(k) if info.classes == 0 => Err(ApiError::bad(format!(
            "class {k}: run {} is not class-conditional",
            info.name
        ))),
        Some(k) if k as usize >= info.classes => Err(ApiError::bad(format!(
            "class {k} out of range: run {} has classes 0..{}",
            info.name,
            info.classes - 1
        ))),
        None if guidance != 1.0 => Err(ApiError::bad("guidance needs a class")),
        Some(_) if guidance != 1.0 && !info.guidance => Err(ApiError::bad(format!(
            "run {} was not trained with a null class; guidance must be 1",
            info.name
        ))),
        _ => Ok(()),
    }
}

/// Read an image from the client's folder as [1, C, h, w] in [-1, 1].
fn read(out: &Path, client: &str, name: &str, c: usize) -> Result<Tensor, ApiError> {
    let path = paths::client_file(out, client, name)?;
    if !path.is_file() {
        return Err(ApiError::not_found(format!(
            "no image {name:?}: upload it first"
        )));
    }
    crate::apps::read_any_image(&path, c).map_err(|e| ApiError::bad(format!("{name}: {e:#}")))
}

fn same_size(name: &str, x: &Tensor, shape: &[usize]) -> Result<(), ApiError> {
    let d = x.dims();
    if (d[2], d[3]) != (shape[1], shape[2]) {
        return Err(ApiError::bad(format!(
            "{name}: image is {}×{}, the model takes {}×{}",
            d[2], d[3], shape[1], shape[2]
        )));
    }
    Ok(())
}

/// Check `req` against the run and the client's files; the checked task.
pub fn task(runs: &Path, out: &Path, req: JobRequest) -> Result<(String, Task), ApiError> {
    paths::check_client(&req.client)?;
    let dir = paths::run_dir(runs, &req.run)?;
    let cfg = RunConfig::load(&dir).map_err(|e| ApiError::bad(e.to_string()))?;
    let info = paths::list_runs(runs)
        .into_iter()
        .find(|r| r.name == req.run)
        .ok_or_else(|| ApiError::not_found(format!("unknown run {:?}", req.run)))?;
    let shape = match cfg.sample_shape() {
        Ok(s) if s.len() == 3 => s,
        _ => {
            return Err(ApiError::bad(format!(
                "run {} is not an image model (the studio works on image models)",
                req.run
            )))
        }
    };
    range("steps", req.steps, 1, MAX_STEPS)?;
    let internal = |e: candle_core::Error| ApiError::bad(e.to_string());
    let what = match req.app {
        AppRequest::Sample {
            count,
            class,
            guidance,
        } => {
            range("count", count, 1, MAX_COUNT)?;
            check_class(&info, class, guidance)?;
            What::Sample {
                count,
                class,
                guidance,
            }
        }
        AppRequest::Inpaint {
            image,
            mask,
            repaint,
            class,
            guidance,
        } => {
            check_class(&info, class, guidance)?;
            let resample = match repaint {
                None => Resample::NONE,
                Some(r) => {
                    range("repaint.jump", r.jump, 1, req.steps)?;
                    range("repaint.count", r.count, 1, MAX_RESAMPLE)?;
                    Resample {
                        jump: r.jump,
                        count: r.count,
                    }
                }
            };
            let x = read(out, &req.client, &image, shape[0])?;
            same_size(&image, &x, &shape)?;
            let m = read(out, &req.client, &mask, shape[0])?;
            same_size(&mask, &m, &shape)
                .map_err(|e| e.context("the mask must have the image's size"))?;
            // White (> 0 in [-1, 1]) marks the region to fill, as in `langevin inpaint`.
            let keep = m
                .le(0.0)
                .and_then(|k| k.to_dtype(DType::F32))
                .map_err(internal)?;
            What::Inpaint {
                image: x,
                keep,
                resample,
                class,
                guidance,
            }
        }
        AppRequest::Upscale { image } => {
            let low = read(out, &req.client, &image, shape[0])?;
            let (h, w) = (low.dims()[2], low.dims()[3]);
            let (mh, mw) = (shape[1], shape[2]);
            let factor = (mh % h == 0 && mw % w == 0 && mh / h == mw / w).then_some(mh / h);
            match (factor, info.superres) {
                (Some(f), Some(s)) if f == s => {}
                (Some(f), None) if f >= 2 => {}
                _ => {
                    return Err(ApiError::bad(format!(
                        "{image}: a {h}×{w} image does not upscale to the model's {mh}×{mw}{}",
                        match info.superres {
                            Some(s) => format!(" (this SR3 model takes {}×{})", mh / s, mw / s),
                            None => " by one integer factor ≥ 2".into(),
                        }
                    )))
                }
            }
            What::Upscale { low }
        }
        AppRequest::Img2img {
            image,
            strength,
            class,
            guidance,
        } => {
            if !strength.is_finite() {
                return Err(ApiError::bad("strength must be a number"));
            }
            range("strength", strength, 0.0, 1.0)?;
            check_class(&info, class, guidance)?;
            let x = read(out, &req.client, &image, shape[0])?;
            same_size(&image, &x, &shape)?;
            What::Img2img {
                image: x,
                strength,
                class,
                guidance,
            }
        }
    };
    let task = Task {
        dir,
        sampler: req.sampler,
        steps: req.steps,
        seed: req.seed,
        what,
    };
    Ok((req.client, task))
}
