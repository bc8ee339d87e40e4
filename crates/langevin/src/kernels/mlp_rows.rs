//! The residual MLP's forward and backward passes over one block of batch rows, and the weight
//! gradients summed over the blocks (the parts of [`super::mlp`]).
//!
//! Why blocks: the demo's training step (batch 512, width 128) is ~30 GEMMs of about
//! 512×128×128, and splitting each of them over the threads inside `gemm` gave 1.13× on 2
//! threads (a fork, a join and a packing of both operands per product, measured in
//! docs/benchmarks.md, CPU round 3). Here a thread takes a block of [`ROWS`] rows through every
//! layer with one-thread GEMMs; the backward pass does the same for the activation gradients
//! and then computes each layer's weight gradient as one task, summing the blocks in order.
//! Two forks per pass, and the blocks do not depend on the thread count, so neither do the
//! results.
use gemm::Parallelism;

use super::conv::mm;
use super::mlp::{Lin, Packing, Sigmoid};
use super::simd::vectorized;

/// Rows per block. Fixed (not derived from the thread count) so that results are the same on
/// any number of threads. Measured on the demo's training (batch 512, 2 threads, 300 steps):
/// 256 rows 3.08 s, 128 rows 3.35 s (each GEMM call packs its operands, so longer blocks
/// amortise more).
pub(super) const ROWS: usize = 256;

/// A SiLU site: pre-activation z, σ(z) and silu(z) = z·σ(z), each [rows, width].
pub(super) struct Site<T> {
    z: Vec<T>,
    sig: Vec<T>,
    pub(super) act: Vec<T>,
}

impl<T: Sigmoid> Site<T> {
    fn new(z: Vec<T>) -> Self {
        let n = z.len();
        let (mut sig, mut act) = (Vec::with_capacity(n), Vec::with_capacity(n));
        // Written in place of fresh buffers (copying or zeroing them first was 22% of a
        // sampler step), in a plain loop: `extend` / `collect` stay out-of-line and miss AVX2.
        vectorized(|| {
            let outs = sig
                .spare_capacity_mut()
                .iter_mut()
                .zip(act.spare_capacity_mut());
            for ((s, a), &v) in outs.zip(&z) {
                let sv = v.sig();
                s.write(sv);
                a.write(v * sv);
            }
        });
        // SAFETY: the loop above wrote the first n elements of both (z has n).
        unsafe {
            sig.set_len(n);
            act.set_len(n);
        }
        Self { z, sig, act }
    }

    /// An empty site (the time MLP's, when it ran once for every row: [`Emb::Shared`]).
    fn none() -> Self {
        Self {
            z: vec![],
            sig: vec![],
            act: vec![],
        }
    }

    /// `g ← g · silu'(z)`, silu'(z) = σ(z)·(1 + z·(1 − σ(z))).
    fn backward(&self, g: &mut [T]) {
        vectorized(|| {
            for ((g, &z), &s) in g.iter_mut().zip(&self.z).zip(&self.sig) {
                *g = *g * (s * (T::ONE + z * (T::ONE - s)));
            }
        })
    }
}

/// One block's forward activations: the two time-MLP sites, then per block silu(h_i) and
/// silu(u_i), then silu(h_n) before the output layer.
pub(super) struct Acts<T> {
    t1: Site<T>,
    t2: Site<T>,
    blocks: Vec<[Site<T>; 2]>,
    last: Site<T>,
}

/// One block's gradients with respect to each layer's output (what the weight gradients
/// need), and with respect to the op's inputs.
pub(super) struct Grads<T> {
    /// ∂/∂h_i of the residual stream, i = 0..=blocks (h_0 = in_proj(x)).
    dh: Vec<Vec<T>>,
    /// ∂/∂u_i, the pre-activation inside block i.
    du: Vec<Vec<T>>,
    /// ∂/∂ of the time MLP's second and first layer outputs.
    de: Vec<T>,
    ds: Vec<T>,
    pub(super) dx: Vec<T>,
    pub(super) demb: Vec<T>,
}

