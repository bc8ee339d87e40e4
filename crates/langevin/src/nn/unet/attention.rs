//! Spatial self-attention: diffusers' `Attention` as built by the UNet blocks
//! (`src/diffusers/models/attention_processor.py`, `AttnProcessor2_0`, with
//! `residual_connection=True`, `bias=True`, `_from_deprecated_attn_block=True`).
use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};

use super::ops::{fwd, group_norm, linear, scaled_softmax_last_dim, GroupNorm};
use crate::kernels::{self, gpu, gpu_attention, gpu_nhwc};
use crate::Result;

/// `out = (to_out.0(softmax(q·kᵀ/√d)·v) + x) / rescale_output_factor` over the H·W positions,
/// with q, k, v = to_q, to_k, to_v of the (optionally group-normed) input.
///
/// Parameters: optional `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0` (the loader also maps
/// the legacy `query`, `key`, `value`, `proj_attn` keys onto these).
pub struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    rescale_output_factor: f64,
    /// The projections packed for the CPU kernel, made on first use in inference (training
    /// packs the current weights per call).
    packed: kernels::attention_block::Packed,
}

impl Attention {
    /// `head_dim = None` means one head over all `channels`; `norm_groups = None` means no
    /// group norm.
    pub fn new(
        channels: usize,
        head_dim: Option<usize>,
        norm_groups: Option<usize>,
        eps: f64,
        rescale_output_factor: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = head_dim.unwrap_or(channels);
        Ok(Self {
            group_norm: norm_groups
                .map(|g| group_norm(g, channels, eps, vb.pp("group_norm")))
                .transpose()?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out").pp(0))?,
            heads: channels / d,
            rescale_output_factor,
            packed: Default::default(),
        })
    }

