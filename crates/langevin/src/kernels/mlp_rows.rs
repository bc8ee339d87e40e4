//! The residual MLP's forward and backward passes over one block of batch rows (all but the
//! time path, [`super::mlp_time`]), and the weight gradients summed over blocks or chunks.
//!
//! Why blocks: the demo's training step (batch 512, width 128) is ~30 GEMMs of about
//! 512×128×128, and splitting each of them over the threads inside `gemm` gave 1.13× on 2
//! threads (a fork, a join and a packing of both operands per product, measured in
//! docs/benchmarks.md, CPU round 3). Here a thread takes a block of [`ROWS`] rows through every
//! layer with one-thread GEMMs; the backward pass does the same for the activation gradients
//! and then computes each layer's weight gradient as one task, summing the blocks in order.
//! A few forks per pass, and the blocks do not depend on the thread count, so neither do the
//! results.
use gemm::Parallelism;

use super::conv::mm;
use super::cpu_conv::uninit;
use super::mlp::{Lin, Packing, Sigmoid};
use super::simd::vectorized;

/// Rows per block. Fixed (not derived from the thread count) so that results are the same on
/// any number of threads. Measured on the demo's training (batch 512, 2 threads, 300 steps):
/// 256 rows 3.08 s, 128 rows 3.35 s (each GEMM call packs its operands, so longer blocks
/// amortise more).
pub(super) const ROWS: usize = 256;

/// A SiLU site: silu(z) = z·σ(z) of the pre-activation z and its derivative
/// silu'(z) = σ + silu·(1 − σ), each [rows, width]. z itself is not kept, so the residual
/// stream h_i needs no copy; the derivative is stored rather than σ so that the backward pass
/// reads two arrays instead of three (the sites' passes were memory-bound: ~9% of the demo's
/// step, CPU round 17).
pub(super) struct Site<T> {
    der: Vec<T>,
    pub(super) act: Vec<T>,
}

impl<T: Sigmoid> Site<T> {
    /// The site of `z`, or of `z + b` (each row plus `b`) written back into `z` in the same
    /// pass: the residual stream takes the last layer's bias where it is read for SiLU.
    pub(super) fn new(z: &mut [T], b: Option<&[T]>) -> Self {
        let n = z.len();
        let w = b.map_or(n.max(1), <[T]>::len);
        let (mut der, mut act) = (Vec::with_capacity(n), Vec::with_capacity(n));
        // Written in place of fresh buffers (copying or zeroing them first was 22% of a
        // sampler step), in a plain loop: `extend` / `collect` stay out-of-line and miss AVX2.
        vectorized(
            #[inline(always)]
            || {
                let rows = (der.spare_capacity_mut().chunks_mut(w))
                    .zip(act.spare_capacity_mut().chunks_mut(w))
                    .zip(z.chunks_mut(w));
                for ((s, a), z) in rows {
                    let outs = s.iter_mut().zip(a);
                    match b {
                        Some(b) => {
                            for (((s, a), z), &b) in outs.zip(z).zip(b) {
                                let v = *z + b;
                                *z = v;
                                let (sv, av) = silu(v);
                                s.write(sv + av * (T::ONE - sv));
                                a.write(av);
                            }
                        }
                        None => {
                            for ((s, a), &v) in outs.zip(&*z) {
                                let (sv, av) = silu(v);
                                s.write(sv + av * (T::ONE - sv));
                                a.write(av);
                            }
                        }
                    }
                }
            },
        );
        // SAFETY: the loop above wrote the first n elements of both (z has n).
        unsafe {
            der.set_len(n);
            act.set_len(n);
        }
        Self { der, act }
    }

