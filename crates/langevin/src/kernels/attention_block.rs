//! A UNet's spatial self-attention block on the CPU as one op on the channel-first map:
//! `(to_out(softmax(qᵀk/√d)·v) + x) / rescale` with q, k, v = to_q, to_k, to_v of the
//! (group-normed) input, where [B, C, H, W] is read as [B, heads, d, N] as it stands; with its
//! backward pass ([`super::attention_grad`]) when a gradient is tracked (training).
//!
//! Written for a measured hot spot (issue 17, CPU round 10): the composed form (a transpose
//! to tokens, four `Linear`s with separate bias adds, three head splits, the fused softmax
//! kernel, a transpose back, the residual add) took ~4 ms per block at batch 16 for 64
//! tokens of 64 channels in the small UNet, ~1.5 M multiply-adds per image: ~19% of its
//! forward pass in copies and per-op costs. Here the projections are one GEMM [3C, C]·[C, N]
//! per image with the biases as its initial value, the scores and the weighted sum GEMMs over
//! transposed views (no copies), the output projection accumulates onto x + bias. Per image
//! the same pieces on any thread count and batch size, so results depend only on the image.
//! In training the composed form's forward and backward (candle's matmuls, the transposes'
//! copies, the strided gradients' accumulation) were ~9% of the small UNet's step (CPU round
//! 15).
use std::any::Any;
use std::sync::{Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use super::attention::{softmax_row, Exp};
use super::attention_grad::{backward, Saved};
use super::conv::{enabled, gemm_into, mm};
use super::cpu_conv::uninit;
use super::real::{dispatch, min_len, own_kernel, threads, with_data};
use super::simd::vectorized;

/// The block's weights packed for [`attention_block`]: [W_q; W_k; W_v; W_o] ([4C, C]) then
/// [b_q; b_k; b_v; b_o] ([4C]), made once per layer.
pub type Packed = OnceLock<Tensor>;

/// Whether [`attention_block`] takes `x` with these weights: CPU, f32 or f64, the own kernels
/// on, every parameter of `x`'s dtype.
pub fn applies(x: &Tensor, params: &[&Tensor]) -> bool {
    enabled() && own_kernel(x) && x.rank() == 4 && params.iter().all(|t| t.dtype() == x.dtype())
}

/// `(W_o·softmax(qᵀk·scale)·v + b_o + x) / rescale` per head, q = W_q·hs + b_q (likewise k,
/// v), scale = 1/√d. `weights` are [W_q, W_k, W_v, W_o] ([C, C], applied as
/// `torch.nn.Linear`), `biases` their [C] biases; `packed` keeps them in one tensor when no
/// parameter is tracked (inference); otherwise they are concatenated per call, and gradients
/// flow back to `hs`, `x` and each parameter.
///
/// # Shapes
/// `hs`, `x`: [B, C, H, W] (`hs` the normed input, `x` the residual); returns [B, C, H, W].
pub fn attention_block(
    hs: &Tensor,
    x: &Tensor,
    weights: [&Tensor; 4],
    biases: [&Tensor; 4],
    heads: usize,
    rescale: f64,
    packed: &Packed,
) -> candle_core::Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if hs.dims() != x.dims() || heads == 0 || c % heads != 0 {
        return Err(candle_core::Error::Msg(format!(
            "attention block: hs {:?}, x {:?}, {heads} heads",
            hs.dims(),
            x.dims()
        )));
    }
    let tracked = hs.track_op() || x.track_op();
    let params_tracked = weights.iter().chain(&biases).any(|t| t.track_op());
    let concat = || -> candle_core::Result<Tensor> {
        let w = Tensor::cat(&weights, 0)?.flatten_all()?;
        let b = Tensor::cat(&biases, 0)?;
        Tensor::cat(&[w, b], 0)
    };
    let p = match (params_tracked, packed.get()) {
        (true, _) => concat()?,
        (false, Some(p)) => p.clone(),
        (false, None) => {
            let p = concat()?;
            packed.get_or_init(|| p).clone()
        }
    };
    if p.elem_count() != 4 * c * c + 4 * c {
        return Err(candle_core::Error::Msg(format!(
            "attention block: packed weights of {} values for {c} channels",
            p.elem_count()
        )));
    }
    let (hs, x) = (hs.contiguous()?, x.contiguous()?);
    let save = tracked || params_tracked;
    let op = BlockOp {
        heads,
        rescale,
        save,
        saved: Mutex::new(None),
    };
    match save {
        true => hs.apply_op3(&x, &p, op),
        false => hs.apply_op3_no_bwd(&x, &p, &op),
    }
}

