//! Multi-head scaled dot-product attention for inference on the CPU, as one op.
//!
//! Written because UNets with diffusers' default multi-head attention (`attention_head_dim =
//! 8`: 32 heads of 8 channels at 16×16) sampled at about 0.3× PyTorch (issue 17): candle's
//! batched matmul runs the B·heads small products one after another, each split over the
//! threads, and the composed form allocates the whole [B, heads, N, N] score tensor (134 MB at
//! batch 16) three times per call, a third of the wall time in page faults. Here each task
//! takes one (batch, head) pair and a block of query rows, and keeps its scores in a buffer of
//! at most 64 rows: scores, softmax and the weighted sum without leaving the cache. No sum
//! crosses a task, so results do not depend on the thread count. Inference only (no backward
//! pass): training keeps the composed ops.
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::{enabled, mm};
use super::mlp::exp_f32;
use super::real::{dispatch, min_len, own_kernel, threads, Real};
use super::simd::vectorized;

/// Whether [`attention`] runs the fused kernel for these inputs (CPU, f32 or f64, no gradient
/// tracked, the own kernels enabled); otherwise compose the ops.
pub fn fused(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let same = |t: &Tensor| t.dtype() == q.dtype() && t.rank() == 4;
    enabled()
        && own_kernel(q)
        && same(k)
        && same(v)
        && q.rank() == 4
        && ![q, k, v].iter().any(|t| t.track_op())
}

/// softmax(q·kᵀ·scale)·v over the last two dimensions.
///
/// # Shapes
/// `q`: [B, H, N, d]; `k`, `v`: [B, H, M, d]; returns [B, H, N, d].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let (b, h, _, d) = q.dims4()?;
    let (kb, kh, m, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, d) || v.dims4()? != (b, h, m, d) {
        return Err(candle_core::Error::Msg(format!(
            "attention: q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    q.contiguous()?.apply_op3_no_bwd(
        &k.contiguous()?,
        &v.contiguous()?,
        &AttentionOp { scale, m },
    )
}

struct AttentionOp {
    scale: f64,
    /// Keys per query.
    m: usize,
}

/// Query rows per task.
const ROWS: usize = 64;

/// e^x for the softmax: the vectorising f32 exponential, f64's own.
pub(super) trait Exp: Real {
    fn exp_(self) -> Self;
}
impl Exp for f32 {
    #[inline(always)]
    fn exp_(self) -> Self {
        exp_f32(self)
    }
}
impl Exp for f64 {
    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }
}

/// softmax(r·scale) in place (`scale` > 0): the maximum, e^((x − max)·scale) in one pass, its
/// sum in eight interleaved partial sums added pairwise (fixed order), then one scaling pass.
/// Written so that each loop vectorises (with [`vectorized`]): the plain loop, one chain of
/// dependent adds through the exponential, stayed scalar and was 6.6% of the small UNet's
/// forward pass at batch 64 (CPU round 9 in docs/benchmarks.md).
#[inline(always)]
pub(super) fn softmax_row<T: Exp>(r: &mut [T], scale: T) {
    // The maximum in 16 lanes, then over the lanes: the one running maximum of a plain loop
    // is a chain of compares that stays scalar (without fast-math LLVM does not reorder a
    // float max); this way it vectorises — the row's softmax 3.7 → 1.5 ns per value at 256
    // keys, the same values (a maximum does not depend on the order it is taken in).
    let mut lanes = [r[0]; 16];
    let chunks = r.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = lanes[0];
    for &x in lanes.iter().chain(tail) {
        max = if x > max { x } else { max };
    }
    for x in r.iter_mut() {
        *x = ((*x - max) * scale).exp_();
    }
    let inv = T::from_f64(1.0 / lane_sum(r).to_f64());
    for x in r.iter_mut() {
        *x = *x * inv;
    }
}

/// Σ r in eight interleaved partial sums added pairwise, then the tail: a fixed order that
/// vectorises (the softmax's normaliser, the attention block's bias gradients).
#[inline(always)]
pub(super) fn lane_sum<T: Real>(r: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let chunks = r.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let mut sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for &v in tail {
        sum += v;
    }
    sum
}

impl AttentionOp {
    fn forward<T: Exp>(&self, q: &[T], k: &[T], v: &[T], dims: &[usize]) -> Vec<T> {
        let (n, d, m) = (dims[2], dims[3], self.m);
        let pairs = dims[0] * dims[1];
        let blocks = n.div_ceil(ROWS);
        let scale = T::from_f64(self.scale);
        let mut out = vec![T::ZERO; pairs * n * d];
        // One task per (pair, block of query rows); a pair's last block may be shorter.
        let tasks: Vec<(usize, usize)> = (0..pairs)
            .flat_map(|p| (0..blocks).map(move |bl| (p, bl)))
            .collect();
        let mut chunks: Vec<&mut [T]> = Vec::with_capacity(tasks.len());
        for pair in out.chunks_mut(n * d) {
            chunks.extend(pair.chunks_mut(ROWS * d));
        }
        chunks
            .into_par_iter()
            .zip(tasks)
            .with_min_len(min_len(threads()))
            .for_each_init(Vec::new, |s: &mut Vec<T>, (o, (p, bl))| {
                let rows = o.len() / d;
                let qp = &q[(p * n + bl * ROWS) * d..][..rows * d];
                let (kp, vp) = (&k[p * m * d..][..m * d], &v[p * m * d..][..m * d]);
                s.resize(rows * m, T::ZERO);
                // s = q·kᵀ [rows, m].
                mm(
                    (rows, m, d),
                    s,
                    false,
                    qp,
                    (d, 1),
                    kp,
                    (1, d),
                    Parallelism::None,
                );
                vectorized(
                    #[inline(always)]
                    || {
                        for r in s.chunks_mut(m) {
                            softmax_row(r, scale);
                        }
                    },
                );
                // o = softmax · v [rows, d].
                mm(
                    (rows, d, m),
                    o,
                    false,
                    s,
                    (m, 1),
                    vp,
                    (d, 1),
                    Parallelism::None,
                );
            });
        out
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "langevin-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let dims = l1.dims();
        let st = dispatch(
            op,
            [(s1, l1), (s2, l2), (s3, l3)],
            |[a, b, c]| self.forward(a, b, c, dims),
            |[a, b, c]| self.forward(a, b, c, dims),
        )?;
        Ok((st, l1.shape().clone()))
    }
}
