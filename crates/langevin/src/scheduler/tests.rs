//! Tests of the diffusers-compatible schedulers.
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
fn every_class_builds_and_unsupported_options_name_the_field() {
    for class in SchedulerClass::NAMES {
        let c =
            SchedulerConfig::from_json_str(&format!(r#"{{"_class_name": "{class}"}}"#)).unwrap();
        let j = schedule_json(&c, 7).unwrap();
        assert!(!j["timesteps"].as_array().unwrap().is_empty(), "{class}");
    }
    let mut c = SchedulerConfig::new(SchedulerClass::UniPcMultistep);
    c.solver_order = 4;
    let (f, _) = field_of(Scheduler::new(c).unwrap_err());
    assert_eq!(f, "solver_order");
    let mut c = SchedulerConfig::new(SchedulerClass::UniPcMultistep);
    c.use_flow_sigmas = true;
    let mut s = Scheduler::new(c).unwrap();
    assert!(s.set_timesteps(10).is_err());
}

#[test]
fn two_stage_schedules_have_doubled_positions() {
    let mut s = Scheduler::new(SchedulerConfig::new(SchedulerClass::HeunDiscrete)).unwrap();
    s.set_timesteps(4).unwrap();
    assert_eq!(s.timesteps().len(), 7);
    assert_eq!(s.sigmas().unwrap().len(), 8);
    assert_eq!(s.timesteps()[1], s.timesteps()[2]);
    let mut k = Scheduler::new(SchedulerConfig::new(SchedulerClass::KDpm2Discrete)).unwrap();
    k.set_timesteps(4).unwrap();
    assert_eq!(k.timesteps().len(), 7);
    assert_eq!(k.sigmas().unwrap().len(), 10);
    let ip = k.sigmas_interpol().unwrap();
    let sg = k.sigmas().unwrap();
    // the midpoint σ is the geometric mean of its neighbours
    assert!((ip[1] - (sg[0] * sg[1]).sqrt()).abs() <= 1e-6 * ip[1]);
    // a second-order position without its first half is an error
    let x = candle_core::Tensor::zeros(
        (1, 1, 2, 2),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let (f, _) = field_of(s.step(&x, 1, &x, None).unwrap_err());
    assert_eq!(f, "step_index");
}

#[test]
fn lms_coefficients_are_adams_bashforth_on_a_uniform_grid() {
    // σ = 10, 9, 8, 7, 6: order-2 and order-4 Adams–Bashforth weights times h = -1.
    let sig = [10.0, 9.0, 8.0, 7.0, 6.0];
    let c2: Vec<f64> = (0..2)
        .map(|j| lms::lms_coefficient(&sig, 2, 1, j))
        .collect();
    assert!(
        (c2[0] + 1.5).abs() < 1e-12 && (c2[1] - 0.5).abs() < 1e-12,
        "{c2:?}"
    );
    let c4: Vec<f64> = (0..4)
        .map(|j| lms::lms_coefficient(&sig, 4, 3, j))
        .collect();
    let want = [-55.0 / 24.0, 59.0 / 24.0, -37.0 / 24.0, 9.0 / 24.0];
    for (a, b) in c4.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{c4:?}");
    }
}
