//! The training kernels of `langevin::kernels::gpu_train` and the cuDNN convolution gradients
//! against references, on the GPU (part of `langevin-bench --parity --device cuda`):
//! gradients against candle's composed ops differentiated by autograd, and the fused AdamW /
//! EMA / gradient norm against the composed per-tensor AdamW run on the CPU from the same
//! state.
use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use langevin::kernels::{conv, gpu_train};
use langevin::train::adamw::{AdamW, AdamWConfig};
use langevin::train::ema::Ema;

use crate::gpu_checks::{rel, Row};

/// Value and gradients of `f(inputs)·r` summed (a random projection of the output, so every
/// output element's gradient is exercised).
fn grads(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    r: &Tensor,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let loss = (y.to_dtype(DType::F32)? * r)?.sum_all()?;
    let g = loss.backward()?;
    let gs = ts
        .iter()
        .map(|t| {
            g.get(t)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no gradient"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((y, gs))
}

pub fn run(dev: &Device) -> Result<Vec<Row>> {
    let mut rows = vec![];
    for dt in [DType::F32, DType::BF16] {
        let name = dt.as_str();
        let bound = if dt == DType::F32 { 1e-4 } else { 3e-2 };
        // Group norm + shift + SiLU: forward and the four gradients.
        // The last shape is too large for the register-resident backward (three-pass form).
        for &(b, c, hw, g) in &[
            (3, 64, 16, 32),
            (2, 256, 4, 32),
            (5, 96, 7, 3),
            (2, 32, 64, 4),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?
                .affine(3.0, 2.0)?
                .to_dtype(dt)?;
            let shift = Tensor::randn(0f32, 1.0, (b, c), dev)?.to_dtype(dt)?;
            let gamma = Tensor::randn(1f32, 0.3, c, dev)?.to_dtype(dt)?;
            let beta = Tensor::randn(0f32, 0.3, c, dev)?.to_dtype(dt)?;
            let r = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?;
            let inputs = [x, shift, gamma, beta];
            let (got, gg) = grads(
                &inputs,
                |t| {
                    let affine = Tensor::stack(&[&t[2], &t[3]], 0)?;
                    gpu_train::group_norm(&t[0], &t[1], &affine, g, 1e-5, true)
                },
                &r,
            )?;
            // Reference: candle's composition in f32 from the same (rounded) inputs.
            let f32s: Vec<Tensor> = inputs
                .iter()
                .map(|t| t.to_dtype(DType::F32))
                .collect::<candle_core::Result<_>>()?;
            let (want, wg) = grads(
                &f32s,
                |t| {
                    let xs = t[0].broadcast_add(&t[1].reshape((b, c, 1, 1))?)?;
                    let gn = candle_nn::GroupNorm::new(t[2].clone(), t[3].clone(), c, g, 1e-5)?;
                    candle_core::Module::forward(&gn, &xs)?.silu()
                },
                &r,
            )?;
            let what = format!("train group norm + shift + SiLU [{b},{c},{hw},{hw}] g{g}");
            rows.push((format!("{what}: y"), name, rel(&got, &want)?, bound));
            for (i, n) in ["dx", "dshift", "dγ", "dβ"].iter().enumerate() {
                rows.push((format!("{what}: {n}"), name, rel(&gg[i], &wg[i])?, bound));
            }
        }
        // The training epilogue (bias + residual + scale) and its three gradients.
        for &(b, c, hw) in &[(3, 64, 16), (2, 256, 4)] {
            let y = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?.to_dtype(dt)?;
            let bias = Tensor::randn(0f32, 1.0, c, dev)?.to_dtype(dt)?;
            let res = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?.to_dtype(dt)?;
            let r = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?;
            let inputs = [y, bias, res];
            let (got, gg) = grads(
                &inputs,
                |t| gpu_train::bias_residual(&t[0], &t[1], Some(&t[2]), 0.5),
                &r,
            )?;
            let f32s: Vec<Tensor> = inputs
                .iter()
                .map(|t| t.to_dtype(DType::F32))
                .collect::<candle_core::Result<_>>()?;
            let (want, wg) = grads(
                &f32s,
                |t| (t[0].broadcast_add(&t[1].reshape((1, c, 1, 1))?)? + &t[2])? * 0.5,
                &r,
            )?;
            let what = format!("train bias + residual [{b},{c},{hw},{hw}]");
            rows.push((format!("{what}: y"), name, rel(&got, &want)?, bound));
            for (i, n) in ["dy", "dbias", "dresidual"].iter().enumerate() {
                rows.push((format!("{what}: {n}"), name, rel(&gg[i], &wg[i])?, bound));
            }
        }
        // cuDNN convolution gradients against the GEMM form differentiated by candle.
        if cfg!(feature = "cudnn") {
            for &(b, c, o, hw, k, p, s) in &[
                (4, 32, 64, 16, 3, 1, 1),
                (2, 64, 64, 16, 3, 1, 2),
                (3, 48, 16, 8, 1, 0, 1),
            ] {
                let x = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?.to_dtype(dt)?;
                let w = (Tensor::randn(0f32, 1.0, (o, c, k, k), dev)?
                    / ((c * k * k) as f64).sqrt())?
                .to_dtype(dt)?;
                let ho = (hw + 2 * p - k) / s + 1;
                let r = Tensor::randn(0f32, 1.0, (b, o, ho, ho), dev)?;
                let inputs = [x, w];
                let (got, gg) = grads(&inputs, |t| conv::conv2d(&t[0], &t[1], None, s, p), &r)?;
                let f32s: Vec<Tensor> = inputs
                    .iter()
                    .map(|t| t.to_dtype(DType::F32))
                    .collect::<candle_core::Result<_>>()?;
                let (want, wg) = grads(&f32s, |t| conv::conv2d_gemm(&t[0], &t[1], None, s, p), &r)?;
                let what = format!("cuDNN conv {k}×{k}/s{s} [{b},{c},{hw},{hw}]→{o}");
                rows.push((format!("{what}: y"), name, rel(&got, &want)?, bound));
                rows.push((format!("{what}: dx"), name, rel(&gg[0], &wg[0])?, bound));
                rows.push((format!("{what}: dw"), name, rel(&gg[1], &wg[1])?, bound));
            }
        }
    }
    rows.extend(optimiser(dev)?);
    rows.extend(graphed_training(dev)?);
    Ok(rows)
}

/// The trainer's step through its captured CUDA graph (forward + backward replayed from the
/// second step on) against the eager step: a small attention UNet, f32 and bf16 mixed
/// precision, five steps from the same seed. The same kernels run on the same buffers, so the
/// weights agree to the bit (up to cuDNN gradient algorithms that add with atomics); a run
/// whose graph never replayed fails its row (∞).
fn graphed_training(dev: &Device) -> Result<Vec<Row>> {
    use langevin::kernels::cuda_graph;
    use langevin::model::{DataInfo, Diffusion, NetworkConfig, RunConfig};
    use langevin::nn::unet::UNet2DConfig;
    use langevin::train::{TrainConfig, TrainData, Trainer};
    let json = r#"{"sample_size": 16, "in_channels": 1, "out_channels": 1,
        "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}"#;
    let unet = UNet2DConfig::from_json(json, std::path::Path::new("graph-check"))?;
    let run = RunConfig {
        network: NetworkConfig::Unet(unet),
        diffusion: Diffusion::default(),
        data: DataInfo::default(),
    };
    let cfg = TrainConfig {
        batch_size: 16,
        lr: 1e-3,
        warmup_steps: 1,
        ..Default::default()
    };
    let x = Tensor::randn(0f32, 1.0, (64, 1, 16, 16), dev)?;
    let data = TrainData::unlabelled(x);
    let mut rows = vec![];
    for dt in [DType::F32, DType::BF16] {
        let mut runs = vec![];
        for graphs in [false, true, false] {
            cuda_graph::set_enabled(graphs);
            let mut t = Trainer::new(run.clone(), cfg.clone(), dev)?;
            t.set_compute_dtype(dt)?;
            let mut losses = vec![];
            for _ in 0..5 {
                losses.push(t.train_step(&data)?.loss);
            }
            let replays = t.graph_stats().map_or(0, |s| s.replays);
            let w: Vec<Tensor> = t
                .parameters()
                .map(|(_, w)| w.flatten_all())
                .collect::<candle_core::Result<_>>()?;
            runs.push((Tensor::cat(&w, 0)?, replays, losses));
        }
        let (eager, graphed) = (&runs[0], &runs[1]);
        rows.push((
            "training step, eager vs eager (determinism): weights".into(),
            dt.as_str(),
            rel(&runs[2].0, &eager.0)?,
            if dt == DType::F32 { 1e-5 } else { 1e-2 },
        ));
        let worst = (graphed.2.iter().zip(&eager.2))
            .map(|(g, e)| (g - e).abs() / e.abs().max(1e-12))
            .fold(0f64, f64::max);
        rows.push((
            "training step as a CUDA graph vs eager: the 5 losses".into(),
            dt.as_str(),
            worst,
            if dt == DType::F32 { 1e-5 } else { 1e-2 },
        ));
        let err = match graphed.1 >= 3 && eager.1 == 0 {
            true => rel(&graphed.0, &eager.0)?,
            false => f64::INFINITY,
        };
        rows.push((
            format!(
                "training step as a CUDA graph (5 steps, {} replays) vs eager: weights",
                graphed.1
            ),
            dt.as_str(),
            err,
            // Equal bits unless cuDNN picked a gradient algorithm that adds with atomics.
            if dt == DType::F32 { 1e-5 } else { 1e-2 },
        ));
    }
    cuda_graph::set_enabled(true);
    Ok(rows)
}

/// Five steps of the fused AdamW (+ gradient norm, EMA) on the GPU against the composed
/// AdamW on the CPU from the same weights and gradients; and the bf16-shadow variant.
fn optimiser(dev: &Device) -> Result<Vec<Row>> {
    let cpu = Device::Cpu;
    let shapes: [&[usize]; 4] = [&[64, 32, 3, 3], &[64], &[300, 7], &[40000]];
    let init: Vec<Tensor> = shapes
        .iter()
        .map(|s| Tensor::randn(0f32, 1.0, *s, &cpu))
        .collect::<candle_core::Result<_>>()?;
    let mk = |d: &Device| -> Result<Vec<(String, Var)>> {
        init.iter()
            .enumerate()
            .map(|(i, t)| Ok((format!("p{i}"), Var::from_tensor(&t.to_device(d)?.copy()?)?)))
            .collect()
    };
    let cfg = AdamWConfig {
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut rows = vec![];
    for shadow in [false, true] {
        let (gv, cv) = (mk(dev)?, mk(&cpu)?);
        let (mut go, mut co) = (AdamW::new(gv.clone(), cfg)?, AdamW::new(cv.clone(), cfg)?);
        let (mut ge, mut ce) = (Ema::new(&gv, 0.99)?, Ema::new(&cv, 0.99)?);
        let shadows = if shadow {
            let s: Vec<Var> = gv
                .iter()
                .map(|(_, v)| Var::from_tensor(&v.as_tensor().to_dtype(DType::BF16)?))
                .collect::<candle_core::Result<_>>()?;
            go.set_shadows(s.clone())?;
            Some(s)
        } else {
            None
        };
        let (mut norm_g, mut norm_c) = (0.0, 0.0);
        for step in 0..5 {
            // The loss Σ θ²·c_i with per-tensor weights c: the same gradients on both sides.
            let loss = |vars: &[Tensor]| -> candle_core::Result<Tensor> {
                let mut l = Tensor::zeros((), DType::F32, vars[0].device())?;
                for (i, v) in vars.iter().enumerate() {
                    let v = v.to_dtype(DType::F32)?;
                    l = (l + (v.sqr()?.sum_all()? * (i + 1 + step) as f64)?)?;
                }
                Ok(l)
            };
            let gt: Vec<Tensor> = match &shadows {
                Some(s) => s.iter().map(|v| v.as_tensor().clone()).collect(),
                None => gv.iter().map(|(_, v)| v.as_tensor().clone()).collect(),
            };
            let ct: Vec<Tensor> = cv.iter().map(|(_, v)| v.as_tensor().clone()).collect();
            let (gg, cg) = (loss(&gt)?.backward()?, loss(&ct)?.backward()?);
            norm_g = go.grad_norm(&gg)?;
            norm_c = co.grad_norm(&cg)?;
            let scale = if norm_c > 50.0 { 50.0 / norm_c } else { 1.0 };
            go.step(&gg, 1e-2, scale)?;
            co.step(&cg, 1e-2, scale)?;
            ge.update(&gv, go.t)?;
            ce.update(&cv, co.t)?;
        }
        let tag = if shadow { " (bf16 shadows)" } else { "" };
        // bf16 gradients round the weights' gradient to 8 bits: a looser bound.
        let bound = if shadow { 2e-2 } else { 1e-5 };
        let mut worst = [0f64; 3];
        for i in 0..shapes.len() {
            worst[0] = worst[0].max(rel(gv[i].1.as_tensor(), cv[i].1.as_tensor())?);
            worst[1] = worst[1].max(rel(&go.params[i].3, &co.params[i].3)?);
            worst[2] = worst[2].max(rel(&ge.weights[i].1, &ce.weights[i].1)?);
        }
        rows.push((
            format!("fused AdamW, 5 steps{tag}: weights"),
            "f32",
            worst[0],
            bound,
        ));
        rows.push((
            format!("fused AdamW, 5 steps{tag}: second moments"),
            "f32",
            worst[1],
            bound * 10.0,
        ));
        rows.push((format!("fused EMA, 5 steps{tag}"), "f32", worst[2], bound));
        rows.push((
            format!("fused gradient norm{tag}"),
            "f32",
            (norm_g - norm_c).abs() / norm_c,
            bound,
        ));
        if let Some(s) = &shadows {
            let mut w = 0f64;
            for (sv, (_, v)) in s.iter().zip(&gv) {
                w = w.max(rel(sv.as_tensor(), v.as_tensor())?);
            }
            rows.push((
                "bf16 shadows follow the f32 weights".into(),
                "bf16",
                w,
                4e-3,
            ));
        }
    }
    Ok(rows)
}
