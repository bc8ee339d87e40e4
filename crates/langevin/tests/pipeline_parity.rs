//! diffusers' full sampling loop (UNet + scheduler) on a model folder saved by diffusers,
//! against fixtures from scripts/make_pipeline_fixtures.py: ≤ 1e-3 relative (max |Δ| / max |ref|).
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use langevin::data::npy::load_npy_f32;
use langevin::denoiser::Cond;
use langevin::model::pipeline::{diffusers_loop, folder_scheduler};
use langevin::model::Run;
use langevin::rng::NoiseSource;
use langevin::scheduler::SchedulerClass;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline")
}

fn npy(name: &str) -> Tensor {
    let (shape, v) = load_npy_f32(fixtures().join(name)).unwrap();
    Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap()
}

#[test]
fn diffusers_loops_match() {
    let run = Run::load(fixtures().join("model"), &Device::Cpu).unwrap();
    let z = npy("noise.npy");
    for (class, steps) in [
        ("DDIMScheduler", 10),
        ("EulerDiscreteScheduler", 10),
        ("DPMSolverMultistepScheduler", 8),
    ] {
        let want = npy(&format!("{class}-{steps}.npy"));
        let mut sched =
            folder_scheduler(&run.dir, SchedulerClass::parse(class).unwrap(), steps).unwrap();
        let mut noise = NoiseSource::consecutive(0, 2);
        let got = diffusers_loop(
            &mut sched,
            &run.denoiser.net,
            &z,
            &Cond::default(),
            &mut noise,
            &mut |_, _| {},
        )
        .unwrap();
        let err = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!(
            "{class} ({steps} steps): max relative error {:.2e}",
            err / scale
        );
        assert!(err / scale <= 1e-3, "{class}: {}", err / scale);
    }
}
