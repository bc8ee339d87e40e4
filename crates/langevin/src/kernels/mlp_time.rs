//! The residual MLP's time path — the noise-level MLP and each block's W_t·silu(e) — run once
//! per distinct noise level of the batch instead of once per row (a part of [`super::mlp`]).
//!
//! Why: the time path is 43% of the network's FLOPs (time MLP 64→128→128, then three
//! 128×128 products, against 6 + 2 small ones on the rows), and its value depends only on the
//! row's noise level. A sampler step evaluates every row at one level; the demo's training
//! draws 512 of 1000 discrete timesteps per batch, about 400 distinct (CPU round 7 in
//! docs/benchmarks.md). The three W_t products are one GEMM over the weights stacked as
//! [3·hidden, hidden], so each level's three contributions sit side by side in one
//! [levels, 3·hidden] matrix Q. The backward pass sums each row's ∂u_i into its level's row of
//! ∂Q (rows in order) and runs the time path's backward on the levels.
//!
//! The levels are split into chunks by their count only (not by the thread count), so results
//! stay the same on any number of threads.
use std::collections::HashMap;

use gemm::Parallelism;

use super::conv::mm;
use super::cpu_conv::uninit;
use super::mlp::{Packing, Sigmoid};
use super::mlp_rows::{product, Grads, Site, ROWS};
use super::real::Real;
use super::simd::vectorized;

/// The batch's distinct noise levels: `idx[r]` is row r's level, `first[u]` the first row at
/// level u (levels numbered in order of first appearance).
pub(super) struct Levels {
    pub(super) idx: Vec<usize>,
    first: Vec<usize>,
}

impl Levels {
    /// The levels of the embedding rows `emb` [rows, width], rows with the same bits sharing
    /// one; with `merge` false every row is its own level (when the embedding's own gradient
    /// is asked for, which is per row).
    pub(super) fn of<T: Real>(emb: &[T], width: usize, merge: bool) -> Self {
        let rows = emb.len().checked_div(width).unwrap_or(0);
        if !merge || width == 0 {
            return Self {
                idx: (0..rows).collect(),
                first: (0..rows).collect(),
            };
        }
        // Rows keyed by a hash of their bits (hashing and allocating a key per row with the
        // default hasher was ~1.4% of the demo's step, on the serial path); rows of one key are
        // compared in full, and a row that only collides starts a level of its own. The hash
        // reads eight values spread over the row (a chain over all 64 was still ~1% of the
        // step, serial; sinusoidal embeddings of different levels differ in each of them).
        let stride = width.div_ceil(8);
        let hash = |e: &[T]| {
            e.iter().step_by(stride).fold(0u64, |h, v| {
                (h.rotate_left(5) ^ v.to_f64().to_bits()).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
            })
        };
        let same = |a: &[T], b: &[T]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits())
        };
        let mut seen: HashMap<u64, usize> = HashMap::with_capacity(rows);
        let (mut idx, mut first) = (Vec::with_capacity(rows), vec![]);
        for (r, e) in emb.chunks(width).enumerate() {
            let key = hash(e);
            let level = match seen.get(&key) {
                Some(&u) if same(e, &emb[first[u] * width..(first[u] + 1) * width]) => u,
                hit => {
                    if hit.is_none() {
                        seen.insert(key, first.len());
                    }
                    first.push(r);
                    first.len() - 1
                }
            };
            idx.push(level);
        }
        Self { idx, first }
    }

    pub(super) fn count(&self) -> usize {
        self.first.len()
    }

    /// The levels' chunks: ⌈count / ROWS⌉ near-equal ranges (the count alone decides them).
    fn chunks(&self) -> Vec<std::ops::Range<usize>> {
        let u = self.count();
        let n = u.div_ceil(ROWS).max(1);
        (0..n).map(|c| c * u / n..(c + 1) * u / n).collect()
    }
}

/// The time path of one chunk of levels.
pub(super) struct Chunk<T> {
    pub(super) range: std::ops::Range<usize>,
    /// The chunk's embedding rows [n, temb_dim].
    pub(super) emb: Vec<T>,
    pub(super) t1: Site<T>,
    pub(super) t2: Site<T>,
}

/// The time path's forward values: per chunk its sites, and Q [levels, 3·hidden] with
/// Q[u, i·h..(i+1)·h] = W_t,i·silu(e_u) (no bias: added per row as `linear` would).
pub(super) struct TimePath<T> {
    pub(super) chunks: Vec<Chunk<T>>,
    pub(super) q: Vec<T>,
}

/// The blocks' W_t weights stacked [3·hidden, hidden] (blocks × hidden rows).
fn stacked_temb<T: Real>(lay: &Packing, p: &[T]) -> Vec<T> {
    let mut w = Vec::with_capacity(lay.blocks.len() * lay.in_proj.out * lay.in_proj.out);
    for [_, temb, _] in &lay.blocks {
        w.extend_from_slice(temb.w(p));
    }
    w
}

