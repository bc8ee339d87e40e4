//! `SchedulerConfig`: diffusers' `scheduler_config.json`, read and written as diffusers does
//! (`ConfigMixin.to_json_string` in diffusers/configuration_utils.py: Python's `json` module,
//! `indent=2`, sorted keys, `NaN`/`Infinity` literals, `null` for `None`).
//!
//! Each class keeps diffusers' own defaults and writes exactly the keys its `__init__` takes;
//! keys a class does not take are ignored on reading, as diffusers ignores them.
use std::path::Path;

use serde_json::{Map, Value};

use super::enums::*;
use crate::{Error, Result};

/// The configuration of one diffusers scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub class: SchedulerClass,
    /// `_diffusers_version` as read (written back unchanged; `None` writes this crate's target).
    pub diffusers_version: Option<String>,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaScheduleKind,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub set_alpha_to_one: bool,
    pub rescale_betas_zero_snr: bool,
    pub variance_type: Option<VarianceType>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub interpolation_type: InterpolationType,
    pub timestep_type: TimestepType,
    pub final_sigmas_type: FinalSigmasType,
    pub solver_order: usize,
    pub algorithm_type: AlgorithmType,
    pub solver_type: SolverType,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub lambda_min_clipped: f64,
    pub use_lu_lambdas: bool,
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    pub use_dynamic_shifting: bool,
    pub time_shift_type: String,
    pub predict_x0: bool,
    pub disable_corrector: Vec<i64>,
    pub solver_p: Option<Value>,
}

/// The diffusers release whose behaviour this module reproduces.
pub const DIFFUSERS_VERSION: &str = "0.36.0";

const COMMON: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
];
const SIGMA_KINDS: &[&str] = &[
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
];

/// The keys `class.__init__` takes (besides the common ones), i.e. what diffusers writes.
fn class_keys(class: SchedulerClass) -> &'static [&'static str] {
    use SchedulerClass::*;
    match class {
        Ddpm => &[
            "variance_type",
            "clip_sample",
            "thresholding",
            "dynamic_thresholding_ratio",
            "clip_sample_range",
            "sample_max_value",
            "rescale_betas_zero_snr",
        ],
        Ddim => &[
            "clip_sample",
            "set_alpha_to_one",
            "thresholding",
            "dynamic_thresholding_ratio",
            "clip_sample_range",
            "sample_max_value",
            "rescale_betas_zero_snr",
        ],
        EulerDiscrete => &[
            "interpolation_type",
            "sigma_min",
            "sigma_max",
            "timestep_type",
            "rescale_betas_zero_snr",
            "final_sigmas_type",
        ],
        EulerAncestralDiscrete => &["rescale_betas_zero_snr"],
        HeunDiscrete => &["clip_sample", "clip_sample_range"],
        LmsDiscrete | KDpm2Discrete => &[],
        DpmSolverMultistep => &[
            "solver_order",
            "thresholding",
            "dynamic_thresholding_ratio",
            "sample_max_value",
            "algorithm_type",
            "solver_type",
            "lower_order_final",
            "euler_at_final",
            "use_lu_lambdas",
            "use_flow_sigmas",
            "flow_shift",
            "final_sigmas_type",
            "lambda_min_clipped",
            "variance_type",
            "rescale_betas_zero_snr",
            "use_dynamic_shifting",
            "time_shift_type",
        ],
        UniPcMultistep => &[
            "solver_order",
            "thresholding",
            "dynamic_thresholding_ratio",
            "sample_max_value",
            "predict_x0",
            "solver_type",
            "lower_order_final",
            "disable_corrector",
            "solver_p",
            "use_flow_sigmas",
            "flow_shift",
            "final_sigmas_type",
            "rescale_betas_zero_snr",
            "use_dynamic_shifting",
            "time_shift_type",
        ],
    }
}

fn has_sigma_kinds(class: SchedulerClass) -> bool {
    !matches!(
        class,
        SchedulerClass::Ddpm | SchedulerClass::Ddim | SchedulerClass::EulerAncestralDiscrete
    )
}

/// Every key `class` reads and writes, in no particular order.
pub fn config_keys(class: SchedulerClass) -> Vec<&'static str> {
    let mut k: Vec<&str> = COMMON.to_vec();
    if has_sigma_kinds(class) {
        k.extend_from_slice(SIGMA_KINDS);
    }
    k.extend_from_slice(class_keys(class));
    k
}