/// `y = a·Wᵀ + b` (`y` replaced) or `y += a·Wᵀ + b` (when `acc`), a [rows, inp], y [rows, out].
fn linear<T: Sigmoid>(l: &Lin, p: &[T], a: &[T], y: &mut Vec<T>, acc: bool, par: Parallelism) {
    let rows = a.len() / l.inp;
    if !acc {
        y.clear();
        for _ in 0..rows {
            y.extend_from_slice(l.b(p));
        }
    } else {
        for r in y.chunks_mut(l.out) {
            for (v, &b) in r.iter_mut().zip(l.b(p)) {
                *v += b;
            }
        }
    }
    mm(
        (rows, l.out, l.inp),
        y,
        true,
        a,
        (l.inp, 1),
        l.w(p),
        (1, l.inp),
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

/// The noise-level embeddings of a block of rows.
#[derive(Clone, Copy)]
pub(super) enum Emb<'a, T> {
    /// One embedding per row, [rows, temb_dim].
    Rows(&'a [T]),
    /// Every row at the same noise level (a sampler step): the time MLP's contribution
    /// W_t·silu(e) to each block, one [hidden] vector per block ([`shared_time_path`]).
    Shared(&'a [Vec<T>]),
}

/// The time MLP and each block's W_t·silu(e) for one embedding row `emb` [temb_dim], without
/// the bias (added per row as in [`forward`]). Written because every row of a sampler's network
/// evaluation has the same noise level, and this path is 43% of the network's FLOPs. The same
/// function as the per-row path; its one-row products may round differently in the last bits
/// (tested to 1e-6 relative).
pub(super) fn shared_time_path<T: Sigmoid>(lay: &Packing, p: &[T], emb: &[T]) -> Vec<Vec<T>> {
    let par = Parallelism::None;
    let mut z = vec![];
    linear(&lay.time1, p, emb, &mut z, false, par);
    let t1 = Site::new(z);
    let mut z = vec![];
    linear(&lay.time2, p, &t1.act, &mut z, false, par);
    let t2 = Site::new(z);
    lay.blocks
        .iter()
        .map(|[_, temb, _]| {
            let mut q = vec![T::ZERO; temb.out];
            mm(
                (1, temb.out, temb.inp),
                &mut q,
                false,
                &t2.act,
                (temb.inp, 1),
                temb.w(p),
                (1, temb.inp),
                par,
            );
            q
        })
        .collect()
}

/// The forward pass of rows `x` [rows, in_dim] at noise-level embeddings `emb`.
pub(super) fn forward<T: Sigmoid>(
    lay: &Packing,
    p: &[T],
    x: &[T],
    emb: Emb<'_, T>,
    par: Parallelism,
) -> (Vec<T>, Acts<T>) {
    let rows = x.len() / lay.in_proj.inp;
    let h = lay.in_proj.out;
    let buf = || Vec::with_capacity(rows * h);
    let (t1, t2) = match emb {
        Emb::Rows(emb) => {
            let mut z = buf();
            linear(&lay.time1, p, emb, &mut z, false, par);
            let t1 = Site::new(z);
            let mut z = buf();
            linear(&lay.time2, p, &t1.act, &mut z, false, par);
            (t1, Site::new(z))
        }
        Emb::Shared(_) => (Site::none(), Site::none()),
    };
    let mut hs = buf();
    linear(&lay.in_proj, p, x, &mut hs, false, par);
    let mut blocks = Vec::with_capacity(lay.blocks.len());
    for (i, [lin1, temb, lin2]) in lay.blocks.iter().enumerate() {
        let a = Site::new(hs.clone());
        let mut u = buf();
        linear(lin1, p, &a.act, &mut u, false, par);
        match emb {
            Emb::Rows(_) => linear(temb, p, &t2.act, &mut u, true, par),
            // The same sums as `linear`'s: (u + b) + W_t·silu(e).
            Emb::Shared(q) => {
                for r in u.chunks_mut(h) {
                    for ((v, &b), &q) in r.iter_mut().zip(temb.b(p)).zip(&q[i]) {
                        *v = (*v + b) + q;
                    }
                }
            }
        }
        let v = Site::new(u);
        linear(lin2, p, &v.act, &mut hs, true, par);
        blocks.push([a, v]);
    }
    let last = Site::new(hs);
    let mut out = Vec::with_capacity(rows * lay.out_proj.out);
    linear(&lay.out_proj, p, &last.act, &mut out, false, par);
    (
        out,
        Acts {
            t1,
            t2,
            blocks,
            last,
        },
    )
}

/// The activation gradients of one block of rows from the output gradient `g` [rows, in_dim].
pub(super) fn backward<T: Sigmoid>(
    lay: &Packing,
    p: &[T],
    acts: &Acts<T>,
    g: &[T],
    need_demb: bool,
    par: Parallelism,
) -> Grads<T> {
    let n = lay.blocks.len();
    let rows = g.len() / lay.out_proj.out;
    let h = lay.in_proj.out;
    let zeros = || vec![T::ZERO; rows * h];
    let mut dh: Vec<Vec<T>> = (0..=n).map(|_| zeros()).collect();
    input_grad(&lay.out_proj, p, g, &mut dh[n], false, par);
    acts.last.backward(&mut dh[n]);
    let mut du: Vec<Vec<T>> = (0..n).map(|_| zeros()).collect();
    let mut de = zeros();
    let mut da = zeros();
    for (i, ([lin1, temb, lin2], [a, v])) in lay.blocks.iter().zip(&acts.blocks).enumerate().rev() {
        // h_{i+1} = h_i + lin2(silu(u_i)): ∂h_{i+1} flows on unchanged and into the branch.
        input_grad(lin2, p, &dh[i + 1], &mut du[i], false, par);
        v.backward(&mut du[i]);
        input_grad(temb, p, &du[i], &mut de, i + 1 < n, par);
        input_grad(lin1, p, &du[i], &mut da, false, par);
        a.backward(&mut da);
        let (lo, hi) = dh.split_at_mut(i + 1);
        vectorized(|| {
            for ((d, &next), &v) in lo[i].iter_mut().zip(&hi[0]).zip(&da) {
                *d = next + v;
            }
        });
    }
    let mut dx = vec![T::ZERO; rows * lay.in_proj.inp];
    input_grad(&lay.in_proj, p, &dh[0], &mut dx, false, par);
    acts.t2.backward(&mut de);
    let mut ds = zeros();
    input_grad(&lay.time2, p, &de, &mut ds, false, par);
    acts.t1.backward(&mut ds);
    // The embedding of a noise level is a constant in training: no gradient unless asked.
    let mut demb = vec![];
    if need_demb {
        demb.resize(rows * lay.time1.inp, T::ZERO);
        input_grad(&lay.time1, p, &ds, &mut demb, false, par);
    }
    Grads {
        dh,
        du,
        de,
        ds,
        dx,
        demb,
    }
}

/// Which output gradient a layer's weight gradient reads.
#[derive(Clone, Copy)]
pub(super) enum Dy {
    Out,
    Dh(usize),
    Du(usize),
    De,
    Ds,
}

/// Which input a layer's weight gradient reads.
#[derive(Clone, Copy)]
pub(super) enum In {
    X,
    Emb,
    T1,
    T2,
    /// silu(h_i), the input of block i's first layer.
    Pre(usize),
    /// silu(u_i), the input of block i's second layer.
    Mid(usize),
    Last,
}

/// One block of rows as the weight gradients see it.
pub(super) struct RowBlock<'a, T> {
    pub x: &'a [T],
    pub emb: &'a [T],
    pub g: &'a [T],
    pub acts: &'a Acts<T>,
    pub grads: &'a Grads<T>,
}

impl<T> RowBlock<'_, T> {
    fn dy(&self, d: Dy) -> &[T] {
        match d {
            Dy::Out => self.g,
            Dy::Dh(i) => &self.grads.dh[i],
            Dy::Du(i) => &self.grads.du[i],
            Dy::De => &self.grads.de,
            Dy::Ds => &self.grads.ds,
        }
    }
    fn input(&self, a: In) -> &[T] {
        match a {
            In::X => self.x,
            In::Emb => self.emb,
            In::T1 => &self.acts.t1.act,
            In::T2 => &self.acts.t2.act,
            In::Pre(i) => &self.acts.blocks[i][0].act,
            In::Mid(i) => &self.acts.blocks[i][1].act,
            In::Last => &self.acts.last.act,
        }
    }
}

/// The layers in packing order with the gradient and input each weight gradient reads.
pub(super) fn weight_grad_tasks(lay: &Packing) -> Vec<(Lin, Dy, In)> {
    let mut t = vec![
        (lay.time1, Dy::Ds, In::Emb),
        (lay.time2, Dy::De, In::T1),
        (lay.in_proj, Dy::Dh(0), In::X),
    ];
    for (i, [lin1, temb, lin2]) in lay.blocks.iter().enumerate() {
        t.push((*lin1, Dy::Du(i), In::Pre(i)));
        t.push((*temb, Dy::Du(i), In::T2));
        t.push((*lin2, Dy::Dh(i + 1), In::Mid(i)));
    }
    t.push((lay.out_proj, Dy::Out, In::Last));
    t
}

/// One layer's dW [out, inp] = Σ_blocks dyᵀ·a and db = Σ_rows dy into `dp` (its slice of the
/// packed gradient, overwritten), the blocks summed in order.
pub(super) fn weight_grad<T: Sigmoid>(
    (l, dy, a): (Lin, Dy, In),
    blocks: &[RowBlock<'_, T>],
    dp: &mut [T],
    par: Parallelism,
) {
    let (dw, db) = dp.split_at_mut(l.out * l.inp);
    db.fill(T::ZERO);
    for (k, blk) in blocks.iter().enumerate() {
        let (dy, a) = (blk.dy(dy), blk.input(a));
        let rows = dy.len() / l.out;
        mm(
            (l.out, l.inp, rows),
            dw,
            k > 0,
            dy,
            (1, l.out),
            a,
            (l.inp, 1),
            par,
        );
        for r in dy.chunks(l.out) {
            for (s, &v) in db.iter_mut().zip(r) {
                *s += v;
            }
        }
    }
}