    /// The site of block i's u_i = ((a·W₁ᵀ + b₁) + b_t) + Q_i of each row's level, from the
    /// product `u` [rows, h] — the first layer's bias, the time layer's bias and its product,
    /// in that order, as [`time_add`] adds them — in one pass (u_i itself is not kept: the
    /// add's separate pass over it was ~2.5% of the demo's step, CPU round 17).
    pub(super) fn time(
        u: &[T],
        (b1, bt): (&[T], &[T]),
        emb: Emb<'_, T>,
        (i, h, qw): (usize, usize, usize),
    ) -> Self {
        let n = u.len();
        let (mut der, mut act) = (Vec::with_capacity(n), Vec::with_capacity(n));
        vectorized(
            #[inline(always)]
            || {
                let rows = (der.spare_capacity_mut().chunks_mut(h))
                    .zip(act.spare_capacity_mut().chunks_mut(h))
                    .zip(u.chunks(h))
                    .zip(emb.idx);
                for (((s, a), u), &l) in rows {
                    let q = &emb.q[l * qw + i * h..l * qw + (i + 1) * h];
                    let outs = s.iter_mut().zip(a);
                    for ((((s, a), &u), &b1), (&bt, &q)) in
                        outs.zip(u).zip(b1).zip(bt.iter().zip(q))
                    {
                        let (sv, av) = silu(((u + b1) + bt) + q);
                        s.write(sv + av * (T::ONE - sv));
                        a.write(av);
                    }
                }
            },
        );
        // SAFETY: the loop above wrote the first n elements of both (u has n, rows of h).
        unsafe {
            der.set_len(n);
            act.set_len(n);
        }
        Self { der, act }
    }

    /// `g ← g · silu'(z)`.
    pub(super) fn backward(&self, g: &mut [T]) {
        vectorized(
            #[inline(always)]
            || {
                for (g, &d) in g.iter_mut().zip(&self.der) {
                    *g = *g * d;
                }
            },
        )
    }
}

/// σ(v) and silu(v) = v·σ(v).
#[inline(always)]
fn silu<T: Sigmoid>(v: T) -> (T, T) {
    let s = v.sig();
    (s, v * s)
}

/// One block's forward activations: per block silu(h_i) and silu(u_i), then silu(h_n) before
/// the output layer (the time path's are per level, in [`super::mlp_time`]).
pub(super) struct Acts<T> {
    blocks: Vec<[Site<T>; 2]>,
    last: Site<T>,
}

impl<T> Acts<T> {
    /// silu(h_i), the input of block i's first layer.
    pub(super) fn pre(&self, i: usize) -> &[T] {
        &self.blocks[i][0].act
    }
    /// silu(u_i), the input of block i's second layer.
    pub(super) fn mid(&self, i: usize) -> &[T] {
        &self.blocks[i][1].act
    }
    /// silu(h_n), the input of the output layer.
    pub(super) fn last(&self) -> &[T] {
        &self.last.act
    }
}

/// One block's gradients with respect to each layer's output (what the weight gradients
/// need), and with respect to the rows' input.
pub(super) struct Grads<T> {
    /// ∂/∂h_i of the residual stream, i = 0..=blocks (h_0 = in_proj(x)).
    pub(super) dh: Vec<Vec<T>>,
    /// ∂/∂u_i, the pre-activation inside block i.
    pub(super) du: Vec<Vec<T>>,
    pub(super) dx: Vec<T>,
}

/// `y = a·Wᵀ + b` (`y` replaced), a [rows, inp], y [rows, out], with `pt` the packed
/// parameters with transposed weights ([`Packing::transposed`]): the bias as the product's
/// initial value.
pub(super) fn linear<T: Sigmoid>(l: &Lin, pt: &[T], a: &[T], y: &mut Vec<T>, par: Parallelism) {
    y.clear();
    for _ in 0..a.len() / l.inp {
        y.extend_from_slice(l.b(pt));
    }
    product(l, pt, a, y, true, par);
}

/// `y = a·Wᵀ` (`y` overwritten) or `y += a·Wᵀ` (when `acc`), no bias: for the layers whose
/// bias joins a later pass over `y` (one pass over the rows fewer than [`linear`]'s).
pub(super) fn product<T: Sigmoid>(
    l: &Lin,
    pt: &[T],
    a: &[T],
    y: &mut [T],
    acc: bool,
    par: Parallelism,
) {
    let rows = a.len() / l.inp;
    mm(
        (rows, l.out, l.inp),
        y,
        acc,
        a,
        (l.inp, 1),
        l.w(pt),
        (l.out, 1),
        par,
    );
}

/// `da (+)= dy·W` for `y = a·Wᵀ + b`.
fn input_grad<T: Sigmoid>(l: &Lin, p: &[T], dy: &[T], da: &mut [T], acc: bool, par: Parallelism) {
    let rows = dy.len() / l.out;
    mm(
        (rows, l.inp, l.out),
        da,
        acc,
        dy,
        (l.out, 1),
        l.w(p),
        (l.inp, 1),
        par,
    );
}

/// The time path's contribution to a block of rows: Q [levels, 3·hidden] of
/// [`super::mlp_time`] and each row's level.
#[derive(Clone, Copy)]
pub(super) struct Emb<'a, T> {
    pub(super) q: &'a [T],
    pub(super) idx: &'a [usize],
}