impl SchedulerConfig {
    /// diffusers' defaults for `class`.
    pub fn new(class: SchedulerClass) -> Self {
        use SchedulerClass::*;
        let (beta_start, beta_end) = match class {
            HeunDiscrete | KDpm2Discrete => (0.00085, 0.012),
            _ => (0.0001, 0.02),
        };
        Self {
            class,
            diffusers_version: None,
            num_train_timesteps: 1000,
            beta_start,
            beta_end,
            beta_schedule: BetaScheduleKind::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: match class {
                Ddpm | Ddim => TimestepSpacing::Leading,
                _ => TimestepSpacing::Linspace,
            },
            steps_offset: 0,
            clip_sample: matches!(class, Ddpm | Ddim),
            clip_sample_range: 1.0,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            set_alpha_to_one: true,
            rescale_betas_zero_snr: false,
            variance_type: match class {
                Ddpm => Some(VarianceType::FixedSmall),
                _ => None,
            },
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            interpolation_type: InterpolationType::Linear,
            timestep_type: TimestepType::Discrete,
            final_sigmas_type: FinalSigmasType::Zero,
            solver_order: 2,
            algorithm_type: AlgorithmType::DpmSolverPlusPlus,
            solver_type: match class {
                UniPcMultistep => SolverType::Bh2,
                _ => SolverType::Midpoint,
            },
            lower_order_final: true,
            euler_at_final: false,
            lambda_min_clipped: f64::NEG_INFINITY,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            use_dynamic_shifting: false,
            time_shift_type: "exponential".into(),
            predict_x0: true,
            disable_corrector: vec![],
            solver_p: None,
        }
    }