pub(super) struct BlockOp {
    pub(super) heads: usize,
    pub(super) rescale: f64,
    /// Whether to keep q, k, v and the attention's output for the backward pass.
    save: bool,
    /// A [`Saved`] of the op's dtype, when `save`.
    saved: Mutex<Option<Box<dyn Any + Send>>>,
}

/// Query rows per score block.
pub(super) const ROWS: usize = 64;

impl BlockOp {
    /// The block's output, and (when `save`) q, k, v [B, 3C, N] with the heads' outputs o
    /// [B, C, N] for the backward pass.
    fn forward<T: Exp>(
        &self,
        hs: &[T],
        x: &[T],
        p: &[T],
        dims: &[usize],
        save: bool,
    ) -> (Vec<T>, Option<Saved<T>>) {
        let (b, c) = (dims[0], dims[1]);
        let n = dims[2] * dims[3];
        let cn = c * n;
        let mut out = uninit(b * cn);
        let (mut qkv_all, mut o_all) = match save {
            true => (uninit(b * 3 * cn), uninit(b * cn)),
            false => (vec![], vec![]),
        };
        let nt = threads();
        if b >= nt {
            // One image per task, all three stages in its cache.
            let chunks = out
                .par_chunks_mut(cn)
                .zip(hs.par_chunks(cn).zip(x.par_chunks(cn)))
                .with_min_len(min_len(nt));
            if save {
                let saved = qkv_all.par_chunks_mut(3 * cn).zip(o_all.par_chunks_mut(cn));
                chunks
                    .zip(saved)
                    .for_each_init(Vec::new, |s, ((out, (hs, x)), (qkv, o))| {
                        self.image(hs, x, p, c, n, qkv, o, s, out)
                    });
            } else {
                chunks.for_each_init(
                    || (uninit(3 * cn), uninit(cn), Vec::new()),
                    |(qkv, o, s), (out, (hs, x))| self.image(hs, x, p, c, n, qkv, o, s, out),
                );
            }
        } else {
            // Fewer images than threads: the GEMMs split over the threads (over their
            // outputs, not their sums), the (head, query block) pieces in parallel.
            let par = Parallelism::Rayon(nt);
            let (mut qkv_scratch, mut o_scratch) = match save {
                true => (vec![], vec![]),
                false => (uninit(3 * cn), uninit(cn)),
            };
            let d = c / self.heads;
            let blocks = n.div_ceil(ROWS);
            let images = out.chunks_mut(cn).zip(hs.chunks(cn)).zip(x.chunks(cn));
            for (i, ((out, hs), x)) in images.enumerate() {
                let (qkv, o) = match save {
                    true => (
                        &mut qkv_all[i * 3 * cn..][..3 * cn],
                        &mut o_all[i * cn..][..cn],
                    ),
                    false => (&mut qkv_scratch[..], &mut o_scratch[..]),
                };
                self.project(hs, p, c, n, qkv, par);
                let qkv = &*qkv;
                // Task (h, block) writes columns i0.. of head h's d rows of o: disjoint
                // pieces, gathered per task and placed after the loop.
                let pieces: Vec<(usize, usize, Vec<T>)> = (0..self.heads * blocks)
                    .into_par_iter()
                    .with_min_len(min_len(nt))
                    .map_init(Vec::new, |s, task| {
                        let (h, i0) = (task / blocks, (task % blocks) * ROWS);
                        let rows = ROWS.min(n - i0);
                        // The piece as [d, rows] with row stride `rows` (a private O_h).
                        let mut piece = uninit(d * rows);
                        self.core(qkv, c, n, h, i0, s, &mut piece, rows);
                        (h, i0, piece)
                    })
                    .collect();
                for (h, i0, piece) in pieces {
                    let rows = piece.len() / d;
                    for (dd, r) in piece.chunks_exact(rows).enumerate() {
                        o[(h * d + dd) * n + i0..][..rows].copy_from_slice(r);
                    }
                }
                self.output(o, x, p, c, n, out, par);
            }
        }
        let saved = save.then_some(Saved {
            qkv: qkv_all,
            o: o_all,
        });
        (out, saved)
    }

    /// [`Self::forward`], its saved values (when `save`) kept in the op for `bwd`.
    fn forward_keeping<T: Exp>(&self, hs: &[T], x: &[T], p: &[T], dims: &[usize]) -> Vec<T> {
        let (out, saved) = self.forward(hs, x, p, dims, self.save);
        if let Some(saved) = saved {
            *self.saved.lock().expect("not poisoned") = Some(Box::new(saved));
        }
        out
    }

