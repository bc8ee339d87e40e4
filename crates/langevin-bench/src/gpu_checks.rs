//! The fused CUDA kernels of `langevin::kernels::gpu` against the composed candle ops they
//! replace, on the GPU, in f32 and bf16 (part of `langevin-bench --parity --device cuda`).
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use langevin::denoiser::Cond;
use langevin::kernels::gpu;
use langevin::model::net::Net;
use langevin::nn::unet::UNet2DModel;
use langevin::nn::Network;

/// One row per check: (what, dtype, max relative error, bound).
pub type Row = (String, &'static str, f64, f64);

/// max |a − b| / max |b|, on the CPU in f64 (so `a` and `b` may live on different devices).
pub fn rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let d = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let m = b.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(d / m.max(1e-30))
}

/// Group norm (with and without the time shift and SiLU, small and large groups), the bias +
/// residual epilogue and ×2 upsampling, each against candle's composition of the same op on
/// the same device.
pub fn run(dev: &Device) -> Result<Vec<Row>> {
    let mut rows = vec![];
    for dt in [DType::F32, DType::BF16] {
        let name = dt.as_str();
        let bound = if dt == DType::F32 { 1e-5 } else { 2e-2 };
        for &(b, c, hw, g) in &[
            (3, 64, 16, 32),
            (2, 256, 4, 32),
            (2, 32, 64, 8),
            (5, 96, 7, 3),
            (2, 16, 96, 2), // a group too large for the register-resident kernel
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?
                .affine(3.0, 2.0)?
                .to_dtype(dt)?;
            let shift = Tensor::randn(0f32, 1.0, (b, c), dev)?.to_dtype(dt)?;
            let gamma = Tensor::randn(1f32, 0.3, c, dev)?.to_dtype(dt)?;
            let beta = Tensor::randn(0f32, 0.3, c, dev)?.to_dtype(dt)?;
            for (sh, silu) in [(None, false), (Some(&shift), true)] {
                let got = gpu::group_norm(&x, sh, &gamma, &beta, g, 1e-5, silu)?;
                // Reference in f32 from the same (rounded) inputs.
                let f = |t: &Tensor| t.to_dtype(DType::F32);
                let xs = match sh {
                    Some(s) => f(&x)?.broadcast_add(&f(s)?.reshape((b, c, 1, 1))?)?,
                    None => f(&x)?,
                };
                let gn = candle_nn::GroupNorm::new(f(&gamma)?, f(&beta)?, c, g, 1e-5)?;
                let mut want = candle_core::Module::forward(&gn, &xs)?;
                if silu {
                    want = want.silu()?;
                }
                rows.push((
                    format!(
                        "fused group norm [{b},{c},{hw},{hw}] g{g}{}",
                        if silu { " + shift + SiLU" } else { "" }
                    ),
                    name,
                    rel(&got, &want)?,
                    bound,
                ));
            }
            let bias = Tensor::randn(0f32, 1.0, c, dev)?.to_dtype(dt)?;
            let res = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?.to_dtype(dt)?;
            let got = gpu::bias_residual(&x, Some(&bias), Some(&res), 0.5)?;
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let want =
                ((f(&x)?.broadcast_add(&f(&bias)?.reshape((1, c, 1, 1))?)? + f(&res)?)? * 0.5)?;
            rows.push((
                format!("fused bias + residual [{b},{c},{hw},{hw}]"),
                name,
                rel(&got, &want)?,
                bound,
            ));
            // A view whose data starts one element into its buffer: no vector access.
            let n = x.elem_count();
            let shifted = Tensor::cat(&[&x.flatten_all()?.narrow(0, 0, 1)?, &x.flatten_all()?], 0)?
                .narrow(0, 1, n)?
                .reshape(x.dims())?;
            let got = gpu::bias_residual(&shifted, Some(&bias), Some(&res), 0.5)?;
            rows.push((
                format!("fused bias + residual [{b},{c},{hw},{hw}], unaligned view"),
                name,
                rel(&got, &want)?,
                bound,
            ));
            let got = gpu::upsample2x(&x)?;
            let want = x.upsample_nearest2d(2 * hw, 2 * hw)?;
            rows.push((
                format!("upsample ×2 [{b},{c},{hw},{hw}]"),
                name,
                rel(&got, &want)?,
                0.0,
            ));
        }
    }
    rows.extend(attention_rows(dev)?);
    Ok(rows)
}

/// The fused small-head attention against softmax(qᵀk)·vᵀ composed from candle's ops, for
/// each compiled head size, with N not a multiple of the kernel's tiles, large logits (the
/// online softmax's rescaling) and bf16 inputs rounded before the reference.
fn attention_rows(dev: &Device) -> Result<Vec<Row>> {
    use langevin::kernels::gpu_attention::{attention, attention_reference, supported};
    let mut rows = vec![];
    for dt in [DType::F32, DType::BF16] {
        let bound = if dt == DType::F32 { 1e-5 } else { 2e-2 };
        for &(bh, d, n, scale) in &[
            (64, 8, 256, 1.0),
            (6, 16, 77, 4.0),
            (5, 32, 1024, 0.5),
            (3, 8, 5, 8.0),
        ] {
            let r = |s: f64| -> Result<Tensor> {
                Ok((Tensor::randn(0f32, 1.0, (bh, d, n), dev)? * s)?.to_dtype(dt)?)
            };
            let (q, k, v) = (r(scale / (d as f64).sqrt())?, r(1.0)?, r(1.0)?);
            if !supported(&q, d) {
                continue;
            }
            let got = attention(&q, &k, &v)?;
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let want = attention_reference(&f(&q)?, &f(&k)?, &f(&v)?)?;
            rows.push((
                format!("fused attention [{bh}·{d}·{n}], logit scale {scale}"),
                dt.as_str(),
                rel(&got, &want)?,
                bound,
            ));
        }
    }
    Ok(rows)
}

/// The UNet replayed as a CUDA graph against its eager forward on three different inputs (the
/// first call captures, the next two replay): bit-identical, or the row fails. Also fails when
/// the calls did not replay.
pub fn graph_replay(
    m: UNet2DModel,
    x: &Tensor,
    t: &Tensor,
    labels: Option<Tensor>,
    name: &str,
) -> Result<Row> {
    let dt = x.dtype();
    let eager = |m: &UNet2DModel, x: &Tensor| m.forward_diffusers(x, t, labels.as_ref());
    let inputs = [x.clone(), (x * 0.5)?, x.neg()?];
    let want = (inputs.iter())
        .map(|x| eager(&m, x))
        .collect::<langevin::Result<Vec<_>>>()?;
    let net = Net::Unet(m).graphed();
    let cond = Cond {
        labels: labels.clone(),
        image: None,
    };
    let mut worst = 0f64;
    for (x, w) in inputs.iter().zip(&want) {
        let got = net.forward(x, t, &cond)?;
        worst = worst.max(rel(&got, w)?);
    }
    let s = net.graph_stats().unwrap_or_default();
    if (s.captured, s.replays) != (1, 2) {
        worst = f64::INFINITY;
    }
    Ok((
        format!("UNet2DModel {name}: CUDA graph replays vs eager ({s:?})"),
        dt.as_str(),
        worst,
        0.0,
    ))
}