/// The same weights transposed, [hidden, 3·hidden], from the transposed parameters `pt`
/// ([`super::mlp::Packing::transposed`]): the operand `gemm` reads without a strided gather.
fn stacked_temb_t<T: Real>(lay: &Packing, pt: &[T]) -> Vec<T> {
    let h = lay.in_proj.out;
    let mut w = Vec::with_capacity(lay.blocks.len() * h * h);
    for i in 0..h {
        for [_, temb, _] in &lay.blocks {
            w.extend_from_slice(&temb.w(pt)[i * h..(i + 1) * h]);
        }
    }
    w
}

/// `f(item)` over `items`, on the calling thread or over the pool.
fn each<I: Send, R: Send>(
    threads: usize,
    items: Vec<I>,
    f: impl Fn(I) -> R + Sync + Send,
) -> Vec<R> {
    use rayon::prelude::*;
    if threads <= 1 {
        items.into_iter().map(f).collect()
    } else {
        items.into_par_iter().map(f).collect()
    }
}

/// Splits `v` into consecutive mutable pieces of `rows[c] · width` values.
fn pieces<'a, T>(
    mut v: &'a mut [T],
    ranges: &[std::ops::Range<usize>],
    width: usize,
) -> Vec<&'a mut [T]> {
    ranges
        .iter()
        .map(|r| {
            let (head, tail) = std::mem::take(&mut v).split_at_mut(r.len() * width);
            v = tail;
            head
        })
        .collect()
}

/// The time path at the levels of `emb` [rows, temb_dim], with the transposed parameters `pt`
/// ([`super::mlp::Packing::transposed`]); `(threads, par)` as the row blocks'.
pub(super) fn forward<T: Sigmoid>(
    lay: &Packing,
    pt: &[T],
    emb: &[T],
    lv: &Levels,
    (threads, par): (usize, Parallelism),
) -> TimePath<T> {
    let (de, h, nb) = (lay.time1.inp, lay.in_proj.out, lay.blocks.len());
    let wt = stacked_temb_t(lay, pt);
    let ranges = lv.chunks();
    // Overwritten in full by each chunk's GEMM (zeroing it was ~0.7% of the demo's step, on
    // the serial thread).
    let mut q = uninit(lv.count() * nb * h);
    let jobs: Vec<_> = ranges
        .iter()
        .cloned()
        .zip(pieces(&mut q, &ranges, nb * h))
        .collect();
    let chunks = each(threads, jobs, |(range, q)| {
        let mut e = Vec::with_capacity(range.len() * de);
        for &r in &lv.first[range.clone()] {
            e.extend_from_slice(&emb[r * de..(r + 1) * de]);
        }
        // Each layer's bias joins the pass that takes its SiLU.
        let (t1, t2) = (&lay.time1, &lay.time2);
        let mut z = uninit(range.len() * t1.out);
        product(t1, pt, &e, &mut z, false, par);
        let t1 = Site::new(&mut z, Some(t1.b(pt)));
        let mut z = uninit(range.len() * t2.out);
        product(t2, pt, &t1.act, &mut z, false, par);
        let t2 = Site::new(&mut z, Some(t2.b(pt)));
        if nb > 0 {
            let n = range.len();
            mm(
                (n, nb * h, h),
                q,
                false,
                &t2.act,
                (h, 1),
                &wt,
                (nb * h, 1),
                par,
            );
        }
        Chunk {
            range,
            emb: e,
            t1,
            t2,
        }
    });
    TimePath { chunks, q }
}

/// The time path's gradients per chunk: ∂Q, ∂ of the second and first layers' outputs, and
/// of the embedding rows when asked for.
pub(super) struct TimeGrads<T> {
    pub(super) dq: Vec<Vec<T>>,
    pub(super) de: Vec<Vec<T>>,
    pub(super) ds: Vec<Vec<T>>,
    pub(super) demb: Vec<Vec<T>>,
}

/// ∂Q of the levels in `range` ([n, blocks·hidden]): each row's ∂u_i (from the row blocks'
/// `grads`, rows in order) added into its level's row, so the sums do not depend on the
/// thread count.
fn level_grads<T: Sigmoid>(
    grads: &[Grads<T>],
    idx: &[usize],
    range: &std::ops::Range<usize>,
    h: usize,
) -> Vec<T> {
    let nb = grads.first().map_or(0, |g| g.du.len());
    let qw = nb * h;
    let mut dq = vec![T::ZERO; range.len() * qw];
    if qw == 0 {
        return dq;
    }
    let mut levels = idx.iter();
    vectorized(
        #[inline(always)]
        || {
            for g in grads {
                for r in 0..g.dh[0].len() / h {
                    let l = *levels.next().expect("one level per row");
                    if !range.contains(&l) {
                        continue;
                    }
                    let l = l - range.start;
                    for (d, du) in dq[l * qw..(l + 1) * qw].chunks_mut(h).zip(&g.du) {
                        for (d, &v) in d.iter_mut().zip(&du[r * h..(r + 1) * h]) {
                            *d += v;
                        }
                    }
                }
            }
        },
    );
    dq
}