/// The forward pass of rows `x` [rows, in_dim] with the time path's values `emb` and the
/// parameters with transposed weights `p` ([`Packing::transposed`]); the activations for
/// the backward pass when `keep`.
pub(super) fn forward<T: Sigmoid>(
    lay: &Packing,
    p: &[T],
    x: &[T],
    emb: Emb<'_, T>,
    par: Parallelism,
    keep: bool,
) -> (Vec<T>, Option<Acts<T>>) {
    if !keep {
        return (infer(lay, p, x, emb, par), None);
    }
    let rows = x.len() / lay.in_proj.inp;
    let h = lay.in_proj.out;
    let qw = lay.blocks.len() * h;
    let mut hs = uninit(rows * h);
    product(&lay.in_proj, p, x, &mut hs, false, par);
    let mut blocks = Vec::with_capacity(lay.blocks.len());
    // The bias of the layer that wrote h_i (the input layer's, then each second layer's),
    // added to h_i in the pass that takes its SiLU.
    let mut pending = Some(lay.in_proj.b(p));
    // One product buffer for every block (overwritten by each first layer's product).
    let mut u = uninit(rows * h);
    for (i, [lin1, temb, lin2]) in lay.blocks.iter().enumerate() {
        let a = Site::new(&mut hs, pending);
        product(lin1, p, &a.act, &mut u, false, par);
        let v = Site::time(&u, (lin1.b(p), temb.b(p)), emb, (i, h, qw));
        product(lin2, p, &v.act, &mut hs, true, par);
        pending = Some(lin2.b(p));
        blocks.push([a, v]);
    }
    let last = Site::new(&mut hs, pending);
    let mut out = Vec::with_capacity(rows * lay.out_proj.out);
    linear(&lay.out_proj, p, &last.act, &mut out, par);
    (out, Some(Acts { blocks, last }))
}

/// silu(u_i) in place, u_i = ((a·W₁ᵀ + b₁) + b_t) + Q_i of each row's level — the first
/// layer's bias, the time layer's bias and its product, in that order.
fn time_add<T: Sigmoid>(
    u: &mut [T],
    (b1, bt): (&[T], &[T]),
    emb: Emb<'_, T>,
    (i, h, qw): (usize, usize, usize),
) {
    vectorized(
        #[inline(always)]
        || {
            for (r, &l) in u.chunks_mut(h).zip(emb.idx) {
                let q = &emb.q[l * qw + i * h..l * qw + (i + 1) * h];
                for (((v, &b1), &bt), &q) in r.iter_mut().zip(b1).zip(bt).zip(q) {
                    let z = ((*v + b1) + bt) + q;
                    *v = z * z.sig();
                }
            }
        },
    );
}

/// [`forward`] keeping nothing (sampling): silu(h_i) into one reused buffer, and silu(u_i)
/// in place together with u_i's biases and time-path add — one pass where the training form
/// takes two (the add, then σ and silu stored apart). The same values, bit for bit.
fn infer<T: Sigmoid>(lay: &Packing, p: &[T], x: &[T], emb: Emb<'_, T>, par: Parallelism) -> Vec<T> {
    let rows = x.len() / lay.in_proj.inp;
    let h = lay.in_proj.out;
    let qw = lay.blocks.len() * h;
    // Overwritten in full before each read (the products, silu_into).
    let mut hs = uninit(rows * h);
    let (mut a, mut u) = (Vec::with_capacity(rows * h), uninit(rows * h));
    product(&lay.in_proj, p, x, &mut hs, false, par);
    let mut pending = Some(lay.in_proj.b(p));
    for (i, [lin1, temb, lin2]) in lay.blocks.iter().enumerate() {
        silu_into(&mut hs, pending, &mut a);
        product(lin1, p, &a, &mut u, false, par);
        time_add(&mut u, (lin1.b(p), temb.b(p)), emb, (i, h, qw));
        product(lin2, p, &u, &mut hs, true, par);
        pending = Some(lin2.b(p));
    }
    silu_into(&mut hs, pending, &mut a);
    let mut out = Vec::with_capacity(rows * lay.out_proj.out);
    linear(&lay.out_proj, p, &a, &mut out, par);
    out
}