    /// Parse the text of a `scheduler_config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(&protect_non_finite(text))
            .map_err(|e| Error::config("scheduler_config.json", format!("invalid JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Read a `scheduler_config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text)
    }

    /// Build from a parsed JSON object (non-finite floats may appear as the strings
    /// `"NaN"`, `"Infinity"`, `"-Infinity"` in float fields).
    pub fn from_value(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::config("scheduler_config.json", "must be a JSON object"))?;
        let class = match obj.get("_class_name") {
            Some(Value::String(s)) => SchedulerClass::parse(s)?,
            Some(other) => {
                return Err(Error::config(
                    "_class_name",
                    format!("must be a string, got {other}"),
                ))
            }
            None => {
                return Err(Error::config(
                    "_class_name",
                    format!("missing; accepted: {}", SchedulerClass::NAMES.join(", ")),
                ))
            }
        };
        let mut c = Self::new(class);
        c.diffusers_version = match obj.get("_diffusers_version") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        for key in config_keys(class) {
            if let Some(v) = obj.get(key) {
                if !v.is_null() || is_nullable(key) {
                    c.set(key, v)?;
                }
            }
        }
        c.validate()?;
        Ok(c)
    }

    fn set(&mut self, key: &str, v: &Value) -> Result<()> {
        match key {
            "num_train_timesteps" => self.num_train_timesteps = get_usize(key, v)?,
            "beta_start" => self.beta_start = get_f64(key, v)?,
            "beta_end" => self.beta_end = get_f64(key, v)?,
            "beta_schedule" => self.beta_schedule = get_enum(key, v, BetaScheduleKind::parse)?,
            "trained_betas" => {
                self.trained_betas = match v {
                    Value::Null => None,
                    Value::Array(a) => Some(
                        a.iter()
                            .enumerate()
                            .map(|(i, x)| get_f64(&format!("trained_betas[{i}]"), x))
                            .collect::<Result<_>>()?,
                    ),
                    _ => return Err(Error::config(key, "must be null or a list of floats")),
                }
            }
            "prediction_type" => self.prediction_type = get_enum(key, v, PredictionType::parse)?,
            "timestep_spacing" => self.timestep_spacing = get_enum(key, v, TimestepSpacing::parse)?,
            "steps_offset" => self.steps_offset = get_i64(key, v)?,
            "clip_sample" => self.clip_sample = get_bool(key, v)?,
            "clip_sample_range" => self.clip_sample_range = get_f64(key, v)?,
            "thresholding" => self.thresholding = get_bool(key, v)?,
            "dynamic_thresholding_ratio" => self.dynamic_thresholding_ratio = get_f64(key, v)?,
            "sample_max_value" => self.sample_max_value = get_f64(key, v)?,
            "set_alpha_to_one" => self.set_alpha_to_one = get_bool(key, v)?,
            "rescale_betas_zero_snr" => self.rescale_betas_zero_snr = get_bool(key, v)?,
            "variance_type" => {
                self.variance_type = match v {
                    Value::Null => None,
                    _ => Some(get_enum(key, v, VarianceType::parse)?),
                }
            }
            "use_karras_sigmas" => self.use_karras_sigmas = get_bool(key, v)?,
            "use_exponential_sigmas" => self.use_exponential_sigmas = get_bool(key, v)?,
            "use_beta_sigmas" => self.use_beta_sigmas = get_bool(key, v)?,
            "sigma_min" => self.sigma_min = get_opt_f64(key, v)?,
            "sigma_max" => self.sigma_max = get_opt_f64(key, v)?,
            "interpolation_type" => {
                self.interpolation_type = get_enum(key, v, InterpolationType::parse)?
            }
            "timestep_type" => self.timestep_type = get_enum(key, v, TimestepType::parse)?,
            "final_sigmas_type" => {
                self.final_sigmas_type = get_enum(key, v, FinalSigmasType::parse)?
            }
            "solver_order" => self.solver_order = get_usize(key, v)?,
            "algorithm_type" => self.algorithm_type = get_enum(key, v, AlgorithmType::parse)?,
            "solver_type" => self.solver_type = get_enum(key, v, SolverType::parse)?,
            "lower_order_final" => self.lower_order_final = get_bool(key, v)?,
            "euler_at_final" => self.euler_at_final = get_bool(key, v)?,
            "lambda_min_clipped" => self.lambda_min_clipped = get_f64(key, v)?,
            "use_lu_lambdas" => self.use_lu_lambdas = get_bool(key, v)?,
            "use_flow_sigmas" => self.use_flow_sigmas = get_bool(key, v)?,
            "flow_shift" => self.flow_shift = get_f64(key, v)?,
            "use_dynamic_shifting" => self.use_dynamic_shifting = get_bool(key, v)?,
            "time_shift_type" => match v {
                Value::String(s) if s == "exponential" => self.time_shift_type = s.clone(),
                _ => {
                    return Err(Error::config(
                        key,
                        format!("unknown value {v}; accepted: exponential"),
                    ))
                }
            },
            "predict_x0" => self.predict_x0 = get_bool(key, v)?,
            "disable_corrector" => {
                self.disable_corrector = match v {
                    Value::Array(a) => a.iter().map(|x| get_i64(key, x)).collect::<Result<_>>()?,
                    _ => return Err(Error::config(key, "must be a list of integers")),
                }
            }
            "solver_p" => self.solver_p = (!v.is_null()).then(|| v.clone()),
            _ => unreachable!("unhandled config key {key}"),
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Value {
        match key {
            "num_train_timesteps" => self.num_train_timesteps.into(),
            "beta_start" => float(self.beta_start),
            "beta_end" => float(self.beta_end),
            "beta_schedule" => self.beta_schedule.name().into(),
            "trained_betas" => match &self.trained_betas {
                None => Value::Null,
                Some(b) => Value::Array(b.iter().map(|x| float(*x)).collect()),
            },
            "prediction_type" => self.prediction_type.name().into(),
            "timestep_spacing" => self.timestep_spacing.name().into(),
            "steps_offset" => self.steps_offset.into(),
            "clip_sample" => self.clip_sample.into(),
            "clip_sample_range" => float(self.clip_sample_range),
            "thresholding" => self.thresholding.into(),
            "dynamic_thresholding_ratio" => float(self.dynamic_thresholding_ratio),
            "sample_max_value" => float(self.sample_max_value),
            "set_alpha_to_one" => self.set_alpha_to_one.into(),
            "rescale_betas_zero_snr" => self.rescale_betas_zero_snr.into(),
            "variance_type" => self.variance_type.map_or(Value::Null, |v| v.name().into()),
            "use_karras_sigmas" => self.use_karras_sigmas.into(),
            "use_exponential_sigmas" => self.use_exponential_sigmas.into(),
            "use_beta_sigmas" => self.use_beta_sigmas.into(),
            "sigma_min" => self.sigma_min.map_or(Value::Null, float),
            "sigma_max" => self.sigma_max.map_or(Value::Null, float),
            "interpolation_type" => self.interpolation_type.name().into(),
            "timestep_type" => self.timestep_type.name().into(),
            "final_sigmas_type" => self.final_sigmas_type.name().into(),
            "solver_order" => self.solver_order.into(),
            "algorithm_type" => self.algorithm_type.name().into(),
            "solver_type" => self.solver_type.name().into(),
            "lower_order_final" => self.lower_order_final.into(),
            "euler_at_final" => self.euler_at_final.into(),
            "lambda_min_clipped" => float(self.lambda_min_clipped),
            "use_lu_lambdas" => self.use_lu_lambdas.into(),
            "use_flow_sigmas" => self.use_flow_sigmas.into(),
            "flow_shift" => float(self.flow_shift),
            "use_dynamic_shifting" => self.use_dynamic_shifting.into(),
            "time_shift_type" => self.time_shift_type.clone().into(),
            "predict_x0" => self.predict_x0.into(),
            "disable_corrector" => self.disable_corrector.clone().into(),
            "solver_p" => self.solver_p.clone().unwrap_or(Value::Null),
            _ => unreachable!("unhandled config key {key}"),
        }
    }

    /// The config as a JSON object with diffusers' key names; non-finite floats are the
    /// strings `"NaN"`, `"Infinity"`, `"-Infinity"` (see [`Self::to_json_string`]).
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("_class_name".into(), self.class.name().into());
        m.insert(
            "_diffusers_version".into(),
            self.diffusers_version
                .clone()
                .unwrap_or_else(|| DIFFUSERS_VERSION.into())
                .into(),
        );
        for key in config_keys(self.class) {
            m.insert(key.into(), self.get(key));
        }
        Value::Object(m)
    }

    /// The text diffusers' `to_json_string` writes: indent 2, sorted keys, trailing newline,
    /// `NaN`/`Infinity`/`-Infinity` as bare literals.
    pub fn to_json_string(&self) -> String {
        let v = sort_keys(self.to_value());
        let text = serde_json::to_string_pretty(&v).expect("JSON values always serialise");
        let text = text
            .replace(&format!("\"{NEG_INF}\""), "-Infinity")
            .replace(&format!("\"{POS_INF}\""), "Infinity")
            .replace(&format!("\"{NAN}\""), "NaN");
        text + "\n"
    }

    /// Write `scheduler_config.json` atomically.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_atomic_bytes(path, self.to_json_string().as_bytes())
    }

    /// Cross-field checks diffusers makes in `__init__`.
    pub fn validate(&self) -> Result<()> {
        let kinds = [
            self.use_karras_sigmas,
            self.use_exponential_sigmas,
            self.use_beta_sigmas,
        ];
        if kinds.iter().filter(|b| **b).count() > 1 {
            return Err(Error::config(
                "use_karras_sigmas/use_exponential_sigmas/use_beta_sigmas",
                "only one of them can be true",
            ));
        }
        if self.num_train_timesteps == 0 && self.trained_betas.is_none() {
            return Err(Error::config("num_train_timesteps", "must be at least 1"));
        }
        if self.num_train_timesteps > crate::schedule::MAX_TIMESTEPS {
            return Err(Error::config(
                "num_train_timesteps",
                format!("must be at most {}", crate::schedule::MAX_TIMESTEPS),
            ));
        }
        if self.class == SchedulerClass::DpmSolverMultistep {
            if !matches!(self.solver_type, SolverType::Midpoint | SolverType::Heun) {
                // diffusers silently maps bh1/bh2 to midpoint; keep the user's value visible.
                return Err(Error::config(
                    "solver_type",
                    format!(
                        "{} is not a DPMSolverMultistepScheduler solver; accepted: midpoint, heun",
                        self.solver_type
                    ),
                ));
            }
            if !matches!(
                self.algorithm_type,
                AlgorithmType::DpmSolverPlusPlus | AlgorithmType::SdeDpmSolverPlusPlus
            ) && self.final_sigmas_type == FinalSigmasType::Zero
            {
                return Err(Error::config(
                    "final_sigmas_type",
                    format!(
                        "zero is not supported for algorithm_type {}; use sigma_min",
                        self.algorithm_type
                    ),
                ));
            }
            if !(1..=3).contains(&self.solver_order) {
                return Err(Error::config("solver_order", "must be 1, 2 or 3"));
            }
        }
        if self.class == SchedulerClass::UniPcMultistep && !(1..=3).contains(&self.solver_order) {
            return Err(Error::config("solver_order", "must be 1, 2 or 3"));
        }
        if self.class == SchedulerClass::UniPcMultistep
            && !matches!(self.solver_type, SolverType::Bh1 | SolverType::Bh2)
        {
            return Err(Error::config(
                "solver_type",
                format!(
                    "{} is not a UniPCMultistepScheduler solver; accepted: bh1, bh2",
                    self.solver_type
                ),
            ));
        }
        if self.class == SchedulerClass::Ddpm && self.beta_schedule == BetaScheduleKind::Sigmoid {
            return Ok(());
        }
        if self.beta_schedule == BetaScheduleKind::Sigmoid && self.trained_betas.is_none() {
            return Err(Error::config(
                "beta_schedule",
                format!(
                    "sigmoid is only implemented for DDPMScheduler, not {}",
                    self.class
                ),
            ));
        }
        Ok(())
    }
}

const POS_INF: &str = "\u{E000}Infinity";
const NEG_INF: &str = "\u{E000}-Infinity";
const NAN: &str = "\u{E000}NaN";

fn float(x: f64) -> Value {
    if x.is_nan() {
        NAN.into()
    } else if x == f64::INFINITY {
        POS_INF.into()
    } else if x == f64::NEG_INFINITY {
        NEG_INF.into()
    } else {
        serde_json::Number::from_f64(x).unwrap().into()
    }
}

fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut pairs: Vec<_> = m.into_iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(pairs.into_iter().map(|(k, v)| (k, sort_keys(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sort_keys).collect()),
        v => v,
    }
}

/// Replace Python's bare `NaN`, `Infinity`, `-Infinity` (outside strings) by marker strings.
fn protect_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let mut matched = false;
        for (lit, marker) in [("-Infinity", NEG_INF), ("Infinity", POS_INF), ("NaN", NAN)] {
            if rest.starts_with(lit) {
                out.push('"');
                out.push_str(marker);
                out.push('"');
                rest = &rest[lit.len()..];
                matched = true;
                break;
            }
        }
        if matched {
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn is_nullable(key: &str) -> bool {
    matches!(
        key,
        "trained_betas" | "variance_type" | "sigma_min" | "sigma_max" | "solver_p"
    )
}

fn type_err(key: &str, want: &str, v: &Value) -> Error {
    Error::config(key, format!("must be {want}, got {v}"))
}

fn get_f64(key: &str, v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| type_err(key, "a number", v)),
        Value::String(s) if s == NAN || s == "NaN" => Ok(f64::NAN),
        Value::String(s) if s == POS_INF || s == "Infinity" => Ok(f64::INFINITY),
        Value::String(s) if s == NEG_INF || s == "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => Err(type_err(key, "a number", v)),
    }
}

fn get_opt_f64(key: &str, v: &Value) -> Result<Option<f64>> {
    match v {
        Value::Null => Ok(None),
        _ => get_f64(key, v).map(Some),
    }
}

fn get_i64(key: &str, v: &Value) -> Result<i64> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    // Python writes 1.0 for a float given where an int is expected; accept integral floats.
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(type_err(key, "an integer", v)),
    }
}

fn get_usize(key: &str, v: &Value) -> Result<usize> {
    let i = get_i64(key, v)?;
    usize::try_from(i).map_err(|_| type_err(key, "a non-negative integer", v))
}

fn get_bool(key: &str, v: &Value) -> Result<bool> {
    v.as_bool().ok_or_else(|| type_err(key, "true or false", v))
}

fn get_enum<T>(key: &str, v: &Value, parse: fn(&str) -> Result<T>) -> Result<T> {
    match v {
        Value::String(s) => parse(s),
        _ => Err(type_err(key, "a string", v)),
    }
}