    /// One image on the calling thread: projections, every head's attention, the output.
    #[allow(clippy::too_many_arguments)]
    fn image<T: Exp>(
        &self,
        hs: &[T],
        x: &[T],
        p: &[T],
        c: usize,
        n: usize,
        qkv: &mut [T],
        o: &mut [T],
        s: &mut Vec<T>,
        out: &mut [T],
    ) {
        self.project(hs, p, c, n, qkv, Parallelism::None);
        let d = c / self.heads;
        for h in 0..self.heads {
            for i0 in (0..n).step_by(ROWS) {
                let oh = &mut o[h * d * n..][..d * n];
                self.core(qkv, c, n, h, i0, s, &mut oh[i0..], n);
            }
        }
        self.output(o, x, p, c, n, out, Parallelism::None);
    }

    /// [q; k; v] [3C, N] = [W_q; W_k; W_v] · hs + biases.
    fn project<T: Exp>(
        &self,
        hs: &[T],
        p: &[T],
        c: usize,
        n: usize,
        qkv: &mut [T],
        par: Parallelism,
    ) {
        let bias = &p[4 * c * c..];
        for (row, &bv) in qkv.chunks_exact_mut(n).zip(&bias[..3 * c]) {
            row.fill(bv);
        }
        mm(
            (3 * c, n, c),
            qkv,
            true,
            &p[..3 * c * c],
            (c, 1),
            hs,
            (n, 1),
            par,
        );
    }

    /// o_h[:, i0..] = v_h·Pᵀ, P = softmax(q_hᵀ[i0.., :]·k_h·scale) by rows, written [d, rows]
    /// with row stride `ld`. The scores are kept transposed, Sᵀ = k_hᵀ·q_h[:, i0..] [N, rows]:
    /// the softmax then runs down the columns with the queries along the vector lanes (no sum
    /// across lanes), both products read Sᵀ and q where `gemm` needs no packing, and 1/Σ scales
    /// the d × rows outputs instead of the N × rows probabilities. Written for a measured hot
    /// spot (issue 17, CPU round 18): with diffusers' heads of 8 channels the row-wise form's
    /// four passes over S and `gemm`'s packing of it for the weighted sum were ~5% of the
    /// multi-head UNet's forward pass.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn core<T: Exp>(
        &self,
        qkv: &[T],
        c: usize,
        n: usize,
        h: usize,
        i0: usize,
        s: &mut Vec<T>,
        dst: &mut [T],
        ld: usize,
    ) {
        let d = c / self.heads;
        let rows = ROWS.min(n - i0);
        let at = |part: usize| &qkv[(part * c + h * d) * n..][..d * n];
        let (q, k, v) = (at(0), at(1), at(2));
        s.resize(n * rows + 2 * rows, T::ZERO);
        let (st, stats) = s.split_at_mut(n * rows);
        let (max, inv) = stats.split_at_mut(rows);
        // Sᵀ[j][i] = Σ_e k[e][j] · q[e][i0 + i]: k read transposed (strides (1, N)).
        mm(
            (n, rows, d),
            st,
            false,
            k,
            (1, n),
            &q[i0..],
            (n, 1),
            Parallelism::None,
        );
        let scale = T::from_f64(1.0 / (d as f64).sqrt());
        vectorized(
            #[inline(always)]
            || column_softmax(st, rows, scale, max, inv),
        );
        // o[e][i] = Σ_j v[e][j] · e^(Sᵀ[j][i]), then · 1/Σ_i.
        gemm_into(
            (d, rows, n),
            dst,
            (ld, 1),
            false,
            v,
            (n, 1),
            st,
            (rows, 1),
            Parallelism::None,
        );
        for e in 0..d {
            for (y, &r) in dst[e * ld..][..rows].iter_mut().zip(&*inv) {
                *y = *y * r;
            }
        }
    }

    /// The attention probabilities of head h's query rows i0.. (at most [`ROWS`]):
    /// `s` = softmax(q_hᵀ[i0.., :]·k_h / √d) by rows, [rows, N], as the backward pass
    /// ([`super::attention_grad`]) multiplies them (the forward keeps them transposed, [`Self::core`]).
    pub(super) fn probabilities<T: Exp>(
        &self,
        qkv: &[T],
        c: usize,
        n: usize,
        h: usize,
        i0: usize,
        s: &mut Vec<T>,
    ) {
        let d = c / self.heads;
        let rows = ROWS.min(n - i0);
        let at = |part: usize| &qkv[(part * c + h * d) * n..][..d * n];
        let (q, k) = (at(0), at(1));
        s.resize(rows * n, T::ZERO);
        // S[i][j] = Σ_e q[e][i0 + i] · k[e][j]: q read transposed (strides (1, N)).
        mm(
            (rows, n, d),
            s,
            false,
            &q[i0..],
            (1, n),
            k,
            (n, 1),
            Parallelism::None,
        );
        let scale = T::from_f64(1.0 / (d as f64).sqrt());
        vectorized(
            #[inline(always)]
            || {
                for r in s.chunks_mut(n) {
                    softmax_row(r, scale);
                }
            },
        );
    }

    /// out = (x + b_o + W_o·o) / rescale.
    #[allow(clippy::too_many_arguments)]
    fn output<T: Exp>(
        &self,
        o: &[T],
        x: &[T],
        p: &[T],
        c: usize,
        n: usize,
        out: &mut [T],
        par: Parallelism,
    ) {
        let bo = &p[4 * c * c + 3 * c..][..c];
        for ((row, xr), &bv) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)).zip(bo) {
            for (y, &xv) in row.iter_mut().zip(xr) {
                *y = xv + bv;
            }
        }
        mm(
            (c, n, c),
            out,
            true,
            &p[3 * c * c..4 * c * c],
            (c, 1),
            o,
            (n, 1),
            par,
        );
        if self.rescale != 1.0 {
            // In f64 then rounded: for f32 the correctly rounded quotient (as torch's).
            let r = self.rescale;
            out.iter_mut()
                .for_each(|y| *y = T::from_f64(y.to_f64() / r));
        }
    }
}