/// `z ← z + b` (each row, when given) and `out ← silu(z)` (replacing its contents) in one
/// pass, as [`Site::new`] computes them.
fn silu_into<T: Sigmoid>(z: &mut [T], b: Option<&[T]>, out: &mut Vec<T>) {
    out.clear();
    out.reserve(z.len());
    let w = b.map_or(z.len().max(1), <[T]>::len);
    vectorized(
        #[inline(always)]
        || {
            let rows = out.spare_capacity_mut().chunks_mut(w).zip(z.chunks_mut(w));
            match b {
                Some(b) => {
                    for (o, z) in rows {
                        for ((o, z), &b) in o.iter_mut().zip(z).zip(b) {
                            let v = *z + b;
                            *z = v;
                            o.write(v * v.sig());
                        }
                    }
                }
                None => {
                    for (o, z) in rows {
                        for (o, &v) in o.iter_mut().zip(&*z) {
                            o.write(v * v.sig());
                        }
                    }
                }
            }
        },
    );
    // SAFETY: the loop above wrote the first z.len() elements (capacity reserved).
    unsafe { out.set_len(z.len()) };
}

/// The activation gradients of one block of rows from the output gradient `g` [rows, in_dim].
pub(super) fn backward<T: Sigmoid>(
    lay: &Packing,
    p: &[T],
    acts: &Acts<T>,
    g: &[T],
    par: Parallelism,
) -> Grads<T> {
    let n = lay.blocks.len();
    let rows = g.len() / lay.out_proj.out;
    let h = lay.in_proj.out;
    // Every buffer below is overwritten in full (GEMMs with `accumulate == false`, the
    // residual sum) before it is read.
    let zeros = || uninit(rows * h);
    let mut dh: Vec<Vec<T>> = (0..=n).map(|_| zeros()).collect();
    input_grad(&lay.out_proj, p, g, &mut dh[n], false, par);
    acts.last.backward(&mut dh[n]);
    let mut du: Vec<Vec<T>> = (0..n).map(|_| zeros()).collect();
    let mut da = zeros();
    for (i, ([lin1, _, lin2], [a, v])) in lay.blocks.iter().zip(&acts.blocks).enumerate().rev() {
        // h_{i+1} = h_i + lin2(silu(u_i)): ∂h_{i+1} flows on unchanged and into the branch.
        input_grad(lin2, p, &dh[i + 1], &mut du[i], false, par);
        v.backward(&mut du[i]);
        input_grad(lin1, p, &du[i], &mut da, false, par);
        a.backward(&mut da);
        let (lo, hi) = dh.split_at_mut(i + 1);
        vectorized(
            #[inline(always)]
            || {
                for ((d, &next), &v) in lo[i].iter_mut().zip(&hi[0]).zip(&da) {
                    *d = next + v;
                }
            },
        );
    }
    let mut dx = uninit(rows * lay.in_proj.inp);
    input_grad(&lay.in_proj, p, &dh[0], &mut dx, false, par);
    Grads { dh, du, dx }
}

/// One operand pair of a weight gradient: `rows` rows of the layer's output gradient (row
/// stride `dys`) and of its input (contiguous).
pub(super) struct Part<'a, T> {
    pub(super) dy: &'a [T],
    pub(super) dys: usize,
    pub(super) a: &'a [T],
    pub(super) rows: usize,
}

impl<'a, T> Part<'a, T> {
    pub(super) fn new(dy: &'a [T], dys: usize, a: &'a [T], rows: usize) -> Self {
        Self { dy, dys, a, rows }
    }
}

/// One layer's dW [out, inp] = Σ_parts dyᵀ·a and db = Σ_rows dy into `dp` (its slice of the
/// packed gradient, overwritten), the parts summed in order.
pub(super) fn weight_grad<T: Sigmoid>(l: &Lin, parts: &[Part<'_, T>], dp: &mut [T]) {
    let (dw, db) = dp.split_at_mut(l.out * l.inp);
    db.fill(T::ZERO);
    if parts.iter().all(|pt| pt.rows == 0) {
        dw.fill(T::ZERO);
    }
    for (k, pt) in parts.iter().filter(|pt| pt.rows > 0).enumerate() {
        mm(
            (l.out, l.inp, pt.rows),
            dw,
            k > 0,
            pt.dy,
            (1, pt.dys),
            pt.a,
            (l.inp, 1),
            Parallelism::None,
        );
        for r in 0..pt.rows {
            let dy = &pt.dy[r * pt.dys..r * pt.dys + l.out];
            for (s, &v) in db.iter_mut().zip(dy) {
                *s += v;
            }
        }
    }
}
