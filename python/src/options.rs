//! Keyword options from Python into the library's option structs, each checked with an error
//! that names the field and the expected value.
use langevin::api::{SampleOptions, ScheduleOptions, TrainOptions};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::to_py;

fn bad(field: &str, want: &str, got: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{field}: expected {want}, got {got}"))
}

/// `value` must satisfy `ok`; the error names `field` and `want`.
pub fn check<T: std::fmt::Display + Copy>(
    field: &str,
    value: T,
    ok: impl Fn(T) -> bool,
    want: &str,
) -> PyResult<()> {
    if ok(value) {
        Ok(())
    } else {
        Err(bad(field, want, value))
    }
}

pub fn check_schedule(s: &ScheduleOptions) -> PyResult<()> {
    check("timesteps", s.timesteps, |v| v >= 1, "an integer >= 1")?;
    check("beta", s.beta, |v| v > 0.0 && v < 1.0, "a number in (0, 1)")?;
    check(
        "beta_start",
        s.beta_start,
        |v| v > 0.0 && v < 1.0,
        "a number in (0, 1)",
    )?;
    check(
        "beta_end",
        s.beta_end,
        |v| v > 0.0 && v < 1.0,
        "a number in (0, 1)",
    )?;
    Ok(())
}

/// The training options the keyword arguments of `langevin.train` name.
pub const TRAIN_KEYS: &[&str] = &[
    "resume",
    "overwrite",
    "n_toy",
    "schedule",
    "timesteps",
    "beta",
    "beta_start",
    "beta_end",
    "prediction",
    "batch_size",
    "lr",
    "warmup",
    "weight_decay",
    "grad_clip",
    "ema_decay",
    "checkpoint_every",
    "time_limit",
    "hidden",
    "blocks",
    "temb_dim",
    "channels",
    "layers_per_block",
    "attention",
    "norm_groups",
    "class_cond",
    "label_dropout",
    "min_snr",
    "hflip",
    "image_size",
    "grey",
    "strict",
    "per_class",
    "sample_every",
    "superres",
    "device",
    "dtype",
];

/// `v` as the field's type; the error names the field.
macro_rules! get {
    ($key:expr, $v:expr) => {
        $v.extract()
            .map_err(|e| PyValueError::new_err(format!("{}: {}", $key, PyErr::from(e))))?
    };
}

