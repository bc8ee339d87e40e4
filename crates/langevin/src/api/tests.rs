//! The API's own guarantees: a stop request writes a checkpoint that resumes to the same
//! weights as an uninterrupted run; an existing run is refused; choices parse once.
use std::cell::Cell;

use super::*;
use crate::api::sample::SampleRequest;
use crate::model::Run;
use crate::Error;

/// Asks to stop once `after` steps are reported.
struct StopAfter {
    after: u64,
    seen: Cell<u64>,
}

impl Observer for StopAfter {
    fn advance(&self, done: u64, _: Option<&str>) {
        self.seen.set(done);
    }
    fn note(&self, _: &str) {}
    fn should_stop(&self) -> bool {
        self.seen.get() >= self.after
    }
}

fn opts(out: &std::path::Path, steps: u64) -> TrainOptions {
    TrainOptions {
        out: out.to_path_buf(),
        n_toy: 512,
        steps: Some(steps),
        batch_size: 64,
        checkpoint_every: 0,
        mlp: MlpOptions {
            hidden: 16,
            blocks: 1,
            temb_dim: 8,
        },
        ..Default::default()
    }
}

fn draw(dir: &std::path::Path) -> Vec<f32> {
    let run = Run::load(dir, &candle_core::Device::Cpu).unwrap();
    let req = SampleRequest {
        n: 8,
        seed: 3,
        guidance: 1.0,
        ..Default::default()
    };
    let (x, _) = sample(&run, &SampleOptions::default(), &req, &Silent).unwrap();
    x.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn a_stop_request_checkpoints_and_resuming_matches_one_run() {
    let tmp = std::env::temp_dir().join(format!("langevin-api-stop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let data = || Some(DataInput::Spec("toy:8-gaussians".into()));
    let stop = StopAfter {
        after: 7,
        seen: Cell::new(0),
    };
    match train(&opts(&tmp.join("a"), 20), data(), &stop) {
        Err(Error::Stopped { step, total, .. }) => assert_eq!((step, total), (7, 20)),
        other => panic!("expected a stop, got {:?}", other.map(|s| s.step)),
    }
    // No --steps on resume: the run keeps its own total (and learning-rate schedule).
    let resumed = TrainOptions {
        resume: true,
        steps: None,
        ..opts(&tmp.join("a"), 20)
    };
    assert_eq!(train(&resumed, None, &Silent).unwrap().step, 20);
    train(&opts(&tmp.join("b"), 20), data(), &Silent).unwrap();
    assert_eq!(draw(&tmp.join("a")), draw(&tmp.join("b")));
    // Training into an existing run without resume / overwrite is refused.
    let again = train(&opts(&tmp.join("b"), 30), data(), &Silent);
    assert!(matches!(&again, Err(e) if e.to_string().contains("already holds a run")));
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn choices_parse_once_into_typed_values() {
    use crate::model::Spacing;
    use crate::sampler::SamplerKind;
    let c: SamplerChoice = "DDIMScheduler".parse().unwrap();
    assert!(matches!(c, SamplerChoice::Diffusers(_)));
    assert_eq!(c.kind().unwrap(), SamplerKind::Ddim);
    let c: SamplerChoice = "unipc".parse().unwrap();
    assert_eq!(c, SamplerChoice::Ours(SamplerKind::UnipcBh2));
    assert!("nope".parse::<SamplerChoice>().is_err());
    assert_eq!(
        SpacingChoice::Auto.resolve(SamplerKind::Ddim),
        Spacing::Model
    );
    assert_eq!(
        SpacingChoice::Auto.resolve(SamplerKind::Heun),
        Spacing::Exponential
    );
    for k in ScheduleName::ALL {
        assert_eq!(k.name().parse::<ScheduleName>().unwrap(), k);
    }
    let continuous = ScheduleOptions {
        kind: ScheduleName::Edm,
        ..Default::default()
    };
    assert!(continuous.beta_schedule().is_err());
    assert!(continuous.noise_dist().is_ok());
}
