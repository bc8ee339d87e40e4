//! The channels-last (NHWC) CUDA kernels of `langevin::kernels::gpu_nhwc` against the
//! channel-first results of the same ops, on the GPU, in f32 and bf16 (part of
//! `langevin-bench --parity --device cuda`). A result that comes back in the wrong layout fails
//! its row.
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use langevin::kernels::gpu_nhwc::{
    cat_channels, gn_form, is_channels_last, pad_bottom_right, set_gn_form, to_channels_last,
    GnForm,
};
use langevin::kernels::{cudnn_conv, gpu, gpu_attention};

use crate::gpu_checks::{rel, Row};

/// `rel(got, want)`, or ∞ when `got` is not channels-last.
fn rel_cl(got: &Tensor, want: &Tensor) -> Result<f64> {
    match is_channels_last(got) || got.dims()[2..].iter().product::<usize>() == 1 {
        true => rel(got, want),
        false => Ok(f64::INFINITY),
    }
}

pub fn run(dev: &Device) -> Result<Vec<Row>> {
    let mut rows = vec![];
    let form0 = gn_form();
    for dt in [DType::F32, DType::BF16] {
        let name = dt.as_str();
        let bound = if dt == DType::F32 { 1e-5 } else { 2e-2 };
        for &(b, c, hw, g) in &[
            (3, 128, 32, 32), // ddpm-cifar10's first level
            (2, 256, 4, 32),
            (2, 64, 28, 32),  // a 28×28 map
            (5, 96, 7, 3),    // 32-channel groups
            (2, 16, 96, 2),   // 32-byte positions, a cluster of 8 blocks of 288 threads
            (1, 16, 256, 2),  // too large for registers: the three-pass kernel
            (2, 24, 8, 8),    // 3-channel groups: 3 vectors a position, one idle lane
            (2, 384, 16, 32), // 12-channel groups (ddpm-cifar10: a 256 + 128 concatenation)
            (2, 66, 8, 2),    // 33-channel groups: split form only (no one-kernel plan)
            (3, 512, 5, 32),  // split: 64 lanes × 4 rows, a partial last chunk
            (2, 24, 33, 8),   // split: 3 or 6 lanes a position, a partial last chunk
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?
                .affine(3.0, 2.0)?
                .to_dtype(dt)?;
            let xcl = to_channels_last(&x)?;
            let shift = Tensor::randn(0f32, 1.0, (b, c), dev)?.to_dtype(dt)?;
            let gamma = Tensor::randn(1f32, 0.3, c, dev)?.to_dtype(dt)?;
            let beta = Tensor::randn(0f32, 0.3, c, dev)?.to_dtype(dt)?;
            for (sh, silu) in [(None, false), (Some(&shift), true)] {
                let want = gpu::group_norm(&x, sh, &gamma, &beta, g, 1e-5, silu)?;
                for form in [GnForm::Split, GnForm::Registers] {
                    set_gn_form(form);
                    let got = gpu::group_norm(&xcl, sh, &gamma, &beta, g, 1e-5, silu)?;
                    rows.push((
                        format!(
                            "NHWC group norm ({form:?}) [{b},{c},{hw},{hw}] g{g}{} vs NCHW",
                            if silu { " + shift + SiLU" } else { "" }
                        ),
                        name,
                        rel_cl(&got, &want)?,
                        bound,
                    ));
                }
                set_gn_form(form0);
            }
            let bias = Tensor::randn(0f32, 1.0, c, dev)?.to_dtype(dt)?;
            let res = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?.to_dtype(dt)?;
            let want = gpu::bias_residual(&x, Some(&bias), Some(&res), 0.5)?;
            for (r, what) in [(res.clone(), "NCHW"), (to_channels_last(&res)?, "NHWC")] {
                let got = gpu::bias_residual(&xcl, Some(&bias), Some(&r), 0.5)?;
                rows.push((
                    format!("NHWC bias + residual ({what}) [{b},{c},{hw},{hw}] vs NCHW"),
                    name,
                    rel_cl(&got, &want)?,
                    bound,
                ));
            }
            let want = gpu::upsample2x(&x)?;
            rows.push((
                format!("NHWC upsample ×2 [{b},{c},{hw},{hw}] vs NCHW"),
                name,
                rel_cl(&gpu::upsample2x(&xcl)?, &want)?,
                0.0,
            ));
        }
        // Downsampling's bottom-right zeros: exact.
        for &(b, c, h, w) in &[(2, 128, 32, 32), (3, 12, 7, 5), (2, 3, 4, 4)] {
            let x = Tensor::randn(0f32, 1.0, (b, c, h, w), dev)?.to_dtype(dt)?;
            let want = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            let got = pad_bottom_right(&to_channels_last(&x)?, 1, 1)?;
            rows.push((
                format!("NHWC zero padding (0, 1, 0, 1) [{b},{c},{h},{w}] vs candle's"),
                name,
                rel_cl(&got, &want)?,
                0.0,
            ));
        }
        // The skip concatenation: exact, in vectors of 8, 4 or 1 channels.
        for &(b, ca, cb, hw) in &[(3, 256, 128, 16), (2, 12, 20, 7), (2, 3, 5, 4)] {
            let a = Tensor::randn(0f32, 1.0, (b, ca, hw, hw), dev)?.to_dtype(dt)?;
            let c = Tensor::randn(0f32, 1.0, (b, cb, hw, hw), dev)?.to_dtype(dt)?;
            let want = Tensor::cat(&[&a, &c], 1)?;
            let got = cat_channels(&to_channels_last(&a)?, &to_channels_last(&c)?)?;
            rows.push((
                format!("NHWC concatenation {ca} + {cb} on {hw}² vs candle's"),
                name,
                rel_cl(&got, &want)?,
                0.0,
            ));
        }
        for &(b, ci, co, hw, k, pad, stride) in &[
            (4, 128, 128, 32, 3, 1, 1),
            (3, 64, 96, 15, 3, 1, 2),
            (2, 256, 128, 8, 1, 0, 1),
            (2, 3, 64, 28, 3, 1, 1),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, ci, hw, hw), dev)?.to_dtype(dt)?;
            let w = (Tensor::randn(0f32, 1.0, (co, ci, k, k), dev)?
                / ((ci * k * k) as f64).sqrt())?
            .to_dtype(dt)?;
            let want = cudnn_conv::conv2d(&x, &w, pad, stride)?;
            let got = cudnn_conv::conv2d(&to_channels_last(&x)?, &w, pad, stride)?;
            rows.push((
                format!("NHWC cuDNN conv {ci}→{co} {k}×{k} s{stride} on {hw}² vs NCHW"),
                name,
                rel_cl(&got, &want)?,
                if dt == DType::F32 { 1e-5 } else { 1e-2 },
            ));
        }
        for &(b, heads, d, h, w) in &[(2, 4, 8, 16, 16), (3, 2, 16, 7, 11), (2, 1, 32, 5, 5)] {
            let c = heads * d;
            let r = |s: f64| -> Result<Tensor> {
                Ok((Tensor::randn(0f32, 1.0, (b, c, h, w), dev)? * s)?.to_dtype(dt)?)
            };
            let (q, k, v) = (r(2.0 / (d as f64).sqrt())?, r(1.0)?, r(1.0)?);
            let split = |t: &Tensor| t.reshape((b * heads, d, h * w));
            let want = gpu_attention::attention(&split(&q)?, &split(&k)?, &split(&v)?)?
                .reshape((b, c, h, w))?;
            let cl = |t: &Tensor| to_channels_last(t);
            let got = gpu_attention::attention_channels_last(&cl(&q)?, &cl(&k)?, &cl(&v)?, heads)?;
            rows.push((
                format!("NHWC fused attention {heads}×{d} on {h}×{w} vs channel-first"),
                name,
                rel_cl(&got, &want)?,
                bound,
            ));
        }
    }
    Ok(rows)
}