    /// # Shapes
    /// `x`: [B, C, H, W] → [B, C, H, W].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if gpu::fast_path(x) && !self.to_q.weight().track_op() {
            return self.forward_channels_first(x);
        }
        let (b, c, h, w) = x.dims4()?;
        let (n, heads) = (h * w, self.heads);
        let d = c / heads;
        let hs = match &self.group_norm {
            Some(g) => fwd(g, x)?,
            None => x.clone(),
        };
        if let Some(y) = self.cpu_block(&hs, x)? {
            return Ok(y);
        }
        // [B, C, N] → [B, N, C]
        let hs = hs.reshape((b, c, n))?.transpose(1, 2)?.contiguous()?;
        // [B, N, C] → [B, heads, N, d]
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, heads, d))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(fwd(&self.to_q, &hs)?)?;
        let k = split(fwd(&self.to_k, &hs)?)?;
        let v = split(fwd(&self.to_v, &hs)?)?;
        let scale = 1.0 / (d as f64).sqrt();
        let o = if kernels::attention::fused(&q, &k, &v) {
            kernels::attention::attention(&q, &k, &v, scale)?
        } else {
            scaled_softmax_last_dim(&q.matmul(&k.t()?)?, scale)?.matmul(&v)?
        };
        // [B, heads, N, d] → [B, N, C]
        let o = o.transpose(1, 2)?.contiguous()?.reshape((b, n, c))?;
        let o = fwd(&self.to_out, &o)?;
        // [B, N, C] → [B, C, H, W]
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        let out = (o + x)?;
        Ok(if self.rescale_output_factor == 1.0 {
            out
        } else {
            (out / self.rescale_output_factor)?
        })
    }

    /// The whole block as one CPU op ([`kernels::attention_block`], with its backward pass
    /// when training) where it applies; `None` elsewhere.
    fn cpu_block(&self, hs: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
        let layers = [&self.to_q, &self.to_k, &self.to_v, &self.to_out];
        let (Some(bq), Some(bk), Some(bv), Some(bo)) = (
            self.to_q.bias(),
            self.to_k.bias(),
            self.to_v.bias(),
            self.to_out.bias(),
        ) else {
            return Ok(None);
        };
        let weights = layers.map(|l| l.weight());
        let biases = [bq, bk, bv, bo];
        let params: Vec<&Tensor> = weights.iter().chain(&biases).copied().collect();
        if !kernels::attention_block::applies(hs, &params) || x.dtype() != hs.dtype() {
            return Ok(None);
        }
        Ok(Some(kernels::attention_block::attention_block(
            hs,
            x,
            weights,
            biases,
            self.heads,
            self.rescale_output_factor,
            &self.packed,
        )?))
    }

    /// The same attention on the channel-first map, with no transposes (the fused CUDA
    /// inference path): [B, C, H, W] is [B·heads, d, N] as it stands, so q, k, v are 1×1
    /// convolutions (bias and 1/√d in the epilogue), the scores qᵀk and the output v·pᵀ are
    /// batched matrix products over transposed views (cuBLAS reads them as they are), and
    /// `to_out` adds its bias and the residual in one pass. Softmax is candle's fused kernel;
    /// heads of d ≤ 32 take the fused attention kernel instead ([`gpu_attention`]).
    fn forward_channels_first(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (n, heads) = (h * w, self.heads);
        let d = c / heads;
        let hs = match &self.group_norm {
            Some(g) => fwd(g, x)?,
            None => x.clone(),
        };
        let proj = |l: &Linear, scale: f64, res: Option<&Tensor>| -> Result<Tensor> {
            let y = hs_conv(l, &hs, c)?;
            let y = gpu::bias_residual(&y, l.bias(), res, scale)?;
            Ok(y)
        };
        let q = proj(&self.to_q, 1.0 / (d as f64).sqrt(), None)?;
        let (k, v) = (proj(&self.to_k, 1.0, None)?, proj(&self.to_v, 1.0, None)?);
        let o = if gpu_nhwc::is_channels_last(&q) {
            channels_last_attention(&q, &k, &v, heads)?
        } else {
            let split = |t: Tensor| t.reshape((b * heads, d, n));
            let (q, k, v) = (split(q)?, split(k)?, split(v)?);
            let o = match gpu_attention::supported(&q, d) {
                // Small heads: one fused pass, no [B·heads, N, N] scores.
                true => gpu_attention::attention(&q, &k, &v)?,
                false => gpu_attention::attention_reference(&q, &k, &v)?,
            };
            o.reshape((b, c, h, w))? // [B·heads, d, N]
        };
        let y = hs_conv(&self.to_out, &o, c)?;
        Ok(gpu::bias_residual(
            &y,
            self.to_out.bias(),
            Some(x),
            1.0 / self.rescale_output_factor,
        )?)
    }
}

/// softmax(q·kᵀ)·v per head on channels-last maps (q scaled), channels-last out: the fused
/// kernel for small heads, one [B, N, N] product pair for one head of any size (the map is
/// [B, N, C] as it stands), and the channel-first form (two copies) otherwise.
fn channels_last_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, c, h, w) = q.dims4()?;
    let d = c / heads;
    if gpu_attention::supported(q, d) {
        return Ok(gpu_attention::attention_channels_last(q, k, v, heads)?);
    }
    if heads == 1 {
        let tokens = |t: &Tensor| gpu_nhwc::physical(t)?.reshape((b, h * w, c));
        let (q, k, v) = (tokens(q)?, tokens(k)?, tokens(v)?);
        let p = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?; // [B, N, N]
        return Ok(gpu_nhwc::logical(&p.matmul(&v)?.reshape((b, h, w, c))?)?);
    }
    let split = |t: &Tensor| t.contiguous()?.reshape((b * heads, d, h * w));
    let o = gpu_attention::attention_reference(&split(q)?, &split(k)?, &split(v)?)?;
    Ok(gpu_nhwc::to_channels_last(&o.reshape((b, c, h, w))?)?)
}

