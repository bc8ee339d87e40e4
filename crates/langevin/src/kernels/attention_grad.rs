//! The backward pass of the CPU attention block ([`super::attention_block`]): from ∂out to
//! ∂hs, ∂x and every projection's weight and bias gradient, on the channel-first map as the
//! forward pass reads it ([B, heads, d, N], no transposes).
//!
//! Per image and head, for each block of query rows: the probabilities A = softmax(qᵀk/√d)
//! are computed again from the saved q and k (as FlashAttention's backward does, Dao et al.
//! 2022, §3.1: A is [heads, N, N] per image, more than q, k, v together at 16×16), then
//! ∂v += ∂o·A, ∂A = ∂oᵀ·v, ∂S = A∘(∂A − rowsum(A∘∂A))/√d, ∂q = k·∂Sᵀ, ∂k += q·∂S — GEMMs over
//! transposed views. The projections' weight gradients are one product each over all the
//! batch's positions (the images' columns side by side), split over the threads by their
//! outputs, never their sums; so every result is the same on any thread count.
use gemm::Parallelism;
use rayon::prelude::*;

use super::attention::{lane_sum, Exp};
use super::attention_block::{BlockOp, ROWS};
use super::conv::{gemm_into, mm};
use super::cpu_conv::uninit;
use super::real::{min_len, threads};
use super::simd::vectorized;

/// What the forward pass keeps: q, k, v [B, 3C, N] and the heads' outputs o [B, C, N].
pub(super) struct Saved<T> {
    pub(super) qkv: Vec<T>,
    pub(super) o: Vec<T>,
}

/// (∂hs, ∂x, ∂params) from ∂out `g`, params packed as in
/// [`super::attention_block::attention_block`]: [W_q; W_k; W_v; W_o] then the four biases.
pub(super) fn backward<T: Exp>(
    op: &BlockOp,
    hs: &[T],
    p: &[T],
    g: &[T],
    s: &Saved<T>,
    dims: &[usize],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (b, c) = (dims[0], dims[1]);
    let n = dims[2] * dims[3];
    let cn = c * n;
    // ∂(x + b_o + W_o·o) = ∂out / rescale, which is also ∂x.
    let gs: Vec<T> = match op.rescale == 1.0 {
        true => g.to_vec(),
        false => g
            .iter()
            .map(|&v| T::from_f64(v.to_f64() / op.rescale))
            .collect(),
    };
    let nt = threads();
    let mut dhs = uninit(b * cn);
    // ∂[q; k; v] per image, [B, 3C, N].
    let mut dqkv = uninit(b * 3 * cn);
    if b >= nt {
        dhs.par_chunks_mut(cn)
            .zip(dqkv.par_chunks_mut(3 * cn))
            .zip(gs.par_chunks(cn).zip(s.qkv.par_chunks(3 * cn)))
            .with_min_len(min_len(nt))
            .for_each_init(Scratch::default, |sc, ((dhs, dqkv), (g, qkv))| {
                image(op, p, c, n, g, qkv, dqkv, dhs, sc, Parallelism::None)
            });
    } else {
        let mut sc = Scratch::default();
        let par = Parallelism::Rayon(nt);
        let images = dhs
            .chunks_mut(cn)
            .zip(dqkv.chunks_mut(3 * cn))
            .zip(gs.chunks(cn).zip(s.qkv.chunks(3 * cn)));
        for ((dhs, dqkv), (g, qkv)) in images {
            image(op, p, c, n, g, qkv, dqkv, dhs, &mut sc, par);
        }
    }
    // The weight gradients: ∂[W_q; W_k; W_v] = ∂[q; k; v]·hsᵀ and ∂W_o = ∂out'·oᵀ, summed
    // over all B·N positions in one product each.
    let bn = b * n;
    let (dqkv_all, hs_all) = (side_by_side(&dqkv, 3 * c, b), side_by_side(hs, c, b));
    let (g_all, o_all) = (side_by_side(&gs, c, b), side_by_side(&s.o, c, b));
    let par = match nt {
        1 => Parallelism::None,
        nt => Parallelism::Rayon(nt),
    };
    let mut dp = uninit(4 * c * c + 4 * c);
    let (dw, db) = dp.split_at_mut(4 * c * c);
    let (dw_qkv, dw_o) = dw.split_at_mut(3 * c * c);
    mm(
        (3 * c, c, bn),
        dw_qkv,
        false,
        &dqkv_all,
        (bn, 1),
        &hs_all,
        (1, bn),
        par,
    );
    mm(
        (c, c, bn),
        dw_o,
        false,
        &g_all,
        (bn, 1),
        &o_all,
        (1, bn),
        par,
    );
    let (db_qkv, db_o) = db.split_at_mut(3 * c);
    row_sums(&dqkv_all, bn, db_qkv);
    row_sums(&g_all, bn, db_o);
    (dhs, gs, dp)
}

/// One task's buffers: ∂o [C, N], the probabilities A and ∂A / ∂S of a query block.
struct Scratch<T> {
    d_o: Vec<T>,
    a: Vec<T>,
    da: Vec<T>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Self {
            d_o: vec![],
            a: vec![],
            da: vec![],
        }
    }
}