/// Apply `options` (a dict of keyword arguments) to `o`.
pub fn train_options(o: &mut TrainOptions, options: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
    let mut device = "cpu".to_string();
    let mut dtype: Option<String> = None;
    if let Some(d) = options {
        for (k, v) in d.iter() {
            let key: String = k.extract()?;
            let key = key.as_str();
            match key {
                "resume" => o.resume = get!(key, v),
                "overwrite" => o.overwrite = get!(key, v),
                "n_toy" => o.n_toy = get!(key, v),
                "schedule" => {
                    let s: String = get!(key, v);
                    o.schedule.kind = s.parse().map_err(to_py)?;
                }
                "timesteps" => o.schedule.timesteps = get!(key, v),
                "beta" => o.schedule.beta = get!(key, v),
                "beta_start" => o.schedule.beta_start = get!(key, v),
                "beta_end" => o.schedule.beta_end = get!(key, v),
                "prediction" => {
                    let s: String = get!(key, v);
                    o.prediction = s.parse().map_err(to_py)?;
                }
                "batch_size" => o.batch_size = get!(key, v),
                "lr" => o.lr = get!(key, v),
                "warmup" => o.warmup = get!(key, v),
                "weight_decay" => o.weight_decay = get!(key, v),
                "grad_clip" => o.grad_clip = get!(key, v),
                "ema_decay" => o.ema_decay = get!(key, v),
                "checkpoint_every" => o.checkpoint_every = get!(key, v),
                "time_limit" => o.time_limit = get!(key, v),
                "hidden" => o.mlp.hidden = get!(key, v),
                "blocks" => o.mlp.blocks = get!(key, v),
                "temb_dim" => o.mlp.temb_dim = get!(key, v),
                "channels" => o.image.channels = get!(key, v),
                "layers_per_block" => o.image.layers_per_block = get!(key, v),
                "attention" => o.image.attention = get!(key, v),
                "norm_groups" => o.image.norm_groups = get!(key, v),
                "class_cond" => o.image.class_cond = get!(key, v),
                "label_dropout" => o.image.label_dropout = get!(key, v),
                "min_snr" => o.image.min_snr = get!(key, v),
                "hflip" => o.image.hflip = get!(key, v),
                "image_size" => o.image.load.image_size = get!(key, v),
                "grey" => o.image.load.grey = get!(key, v),
                "strict" => o.image.load.strict = get!(key, v),
                "per_class" => o.image.load.per_class = get!(key, v),
                "sample_every" => o.image.sample_every = get!(key, v),
                "superres" => o.image.superres = get!(key, v),
                "device" => device = get!(key, v),
                "dtype" => dtype = get!(key, v),
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "unknown option '{key}'; expected one of {}",
                        TRAIN_KEYS.join(", ")
                    )))
                }
            }
        }
    }
    check_schedule(&o.schedule)?;
    if let Some(steps) = o.steps {
        check("steps", steps, |v| v >= 1, "an integer >= 1")?;
    }
    check("batch_size", o.batch_size, |v| v >= 1, "an integer >= 1")?;
    check("n_toy", o.n_toy, |v| v >= 1, "an integer >= 1")?;
    check("lr", o.lr, |v| v > 0.0 && v.is_finite(), "a number > 0")?;
    check(
        "ema_decay",
        o.ema_decay,
        |v| (0.0..1.0).contains(&v),
        "a number in [0, 1)",
    )?;
    check(
        "weight_decay",
        o.weight_decay,
        |v| v >= 0.0,
        "a number >= 0",
    )?;
    check(
        "grad_clip",
        o.grad_clip,
        |v| v >= 0.0,
        "a number >= 0 (0 = off)",
    )?;
    check(
        "label_dropout",
        o.image.label_dropout,
        |v| (0.0..=1.0).contains(&v),
        "a number in [0, 1]",
    )?;
    check("hidden", o.mlp.hidden, |v| v >= 1, "an integer >= 1")?;
    check("blocks", o.mlp.blocks, |v| v >= 1, "an integer >= 1")?;
    check(
        "norm_groups",
        o.image.norm_groups,
        |v| v >= 1,
        "an integer >= 1",
    )?;
    if o.image.channels.is_empty() || o.image.channels.contains(&0) {
        return Err(bad(
            "channels",
            "a list of widths >= 1",
            format!("{:?}", o.image.channels),
        ));
    }
    if let Some(t) = o.time_limit {
        check("time_limit", t, |v| v > 0.0, "minutes > 0")?;
    }
    o.device = langevin::compute::device(&device).map_err(to_py)?;
    o.dtype = match dtype {
        Some(s) => s
            .parse::<langevin::compute::Precision>()
            .map_err(to_py)?
            .dtype(),
        None => candle_core::DType::F32,
    };
    Ok(())
}

/// Sampler keyword arguments shared by `sample`, `inpaint`, `img2img` and `upscale`.
#[allow(clippy::too_many_arguments)]
pub fn sample_options(
    sampler: &str,
    steps: usize,
    spacing: &str,
    eta: Option<f64>,
    churn: f64,
    langevin_steps: usize,
    batch_size: usize,
) -> PyResult<SampleOptions> {
    check("steps", steps, |v| v >= 1, "an integer >= 1")?;
    check("batch_size", batch_size, |v| v >= 1, "an integer >= 1")?;
    check(
        "langevin_steps",
        langevin_steps,
        |v| v >= 1,
        "an integer >= 1",
    )?;
    check("churn", churn, |v| v >= 0.0, "a number >= 0")?;
    if let Some(e) = eta {
        check("eta", e, |v| v >= 0.0, "a number >= 0")?;
    }
    Ok(SampleOptions {
        sampler: sampler.parse().map_err(to_py)?,
        steps,
        spacing: spacing.parse().map_err(to_py)?,
        eta,
        churn,
        langevin_steps,
        batch_size,
        ..Default::default()
    })
}