/// `l` as a 1×1 convolution (no bias) over a [B, C, H, W] map.
fn hs_conv(l: &Linear, x: &Tensor, c: usize) -> Result<Tensor> {
    let wt = l.weight().reshape((c, c, 1, 1))?;
    Ok(gpu::conv2d(x, &wt, 0, 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// The channel-first form (the CUDA inference path) is the same function as the
    /// transposing one, for one and several heads, with and without the group norm.
    #[test]
    fn channel_first_attention_matches_the_transposing_form() {
        let dev = Device::Cpu;
        for (head_dim, groups, rescale) in [(None, Some(4), 1.0), (Some(4), None, 2.0)] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F64, &dev);
            let a = Attention::new(16, head_dim, groups, 1e-6, rescale, vb).unwrap();
            // Non-zero biases, so that their placement is checked too.
            for (_, v) in vm.data().lock().unwrap().iter() {
                let r = Tensor::randn(0f64, 0.5, v.shape(), &dev).unwrap();
                v.set(&r).unwrap();
            }
            let x = Tensor::randn(0f64, 1.0, (2, 16, 3, 5), &dev).unwrap();
            let want = a.forward(&x).unwrap();
            let got = a.forward_channels_first(&x).unwrap();
            let d = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            let d = d.to_scalar::<f64>().unwrap();
            assert!(d < 1e-12, "heads {head_dim:?}: max |Δ| {d}");
        }
    }

    /// An attention layer with random weights (non-zero biases) of `dtype`: the training form
    /// (a `VarMap`, tracked: the composed ops) and the same weights as plain tensors (the
    /// CPU inference kernel).
    fn pair(
        c: usize,
        head_dim: Option<usize>,
        rescale: f64,
        dtype: DType,
    ) -> (Attention, Attention) {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, dtype, &dev);
        let tracked = Attention::new(c, head_dim, Some(4), 1e-6, rescale, vb).unwrap();
        let mut plain = std::collections::HashMap::new();
        for (i, (name, v)) in vm.data().lock().unwrap().iter().enumerate() {
            let r = crate::rng::NoiseSource::consecutive(i as u64, 1)
                .randn(&[1, v.elem_count()], &dev)
                .unwrap()
                .reshape(v.shape())
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            v.set(&(r * 0.5).unwrap()).unwrap();
            plain.insert(name.clone(), v.as_tensor().detach().copy().unwrap());
        }
        let vb = VarBuilder::from_tensors(plain, dtype, &dev);
        let fast = Attention::new(c, head_dim, Some(4), 1e-6, rescale, vb).unwrap();
        (tracked, fast)
    }

    /// The CPU inference kernel is the composed block: f64 to 1e-12 for one head and several,
    /// over more than one block of 64 queries, with a rescale; in f32 the same bits on 1, 2
    /// and 3 threads and for an image alone or in a batch.
    #[test]
    fn cpu_attention_block_matches_the_composed_ops() {
        let dev = Device::Cpu;
        for (head_dim, rescale) in [(None, 1.0), (Some(4), 2.0), (Some(8), 1.0)] {
            let (tracked, fast) = pair(16, head_dim, rescale, DType::F64);
            let x = crate::rng::NoiseSource::consecutive(7, 3)
                .randn(&[3, 16, 9, 10], &dev)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let want = tracked.forward(&x).unwrap();
            let got = fast.forward(&x).unwrap();
            assert!(fast.packed.get().is_some(), "the kernel did not run");
            assert!(tracked.packed.get().is_none());
            let d = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            let d = d.to_scalar::<f64>().unwrap();
            assert!(d < 1e-12, "heads {head_dim:?}: max |Δ| {d}");
        }
        let (_, fast) = pair(16, Some(8), 1.0, DType::F32);
        let x = crate::rng::NoiseSource::consecutive(9, 3)
            .randn(&[3, 16, 9, 10], &dev)
            .unwrap();
        let bits = |t: Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|v| v.to_bits()).collect()
        };
        let mut first = None;
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (all, one) = pool.install(|| {
                let all = fast.forward(&x).unwrap();
                let one = fast.forward(&x.narrow(0, 1, 1).unwrap()).unwrap();
                (all, one)
            });
            let (all, one) = (bits(all.narrow(0, 1, 1).unwrap()), bits(one));
            assert_eq!(all, one, "{threads} threads: batch of 3 vs alone");
            assert_eq!(first.get_or_insert(all.clone()), &all, "{threads} threads");
        }
    }
}
