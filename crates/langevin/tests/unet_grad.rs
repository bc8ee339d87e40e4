//! Backward through every UNet module: the gradient of a scalar loss w.r.t. every parameter
//! and the input matches central finite differences along a random direction, in f64.
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use langevin::denoiser::Cond;
use langevin::nn::unet::{UNet2DConfig, UNet2DModel};
use langevin::nn::Network;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn config(json: &str) -> UNet2DConfig {
    UNet2DConfig::from_json(json, std::path::Path::new("config.json")).unwrap()
}

/// Seeded N(0, 1) draws (candle's own generator cannot be seeded).
fn randn(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Redraw every parameter from `rng`: weights N(0, 1/fan_in), biases and norm shifts
/// N(0, 0.1²), norm scales 1 + N(0, 0.2²), so that no parameter sits at a special value.
fn seeded_params(vars: &[(String, Var)], rng: &mut ChaCha8Rng) {
    for (name, v) in vars {
        let z = randn(v.dims(), rng);
        let t = if name == "time_proj.weight" {
            (z * 16.0).unwrap()
        } else if name.contains("norm") && name.ends_with("weight") {
            ((z * 0.2).unwrap() + 1.0).unwrap()
        } else if v.rank() >= 2 {
            let fan_in: usize = v.dims()[1..].iter().product();
            (z / (fan_in as f64).sqrt()).unwrap()
        } else {
            (z * 0.1).unwrap()
        };
        v.set(&t).unwrap();
    }
}

/// Checks ⟨∇L, d⟩ against (L(θ+εd) − L(θ−εd))/2ε for every parameter and the input.
fn check(cfg: UNet2DConfig, t: &[f64], labels: Option<&[u32]>, seed: u64) {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F64, &dev);
    let model = UNet2DModel::new(cfg.clone(), vb).unwrap();
    let mut vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    seeded_params(&vars, &mut rng);
    let b = t.len();
    let x = Var::from_tensor(&randn(&[b, cfg.in_channels, 4, 4], &mut rng)).unwrap();
    let t = Tensor::new(t, &dev).unwrap();
    let cond = Cond {
        labels: labels.map(|l| Tensor::new(l, &dev).unwrap()),
        image: None,
    };
    let r = randn(&[b, cfg.out_channels, 4, 4], &mut rng);
    let loss = || -> f64 {
        let y = model.forward(x.as_tensor(), &t, &cond).unwrap();
        (y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let y = model.forward(x.as_tensor(), &t, &cond).unwrap();
    let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();

    vars.push(("input x".into(), x.clone()));
    let eps = 1e-5;
    let mut worst = 0f64;
    for (name, v) in &vars {
        let Some(g) = grads.get(v.as_tensor()) else {
            assert_eq!(name, "time_proj.weight", "no gradient for {name}");
            continue;
        };
        let d = randn(v.dims(), &mut rng);
        let analytic = (g * &d)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let orig = v.as_tensor().copy().unwrap();
        v.set(&(&orig + (&d * eps).unwrap()).unwrap()).unwrap();
        let lp = loss();
        v.set(&(&orig - (&d * eps).unwrap()).unwrap()).unwrap();
        let lm = loss();
        v.set(&orig).unwrap();
        let numeric = (lp - lm) / (2.0 * eps);
        let err = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-3);
        worst = worst.max(err);
        assert!(
            err < 1e-5,
            "{name}: analytic {analytic:.9e} vs finite differences {numeric:.9e}"
        );
    }
    println!(
        "{} tensors checked, worst relative error {worst:.2e}",
        vars.len()
    );
}

#[test]
fn unet_gradients_match_finite_differences_attention_and_class_table() {
    let cfg = config(
        r#"{"in_channels": 2, "out_channels": 2, "block_out_channels": [4, 8],
            "norm_num_groups": 2, "layers_per_block": 1, "attention_head_dim": 4,
            "down_block_types": ["AttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "AttnUpBlock2D"],
            "num_class_embeds": 3, "center_input_sample": true}"#,
    );
    check(cfg, &[5.0, 700.0], Some(&[2, 0]), 1);
}

#[test]
fn unet_gradients_match_finite_differences_fourier_scale_shift() {
    let cfg = config(
        r#"{"in_channels": 1, "out_channels": 1, "block_out_channels": [4, 8],
            "norm_num_groups": 2, "layers_per_block": 1, "attention_head_dim": null,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "time_embedding_type": "fourier", "resnet_time_scale_shift": "scale_shift",
            "mid_block_scale_factor": 1.4142135623730951, "downsample_padding": 0,
            "class_embed_type": "timestep", "act_fn": "mish"}"#,
    );
    check(cfg, &[0.3, 4.0], Some(&[1, 3]), 2);
}