/// The time path's backward pass from the row blocks' gradients `grads` (rows at levels
/// `idx`): per chunk of levels (in parallel) ∂Q, then the time MLP's gradients.
pub(super) fn backward<T: Sigmoid>(
    lay: &Packing,
    p: &[T],
    tp: &TimePath<T>,
    (grads, idx): (&[Grads<T>], &[usize]),
    need_demb: bool,
    (threads, par): (usize, Parallelism),
) -> TimeGrads<T> {
    let (h, nb) = (lay.in_proj.out, lay.blocks.len());
    let w = &stacked_temb(lay, p);
    let per = each(threads, tp.chunks.iter().collect(), |c| {
        let n = c.range.len();
        let dq = level_grads(grads, idx, &c.range, h);
        // The GEMM overwrites ∂e; without blocks it is zero.
        let mut de = if nb > 0 {
            uninit(n * h)
        } else {
            vec![T::ZERO; n * h]
        };
        if nb > 0 {
            mm(
                (n, h, nb * h),
                &mut de,
                false,
                &dq,
                (nb * h, 1),
                w,
                (h, 1),
                par,
            );
        }
        c.t2.backward(&mut de);
        let mut ds = uninit(n * h);
        let t2 = &lay.time2;
        mm((n, h, h), &mut ds, false, &de, (h, 1), t2.w(p), (h, 1), par);
        c.t1.backward(&mut ds);
        let mut demb = vec![];
        if need_demb {
            let t1 = &lay.time1;
            demb = uninit(n * t1.inp);
            mm(
                (n, t1.inp, h),
                &mut demb,
                false,
                &ds,
                (h, 1),
                t1.w(p),
                (t1.inp, 1),
                par,
            );
        }
        (dq, de, ds, demb)
    });
    let mut g = TimeGrads {
        dq: vec![],
        de: vec![],
        ds: vec![],
        demb: vec![],
    };
    for (dq, de, ds, demb) in per {
        g.dq.push(dq);
        g.de.push(de);
        g.ds.push(ds);
        g.demb.push(demb);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_number_rows_by_first_appearance() {
        let (a, b, c) = ([1.0f32, 2.0], [1.0f32, 2.5], [0.0f32, 2.0]);
        let emb: Vec<f32> = [a, b, a, c, b, b].concat();
        let lv = Levels::of(&emb, 2, true);
        assert_eq!(lv.idx, [0, 1, 0, 2, 1, 1]);
        assert_eq!(lv.first, [0, 1, 3]);
        let each = Levels::of(&emb, 2, false);
        assert_eq!(each.idx, [0, 1, 2, 3, 4, 5]);
        assert_eq!(each.count(), 6);
    }

    /// The op's buffers left unwritten ([`uninit`], NaN in this build) are all overwritten:
    /// every output and gradient is finite, with levels repeated or not and 0 to 2 blocks.
    #[test]
    fn no_unwritten_value_is_read() {
        use crate::kernels::mlp::{residual_mlp, MlpDims};
        use candle_core::{Device, Tensor, Var};
        let dev = Device::Cpu;
        for blocks in 0..3 {
            let d = MlpDims {
                in_dim: 3,
                hidden: 8,
                blocks,
                temb_dim: 4,
            };
            let x = Tensor::randn(0f32, 1.0, (300, 3), &dev).unwrap();
            let levels = Tensor::randn(0f32, 1.0, (7, 4), &dev).unwrap();
            let idx: Vec<u32> = (0..300).map(|r| r % 7).collect();
            let e = levels
                .index_select(&Tensor::new(idx.as_slice(), &dev).unwrap(), 0)
                .unwrap();
            let p = Var::randn(0f32, 0.3, d.packed_len(), &dev).unwrap();
            for tracked in [false, true] {
                let ev = Var::from_tensor(&e).unwrap();
                let emb = if tracked {
                    ev.as_tensor().clone()
                } else {
                    e.clone()
                };
                let y = residual_mlp(&x, &emb, p.as_tensor(), d).unwrap();
                let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                let mut all = vec![y, g.get(p.as_tensor()).unwrap().clone()];
                if tracked {
                    all.push(g.get(ev.as_tensor()).unwrap().clone());
                }
                for t in all {
                    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                    assert!(
                        v.iter().all(|v| v.is_finite()),
                        "{blocks} blocks, {tracked}"
                    );
                }
            }
        }
    }

    #[test]
    fn chunks_cover_the_levels_and_depend_on_their_count_only() {
        let lv = |n: usize| Levels {
            idx: vec![],
            first: (0..n).collect(),
        };
        assert_eq!(lv(600).chunks(), [0..200, 200..400, 400..600]);
        assert_eq!(lv(ROWS).chunks(), vec![0..ROWS; 1]);
        assert_eq!(lv(ROWS + 1).chunks(), [0..ROWS / 2, ROWS / 2..ROWS + 1]);
        assert_eq!(lv(0).chunks(), vec![0..0; 1]);
    }
}
