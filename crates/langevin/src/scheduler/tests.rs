use super::*;
use crate::Error;

const DDIM_SD: &str = r#"{
  "_class_name": "DDIMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}"#;

fn field_of(e: Error) -> (String, String) {
    match e {
        Error::Config { field, msg } => (field, msg),
        other => panic!("expected a config error, got {other}"),
    }
}

#[test]
fn reads_a_stable_diffusion_config_ignoring_unknown_keys() {
    let c = SchedulerConfig::from_json_str(DDIM_SD).unwrap();
    assert_eq!(c.class, SchedulerClass::Ddim);
    assert_eq!(c.beta_schedule, BetaScheduleKind::ScaledLinear);
    assert_eq!(c.steps_offset, 1);
    assert!(!c.set_alpha_to_one && !c.clip_sample);
    assert_eq!(c.timestep_spacing, TimestepSpacing::Leading); // DDIM's default
    let j = schedule_json(&c, 10).unwrap();
    assert_eq!(j["timesteps"][0], 901);
    assert!(j.get("sigmas").is_none());
}

#[test]
fn unknown_class_and_bad_enum_values_name_the_field() {
    let (f, m) = field_of(
        SchedulerConfig::from_json_str(r#"{"_class_name": "PNDMScheduler"}"#).unwrap_err(),
    );
    assert_eq!(f, "_class_name");
    assert!(
        m.contains("DDIMScheduler") && m.contains("PNDMScheduler"),
        "{m}"
    );
    let (f, m) = field_of(
        SchedulerConfig::from_json_str(
            r#"{"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "foo"}"#,
        )
        .unwrap_err(),
    );
    assert_eq!(f, "timestep_spacing");
    assert!(
        m.contains("\"foo\"") && m.contains("linspace, leading, trailing"),
        "{m}"
    );
    let (f, m) = field_of(
        SchedulerConfig::from_json_str(
            r#"{"_class_name": "DDIMScheduler", "prediction_type": "bar"}"#,
        )
        .unwrap_err(),
    );
    assert_eq!(f, "prediction_type");
    assert!(m.contains("epsilon, sample, v_prediction"), "{m}");
    let (f, _) = field_of(
        SchedulerConfig::from_json_str(r#"{"_class_name": "DDIMScheduler", "clip_sample": 3}"#)
            .unwrap_err(),
    );
    assert_eq!(f, "clip_sample");
}

#[test]
fn round_trip_keeps_diffusers_keys_and_non_finite_literals() {
    let text = r#"{"_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.36.0",
        "lambda_min_clipped": -Infinity, "sample_max_value": NaN, "solver_order": 3,
        "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": true, "foo": [1, 2]}"#;
    let a = SchedulerConfig::from_json_str(text).unwrap();
    assert_eq!(a.lambda_min_clipped, f64::NEG_INFINITY);
    assert!(a.sample_max_value.is_nan());
    let out = a.to_json_string();
    assert!(out.contains("\"lambda_min_clipped\": -Infinity"), "{out}");
    assert!(out.contains("\"sample_max_value\": NaN"), "{out}");
    assert!(out.contains("\"_class_name\": \"DPMSolverMultistepScheduler\""));
    assert!(out.contains("\"algorithm_type\": \"sde-dpmsolver++\""));
    assert!(out.contains("\"trained_betas\": null"));
    assert!(out.contains("\"num_train_timesteps\": 1000,"));
    assert!(!out.contains("foo"));
    let b = SchedulerConfig::from_json_str(&out).unwrap();
    // NaN != NaN: compare the rest through the text.
    assert_eq!(b.to_json_string(), out);
    let mut a2 = a.clone();
    let mut b2 = b.clone();
    a2.sample_max_value = 1.0;
    b2.sample_max_value = 1.0;
    assert_eq!(a2, b2);
    for class in SchedulerClass::NAMES {
        let mut c =
            SchedulerConfig::from_json_str(&format!(r#"{{"_class_name": "{class}"}}"#)).unwrap();
        c.diffusers_version = Some(DIFFUSERS_VERSION.into());
        assert_eq!(
            SchedulerConfig::from_json_str(&c.to_json_string()).unwrap(),
            c
        );
    }
}

#[test]
fn unimplemented_classes_are_a_clear_error() {
    let c = SchedulerConfig::new(SchedulerClass::UniPcMultistep);
    let (f, m) = field_of(Scheduler::new(c).unwrap_err());
    assert_eq!(f, "_class_name");
    assert!(m.contains("not implemented"));
}