/// One image: ∂[q; k; v] [3C, N] and ∂hs [C, N] from ∂out' `g` [C, N] and the saved q, k, v.
#[allow(clippy::too_many_arguments)]
fn image<T: Exp>(
    op: &BlockOp,
    p: &[T],
    c: usize,
    n: usize,
    g: &[T],
    qkv: &[T],
    dqkv: &mut [T],
    dhs: &mut [T],
    sc: &mut Scratch<T>,
    par: Parallelism,
) {
    let d = c / op.heads;
    let scale = T::from_f64(1.0 / (d as f64).sqrt());
    let (w_qkv, w_o) = (&p[..3 * c * c], &p[3 * c * c..4 * c * c]);
    // ∂o = W_oᵀ·g (W_o read transposed).
    sc.d_o.resize(c * n, T::ZERO);
    mm((c, n, c), &mut sc.d_o, false, w_o, (1, c), g, (n, 1), par);
    let (dq, rest) = dqkv.split_at_mut(c * n);
    let (dk, dv) = rest.split_at_mut(c * n);
    for h in 0..op.heads {
        let at = |part: usize| &qkv[(part * c + h * d) * n..][..d * n];
        let (q, k, v) = (at(0), at(1), at(2));
        let d_o = &sc.d_o[h * d * n..][..d * n];
        let head = h * d * n..(h + 1) * d * n;
        let (dq, dk, dv) = (&mut dq[head.clone()], &mut dk[head.clone()], &mut dv[head]);
        for i0 in (0..n).step_by(ROWS) {
            let rows = ROWS.min(n - i0);
            op.probabilities(qkv, c, n, h, i0, &mut sc.a);
            let a = &sc.a;
            // ∂v[e][j] += Σ_i ∂o[e][i0 + i]·A[i][j]
            mm((d, n, rows), dv, i0 > 0, &d_o[i0..], (n, 1), a, (n, 1), par);
            // ∂A[i][j] = Σ_e ∂o[e][i0 + i]·v[e][j] (∂o read transposed)
            sc.da.resize(rows * n, T::ZERO);
            mm(
                (rows, n, d),
                &mut sc.da,
                false,
                &d_o[i0..],
                (1, n),
                v,
                (n, 1),
                par,
            );
            let da = &mut sc.da;
            vectorized(
                #[inline(always)]
                || {
                    for (ar, dr) in a.chunks_exact(n).zip(da.chunks_exact_mut(n)) {
                        softmax_grad_row(ar, dr, scale);
                    }
                },
            );
            let ds = &sc.da;
            // ∂q[e][i0 + i] = Σ_j k[e][j]·∂S[i][j] (∂S read transposed), columns i0.. of ∂q_h.
            gemm_into(
                (d, rows, n),
                &mut dq[i0..],
                (n, 1),
                false,
                k,
                (n, 1),
                ds,
                (1, n),
                par,
            );
            // ∂k[e][j] += Σ_i q[e][i0 + i]·∂S[i][j]
            mm((d, n, rows), dk, i0 > 0, &q[i0..], (n, 1), ds, (n, 1), par);
        }
    }
    // ∂hs = [W_q; W_k; W_v]ᵀ·∂[q; k; v]
    mm((c, n, 3 * c), dhs, false, w_qkv, (1, c), dqkv, (n, 1), par);
}

/// `da ← a∘(da − Σ_j a_j·da_j)·scale`: the softmax's backward on one row of probabilities `a`
/// (S·scale → softmax), the dot product in eight interleaved partial sums added pairwise.
#[inline(always)]
fn softmax_grad_row<T: Exp>(a: &[T], da: &mut [T], scale: T) {
    let mut acc = [T::ZERO; 8];
    let (ac, dc) = (a.chunks_exact(8), da.chunks_exact(8));
    let (at, dt) = (ac.remainder(), dc.remainder());
    for (x, y) in ac.zip(dc) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let mut t = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (&x, &y) in at.iter().zip(dt) {
        t += x * y;
    }
    for (d, &x) in da.iter_mut().zip(a) {
        *d = x * (*d - t) * scale;
    }
}

/// [B, rows, N] as [rows, B·N]: each row's N values of every image side by side.
fn side_by_side<T: Exp>(src: &[T], rows: usize, b: usize) -> Vec<T> {
    let n = src.len() / (rows * b).max(1);
    let mut out = uninit(rows * b * n);
    out.par_chunks_mut((b * n).max(1))
        .enumerate()
        .with_min_len(min_len(threads()))
        .for_each(|(r, dst)| {
            for (i, d) in dst.chunks_exact_mut(n.max(1)).enumerate() {
                d.copy_from_slice(&src[(i * rows + r) * n..][..n]);
            }
        });
    out
}

/// `out[r] = Σ_j m[r][j]` for rows of `len` values ([`lane_sum`] each).
fn row_sums<T: Exp>(m: &[T], len: usize, out: &mut [T]) {
    out.par_iter_mut()
        .zip(m.par_chunks(len.max(1)))
        .with_min_len(min_len(threads()))
        .for_each(|(o, r)| {
            *o = vectorized(
                #[inline(always)]
                || lane_sum(r),
            )
        });
}