/// Column i of `st` ([N, rows]) replaced by e^((x − max_i)·scale), `inv[i]` = 1/Σ of that
/// column (summed down the column in order), `max` the columns' maxima. Each loop runs along
/// a row of `rows` queries and vectorises.
#[inline(always)]
fn column_softmax<T: Exp>(st: &mut [T], rows: usize, scale: T, max: &mut [T], inv: &mut [T]) {
    max.copy_from_slice(&st[..rows]);
    for r in st.chunks_exact(rows).skip(1) {
        for (m, &x) in max.iter_mut().zip(r) {
            *m = if x > *m { x } else { *m };
        }
    }
    inv.fill(T::ZERO);
    for r in st.chunks_exact_mut(rows) {
        for ((x, sum), &m) in r.iter_mut().zip(inv.iter_mut()).zip(&*max) {
            let e = ((*x - m) * scale).exp_();
            *x = e;
            *sum += e;
        }
    }
    for v in inv.iter_mut() {
        *v = T::from_f64(1.0 / v.to_f64());
    }
}

impl CustomOp3 for BlockOp {
    fn name(&self) -> &'static str {
        "langevin-attention-block"
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
        let dims = l1.dims();
        let st = dispatch(
            self.name(),
            [(s1, l1), (s2, l2), (s3, l3)],
            |[hs, x, p]| self.forward_keeping(hs, x, p, dims),
            |[hs, x, p]| self.forward_keeping(hs, x, p, dims),
        )?;
        Ok((st, l1.shape().clone()))
    }

    fn bwd(
        &self,
        hs: &Tensor,
        x: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        fn run<T: Exp + WithDType>(
            op: &BlockOp,
            hs: &Tensor,
            x: &Tensor,
            p: &Tensor,
            g: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let n = op.name();
            let dims = hs.dims();
            let (dhs, dx, dp) = with_data::<T, _>(hs, n, |hv| {
                with_data::<T, _>(x, n, |xv| {
                    with_data::<T, _>(p, n, |pv| {
                        with_data::<T, _>(g, n, |gv| {
                            let saved = op.saved.lock().expect("not poisoned");
                            match saved.as_ref().and_then(|a| a.downcast_ref::<Saved<T>>()) {
                                Some(s) => Ok(backward(op, hv, pv, gv, s, dims)),
                                None => {
                                    let (_, s) = op.forward(hv, xv, pv, dims, true);
                                    let s = s.expect("saved when asked");
                                    Ok(backward(op, hv, pv, gv, &s, dims))
                                }
                            }
                        })
                    })
                })
            })?;
            let dev = Device::Cpu;
            let tracked = |t: &Tensor, v: Vec<T>| -> candle_core::Result<Option<Tensor>> {
                Ok(match t.track_op() {
                    true => Some(Tensor::from_vec(v, t.shape(), &dev)?),
                    false => None,
                })
            };
            Ok((tracked(hs, dhs)?, tracked(x, dx)?, tracked(p, dp)?))
        }
        match hs.dtype() {
            DType::F32 => run::<f32>(self, hs, x, p, g),
            DType::F64 => run::<f64>(self, hs, x, p, g),
            d => Err(candle_core::Error::Msg(format!(
                "{}: unsupported dtype {d:?}",
                self.name()
            ))),
        }
    }
}
