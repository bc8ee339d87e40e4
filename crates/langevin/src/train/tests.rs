//! Tests of the trainer: losses, resume, mixed precision.
use super::*;
use crate::model::{DataInfo, Diffusion, NetworkConfig};
use crate::nn::mlp::MlpConfig;
use crate::rng::NoiseSource;

fn run_config() -> RunConfig {
    RunConfig {
        network: NetworkConfig::Mlp(MlpConfig {
            in_dim: 2,
            hidden: 32,
            blocks: 2,
            temb_dim: 16,
        }),
        diffusion: Diffusion::default(),
        data: DataInfo::default(),
    }
}

fn data() -> TrainData {
    let mut n = NoiseSource::consecutive(7, 256);
    TrainData::unlabelled(n.randn(&[256, 2], &Device::Cpu).unwrap())
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("langevin-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn lr_schedule_warms_up_then_decays() {
    let c = TrainConfig {
        steps: 1000,
        warmup_steps: 100,
        lr: 1.0,
        min_lr_ratio: 0.1,
        ..Default::default()
    };
    assert!((c.lr_at(0) - 0.01).abs() < 1e-12);
    assert!((c.lr_at(99) - 1.0).abs() < 1e-12);
    assert!((c.lr_at(550) - 0.55).abs() < 1e-12);
    assert!((c.lr_at(1000) - 0.1).abs() < 1e-12);
}

#[test]
fn loss_decreases_on_gaussian_data() {
    let cfg = TrainConfig {
        steps: 300,
        batch_size: 128,
        lr: 3e-3,
        warmup_steps: 10,
        ..Default::default()
    };
    let mut t = Trainer::new(run_config(), cfg, &Device::Cpu).unwrap();
    let d = data();
    for _ in 0..300 {
        t.train_step(&d).unwrap();
    }
    let first: f64 = t.losses[..30].iter().map(|l| l.1).sum::<f64>() / 30.0;
    let last: f64 = t.losses[270..].iter().map(|l| l.1).sum::<f64>() / 30.0;
    // The output layer starts at 0, so the first loss is E‖ε‖²/d = 1.
    assert!(
        (t.losses[0].1 - 1.0).abs() < 0.3,
        "first loss {}",
        t.losses[0].1
    );
    assert!(last < 0.8 * first, "loss {first} -> {last}");
}

#[test]
fn resume_is_bit_identical() {
    let cfg = TrainConfig {
        steps: 20,
        batch_size: 64,
        warmup_steps: 5,
        ..Default::default()
    };
    let d = data();
    let mut straight = Trainer::new(run_config(), cfg.clone(), &Device::Cpu).unwrap();
    for _ in 0..20 {
        straight.train_step(&d).unwrap();
    }
    let dir = tmpdir("resume");
    let mut first = Trainer::new(run_config(), cfg, &Device::Cpu).unwrap();
    for _ in 0..10 {
        first.train_step(&d).unwrap();
    }
    first.save(&dir).unwrap();
    let mut resumed = Trainer::resume(&dir, None, &Device::Cpu).unwrap();
    assert_eq!(resumed.step(), 10);
    for _ in 0..10 {
        resumed.train_step(&d).unwrap();
    }
    assert_eq!(straight.losses, resumed.losses);
    for ((n, a), (_, b)) in straight.ema.weights.iter().zip(&resumed.ema.weights) {
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{n}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn saved_run_loads_and_denoises_like_the_trainer() {
    let cfg = TrainConfig {
        steps: 5,
        batch_size: 32,
        ..Default::default()
    };
    let mut t = Trainer::new(run_config(), cfg, &Device::Cpu).unwrap();
    let d = data();
    for _ in 0..5 {
        t.train_step(&d).unwrap();
    }
    let dir = tmpdir("load");
    t.save(&dir).unwrap();
    let run = crate::model::Run::load(&dir, &Device::Cpu).unwrap();
    use crate::denoiser::Denoiser;
    let x = d.x.narrow(0, 0, 8).unwrap();
    let a = run.denoiser.denoise(&x, 2.0, &Cond::default()).unwrap();
    let b = t
        .ema_denoiser()
        .unwrap()
        .denoise(&x, 2.0, &Cond::default())
        .unwrap();
    assert_eq!(
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    let sched: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scheduler_config.json")).unwrap())
            .unwrap();
    assert_eq!(sched["_class_name"], "DDPMScheduler");
    assert_eq!(sched["beta_schedule"], "linear");
    assert_eq!(sched["num_train_timesteps"], 1000);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Mixed precision: with the network computed in another dtype over shadow copies of the
/// weights, the gradients still update the f32 variables (and the shadows follow them), and
/// training follows the f32 run. f64 stands in for bf16 here (the CPU has no bf16 matmul):
/// the shadow path is the same, and the two runs must agree to f32 rounding, while shadows
/// that were not refreshed, or gradients that did not reach the f32 weights, would not.
#[test]
fn compute_dtype_trains_the_f32_weights() {
    let cfg = TrainConfig {
        steps: 20,
        batch_size: 64,
        lr: 3e-3,
        warmup_steps: 1,
        ..Default::default()
    };
    let d = data();
    let mut a = Trainer::new(run_config(), cfg.clone(), &Device::Cpu).unwrap();
    let mut b = Trainer::new(run_config(), cfg, &Device::Cpu).unwrap();
    b.set_compute_dtype(DType::F64).unwrap();
    let before: Vec<f32> = b.vars[0].1.flatten_all().unwrap().to_vec1().unwrap();
    for _ in 0..20 {
        let (ra, rb) = (a.train_step(&d).unwrap(), b.train_step(&d).unwrap());
        assert!(
            (ra.loss - rb.loss).abs() <= 1e-4 * ra.loss.abs().max(1e-3),
            "{} vs {}",
            ra.loss,
            rb.loss
        );
    }
    for ((name, va), (_, vb)) in a.vars.iter().zip(&b.vars) {
        assert_eq!(vb.dtype(), DType::F32, "{name}: master weights stay f32");
        let (x, y): (Vec<f32>, Vec<f32>) = (
            va.flatten_all().unwrap().to_vec1().unwrap(),
            vb.flatten_all().unwrap().to_vec1().unwrap(),
        );
        let diff = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 1e-4,
            "{name}: f32 and f64-compute weights differ by {diff}"
        );
    }
    let after: Vec<f32> = b.vars[0].1.flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        before != after,
        "the f64-compute run did not update the f32 weights"
    );
}

/// Two trainers built from the same configuration in one process take the same steps: the
/// seed alone decides the weights (a small attention UNet; the GPU parity run compares the
/// same on CUDA, eager against graphed).
#[test]
fn two_trainers_with_one_seed_agree() {
    use crate::nn::unet::UNet2DConfig;
    let json = r#"{"sample_size": 8, "in_channels": 1, "out_channels": 1,
        "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}"#;
    let unet = UNet2DConfig::from_json(json, std::path::Path::new("t")).unwrap();
    let run = RunConfig {
        network: NetworkConfig::Unet(unet),
        diffusion: Diffusion::default(),
        data: DataInfo::default(),
    };
    let cfg = TrainConfig {
        batch_size: 4,
        lr: 1e-3,
        warmup_steps: 1,
        ..Default::default()
    };
    let mut n = NoiseSource::consecutive(3, 16);
    let data = TrainData::unlabelled(n.randn(&[16, 1, 8, 8], &Device::Cpu).unwrap());
    let weights = |t: &Trainer| -> Vec<f32> {
        t.parameters()
            .flat_map(|(_, w)| w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    let mut runs = vec![];
    for _ in 0..2 {
        let mut t = Trainer::new(run.clone(), cfg.clone(), &Device::Cpu).unwrap();
        let losses: Vec<f64> = (0..3).map(|_| t.train_step(&data).unwrap().loss).collect();
        runs.push((losses, weights(&t)));
    }
    assert_eq!(runs[0].0, runs[1].0);
    assert!(runs[0].1 == runs[1].1);
}
