//! A residual MLP noise-conditional network for 2-D and tabular data.
use candle_core::{Module, Tensor};
use candle_nn::{linear, Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::embedding::timestep_embedding;
use super::Network;
use crate::cond::Cond;
use crate::kernels::{self, mlp::MlpDims};
use crate::Result;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Data dimension (columns).
    pub in_dim: usize,
    pub hidden: usize,
    pub blocks: usize,
    /// Width of the sinusoidal embedding of c_noise.
    pub temb_dim: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            in_dim: 2,
            hidden: 256,
            blocks: 4,
            temb_dim: 128,
        }
    }
}

struct Block {
    lin1: Linear,
    temb: Linear,
    lin2: Linear,
}

/// `in_proj → blocks × (h + W₂·silu(W₁·silu(h) + W_t·silu(e))) → out_proj`, where e is the
/// embedded noise level. The output layer starts at zero, so training starts from F = 0.
pub struct Mlp {
    pub config: MlpConfig,
    time1: Linear,
    time2: Linear,
    in_proj: Linear,
    blocks: Vec<Block>,
    out_proj: Linear,
}

fn zero_linear(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((o, i), "weight", Init::Const(0.0))?;
    let b = vb.get_with_hints(o, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

impl Mlp {
    /// Build (initialise or load) from `vb`; parameter names are `in_proj.weight`,
    /// `blocks.0.lin1.weight`, … .
    pub fn new(config: MlpConfig, vb: VarBuilder) -> Result<Self> {
        let h = config.hidden;
        let blocks = (0..config.blocks)
            .map(|i| {
                let vb = vb.pp("blocks").pp(i);
                Ok(Block {
                    lin1: linear(h, h, vb.pp("lin1"))?,
                    temb: linear(h, h, vb.pp("temb"))?,
                    lin2: linear(h, h, vb.pp("lin2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            time1: linear(config.temb_dim, h, vb.pp("time_mlp.0"))?,
            time2: linear(h, h, vb.pp("time_mlp.2"))?,
            in_proj: linear(config.in_dim, h, vb.pp("in_proj"))?,
            out_proj: zero_linear(h, config.in_dim, vb.pp("out_proj"))?,
            blocks,
            config,
        })
    }
}

impl Mlp {
    /// Every weight and bias flattened and concatenated in the order of
    /// [`kernels::mlp::residual_mlp`] (differentiable: its gradient flows back to each).
    fn packed(&self) -> Result<Tensor> {
        let mut lins = vec![&self.time1, &self.time2, &self.in_proj];
        for b in &self.blocks {
            lins.extend([&b.lin1, &b.temb, &b.lin2]);
        }
        lins.push(&self.out_proj);
        let mut parts = Vec::with_capacity(2 * lins.len());
        for l in lins {
            parts.push(l.weight().flatten_all()?);
            if let Some(b) = l.bias() {
                parts.push(b.flatten_all()?);
            }
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The same function from candle's ops (the reference for the fused kernel, and the path
    /// on GPUs).
    pub fn forward_composed(&self, x: &Tensor, e: &Tensor) -> Result<Tensor> {
        let e = self
            .time2
            .forward(&self.time1.forward(&e)?.silu()?)?
            .silu()?;
        let mut h = self.in_proj.forward(x)?;
        for b in &self.blocks {
            let u = (b.lin1.forward(&h.silu()?)? + b.temb.forward(&e)?)?;
            h = (h + b.lin2.forward(&u.silu()?)?)?;
        }
        Ok(self.out_proj.forward(&h.silu()?)?)
    }
}

impl Network for Mlp {
    fn forward(&self, x: &Tensor, c_noise: &Tensor, _cond: &Cond) -> Result<Tensor> {
        let e = timestep_embedding(c_noise, self.config.temb_dim, true, 0.0, 10000.0)?
            .to_dtype(x.dtype())?;
        let same = self.in_proj.weight().dtype() == x.dtype();
        if kernels::conv::enabled() && kernels::own_kernel(x) && same && x.rank() == 2 {
            let c = &self.config;
            let dims = MlpDims {
                in_dim: c.in_dim,
                hidden: c.hidden,
                blocks: c.blocks,
                temb_dim: c.temb_dim,
            };
            return Ok(kernels::mlp::residual_mlp(x, &e, &self.packed()?, dims)?);
        }
        self.forward_composed(x, &e)
    }
    fn device(&self) -> candle_core::Device {
        self.in_proj.weight().device().clone()
    }
    fn dtype(&self) -> candle_core::DType {
        self.in_proj.weight().dtype()
    }
}
