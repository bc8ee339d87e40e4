//! The residual MLP of [`crate::nn::mlp`] as one fused CPU op, forward and backward.
//!
//! Written because the 2-D demo's training step was dominated by per-op overhead on small
//! tensors (issue 17): a `perf` profile of `langevin train` on the swiss roll (3 blocks of 128,
//! batch 512) had 28% in the GEMM micro-kernel and the rest in candle's elementwise ops
//! (SiLU's `exp` twice per element, once more in its backward), their thread barriers, fresh
//! buffers and copies. Here the whole network is one autograd node: GEMMs straight into
//! preallocated buffers, each bias added in the pass that takes the SiLU of its layer's output
//! (the output layer's as the GEMM's initial value), SiLU's derivative saved in the forward
//! pass for the backward one, and every parameter's gradient written into one packed vector. The batch is cut into fixed blocks of rows that threads take whole
//! ([`super::mlp_rows`]), the time path runs once per distinct noise level
//! ([`super::mlp_time`]), and each weight gradient sums its blocks in order, so results do not
//! depend on the thread count.
use std::any::Any;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu_conv::uninit;
use super::mlp_rows::{self, Acts, Emb, Part, ROWS};
use super::mlp_time::{self, Levels, TimePath};
use super::real::{data, threads, with_data, Real};

/// The network's sizes (as [`crate::nn::mlp::MlpConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpDims {
    pub in_dim: usize,
    pub hidden: usize,
    pub blocks: usize,
    pub temb_dim: usize,
}

/// One linear layer's place in the packed parameter vector: weight [out, inp] then bias [out].
#[derive(Debug, Clone, Copy)]
pub(super) struct Lin {
    off: usize,
    pub(super) inp: usize,
    pub(super) out: usize,
}

impl Lin {
    pub(super) fn w<'a, T>(&self, p: &'a [T]) -> &'a [T] {
        &p[self.off..self.off + self.out * self.inp]
    }
    pub(super) fn b<'a, T>(&self, p: &'a [T]) -> &'a [T] {
        let o = self.off + self.out * self.inp;
        &p[o..o + self.out]
    }
    pub(super) fn len(&self) -> usize {
        self.out * (self.inp + 1)
    }
}

impl Packing {
    /// Every layer, in packing order.
    fn lins(&self) -> Vec<Lin> {
        let mut v = vec![self.time1, self.time2, self.in_proj];
        v.extend(self.blocks.iter().flatten().copied());
        v.push(self.out_proj);
        v
    }

    /// The packed parameters with each layer's weight stored transposed, [inp, out], the
    /// biases as they are: what [`mlp_rows::linear`] multiplies by. Written because `gemm`
    /// packs an [out, inp] weight again for every call (its copy of the weight's strided
    /// columns was 10% of the MLP forward's samples at 256 rows per call, `perf`, CPU round
    /// 16), and reads the transposed one in place; the products are the same sums in the
    /// same order.
    pub(super) fn transposed<T: Real>(&self, p: &[T]) -> Vec<T> {
        // Every value is written below: each layer's slice is its transposed weight, then its
        // bias (the layers tile the packed vector in order).
        let mut t = uninit(p.len());
        let mut jobs = Vec::with_capacity(self.lins().len());
        let mut rest = t.as_mut_slice();
        for l in self.lins() {
            let (head, tail) = rest.split_at_mut(l.len());
            jobs.push((l, head));
            rest = tail;
        }
        // In tiles of 16×16, so that both sides stay within a few cache lines; over the
        // threads by layer (it runs once per forward, on the serial path of a training step:
        // 0.26 ms of the demo's ~7 ms two-thread step when it was one thread's, CPU round 17).
        let one = |(l, dst): (Lin, &mut [T])| {
            let w = l.w(p);
            let (dw, db) = dst.split_at_mut(l.out * l.inp);
            db.copy_from_slice(l.b(p));
            const B: usize = 16;
            // The writes run along the transposed rows, the reads across the tile's rows of W
            // (strided writes into the fresh buffer were store-bound: 867 → 730 samples of 300
            // two-thread demo steps, CPU round 17).
            for i0 in (0..l.inp).step_by(B) {
                for o0 in (0..l.out).step_by(B) {
                    let o1 = (o0 + B).min(l.out);
                    for i in i0..(i0 + B).min(l.inp) {
                        let dst = &mut dw[i * l.out + o0..i * l.out + o1];
                        for (o, d) in (o0..).zip(dst) {
                            *d = w[o * l.inp + i];
                        }
                    }
                }
            }
        };
        if threads() <= 1 {
            jobs.into_iter().for_each(one);
        } else {
            jobs.into_par_iter().for_each(one);
        }
        t
    }
}

/// The layers in packing order: `time1, time2, in_proj, (lin1, temb, lin2) × blocks,
/// out_proj` — the order [`crate::nn::mlp::Mlp`] concatenates its parameters in.
pub(super) struct Packing {
    pub(super) time1: Lin,
    pub(super) time2: Lin,
    pub(super) in_proj: Lin,
    pub(super) blocks: Vec<[Lin; 3]>,
    pub(super) out_proj: Lin,
    len: usize,
}

impl MlpDims {
    fn layout(&self) -> Packing {
        let mut off = 0;
        let mut lin = |inp, out| {
            let l = Lin { off, inp, out };
            off += l.len();
            l
        };
        let h = self.hidden;
        let time1 = lin(self.temb_dim, h);
        let time2 = lin(h, h);
        let in_proj = lin(self.in_dim, h);
        let blocks = (0..self.blocks)
            .map(|_| [lin(h, h), lin(h, h), lin(h, h)])
            .collect();
        let out_proj = lin(h, self.in_dim);
        Packing {
            time1,
            time2,
            in_proj,
            blocks,
            out_proj,
            len: off,
        }
    }

    /// Number of values in the packed parameter vector.
    pub fn packed_len(&self) -> usize {
        self.layout().len
    }
}

/// `out = silu(h_n)·W_outᵀ + b_out` of the residual MLP, with `x` [B, in_dim], `emb` the
/// sinusoidal noise embedding [B, temb_dim] and `params` every weight and bias flattened and
/// concatenated in packing order ([`MlpDims::packed_len`] values). CPU, f32 or f64.
pub fn residual_mlp(
    x: &Tensor,
    emb: &Tensor,
    params: &Tensor,
    dims: MlpDims,
) -> candle_core::Result<Tensor> {
    let (b, d) = x.dims2()?;
    let bad = |what: String| Err(candle_core::Error::Msg(format!("residual mlp: {what}")));
    if d != dims.in_dim || emb.dims2()? != (b, dims.temb_dim) {
        return bad(format!(
            "x {:?} / emb {:?} for {dims:?}",
            x.dims(),
            emb.dims()
        ));
    }
    if params.dims1()? != dims.packed_len() {
        return bad(format!("{} packed parameters", params.dims1()?));
    }
    let save = x.track_op() || emb.track_op() || params.track_op();
    let op = MlpOp {
        dims,
        saved: Mutex::new(None),
        save,
        need_demb: emb.track_op(),
    };
    x.contiguous()?
        .apply_op3(&emb.contiguous()?, &params.contiguous()?, op)
}

struct MlpOp {
    dims: MlpDims,
    /// The forward pass's values (a [`Saved`] of the op's dtype), kept for `bwd`.
    saved: Mutex<Option<Box<dyn Any + Send>>>,
    save: bool,
    /// Whether the embedding input needs a gradient (not in training: it is a constant).
    need_demb: bool,
}

/// How the blocks of rows are run: the threads for the loop over blocks, and for the GEMMs
/// inside one (all of them when there are fewer blocks than threads, as at batch 1).
fn plan(blocks: usize) -> (usize, Parallelism) {
    match threads() {
        1 => (1, Parallelism::None),
        n if blocks < n => (1, Parallelism::Rayon(n)),
        n => (n, Parallelism::None),
    }
}

/// `f(i)` for i in 0..n, on the calling thread or over the pool.
fn map_blocks<R: Send>(n: usize, threads: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if threads <= 1 {
        (0..n).map(f).collect()
    } else {
        (0..n).into_par_iter().map(f).collect()
    }
}

/// The logistic function at a SiLU site.
pub trait Sigmoid: Real {
    fn sig(self) -> Self;
}

impl Sigmoid for f64 {
    #[inline(always)]
    fn sig(self) -> Self {
        self.sigmoid()
    }
}

impl Sigmoid for f32 {
    #[inline(always)]
    fn sig(self) -> Self {
        1.0 / (1.0 + exp_f32(-self))
    }
}

/// e^x in f32 to within a few ulp for x in [−87, 88] (clamped outside): Cephes' `expf` (x = n·ln 2 + r with n rounded to nearest,
/// |r| ≤ ln 2 / 2, a degree-6 polynomial for e^r, 2^n from the exponent bits), written
/// without branches or calls so that loops over it vectorise. Measured: libm's scalar `expf`
/// and the loop around it were 19% of the demo's training step; this makes it about 3%.
/// The reduction and the polynomial in fused multiply-adds (`mul_add`, one rounding each and
/// half the instructions: 0.73–0.84 → 0.46 ns per value in AVX-512, CPU round 15; worst
/// relative error 7.5e-8 over [−15, 5]). A fused multiply-add gives the same bits on every
/// path: an FMA instruction in [`super::simd::vectorized`]'s AVX-512 and AVX2 + FMA code, libm's
/// `fmaf` elsewhere (correct, slower; every caller runs inside `vectorized`).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // Comparisons rather than f32::max / min, whose NaN rules keep the loop scalar.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    // 1.5·2^23: adding it rounds to the nearest integer n, which then sits in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let big = x.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = big - ROUND;
    // r = x − n·ln 2 with ln 2 in two parts (Cody–Waite).
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut y = 1.987_569_1e-4f32;
    y = y.mul_add(r, 1.398_199_9e-3);
    y = y.mul_add(r, 8.333_452e-3);
    y = y.mul_add(r, 4.166_579_6e-2);
    y = y.mul_add(r, 0.166_666_65);
    y = y.mul_add(r, 0.5);
    let y = y.mul_add(r * r, r) + 1.0;
    // 2^n from the exponent bits: n + 127 shifted into place (integer ops, no conversion).
    let two_n = big
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127)
        << 23;
    y * f32::from_bits(two_n)
}

/// What the forward pass keeps for the backward one.
struct Saved<T> {
    levels: Levels,
    time: TimePath<T>,
    /// One per block of rows.
    acts: Vec<Acts<T>>,
}

impl MlpOp {
    /// The output, and what the backward pass needs (its row activations only when `keep`).
    fn forward<T: Sigmoid>(&self, x: &[T], emb: &[T], p: &[T], keep: bool) -> (Vec<T>, Saved<T>) {
        let lay = self.dims.layout();
        let (d, de) = (self.dims.in_dim, self.dims.temb_dim);
        let b = x.len() / d;
        let rpb = ROWS;
        let n = b.div_ceil(rpb);
        // The time path once per distinct noise level (all rows share one in a sampler step).
        let levels = Levels::of(emb, de, !self.need_demb);
        let pt = lay.transposed(p);
        let time = mlp_time::forward(&lay, &pt, emb, &levels, plan(levels.count().div_ceil(rpb)));
        let (nt, par) = plan(n);
        let blocks = map_blocks(n, nt, |k| {
            let r = k * rpb..((k + 1) * rpb).min(b);
            let e = Emb {
                q: &time.q,
                idx: &levels.idx[r.clone()],
            };
            mlp_rows::forward(&lay, &pt, &x[r.start * d..r.end * d], e, par, keep)
        });
        let mut out = Vec::with_capacity(b * d);
        let mut acts = Vec::with_capacity(n);
        for (o, a) in blocks {
            out.extend_from_slice(&o);
            acts.extend(a);
        }
        (out, Saved { levels, time, acts })
    }

    /// (dx, d emb, d params) from the output gradient `g`.
    fn backward<T: Sigmoid>(
        &self,
        x: &[T],
        p: &[T],
        s: &Saved<T>,
        g: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let lay = self.dims.layout();
        let (d, h) = (self.dims.in_dim, self.dims.hidden);
        let b = x.len() / d;
        let rpb = ROWS;
        let rows = |k: usize| k * rpb..((k + 1) * rpb).min(b);
        let grads = map_blocks(s.acts.len(), plan(s.acts.len()).0, |k| {
            let r = rows(k);
            let par = plan(s.acts.len()).1;
            mlp_rows::backward(&lay, p, &s.acts[k], &g[r.start * d..r.end * d], par)
        });
        let tg = mlp_time::backward(
            &lay,
            p,
            &s.time,
            (&grads, &s.levels.idx),
            self.need_demb,
            plan(s.time.chunks.len()),
        );
        // Each layer's weight gradient is one task over its own slice of the packed vector,
        // summing its parts (row blocks or chunks of levels) in order.
        let nr = s.acts.len();
        let chunks = &s.time.chunks;
        let xs = |k: usize| &x[rows(k).start * d..rows(k).end * d];
        let gs = |k: usize| &g[rows(k).start * d..rows(k).end * d];
        let nc = chunks.len();
        let qw = lay.blocks.len() * h;
        let mut tasks: Vec<(Lin, Vec<Part<'_, T>>)> = vec![
            (
                lay.time1,
                (0..nc)
                    .map(|c| Part::new(&tg.ds[c], h, &chunks[c].emb, chunks[c].range.len()))
                    .collect(),
            ),
            (
                lay.time2,
                (0..nc)
                    .map(|c| Part::new(&tg.de[c], h, &chunks[c].t1.act, chunks[c].range.len()))
                    .collect(),
            ),
            (
                lay.in_proj,
                (0..nr)
                    .map(|k| Part::new(&grads[k].dh[0], h, xs(k), rows(k).len()))
                    .collect(),
            ),
        ];
        for (i, [lin1, temb, lin2]) in lay.blocks.iter().enumerate() {
            let pre =
                (0..nr).map(|k| Part::new(&grads[k].du[i], h, s.acts[k].pre(i), rows(k).len()));
            tasks.push((*lin1, pre.collect()));
            // ∂Q's columns of block i: row stride blocks·hidden.
            let dq_i = |c: usize| &tg.dq[c][i * h..];
            let lv =
                (0..nc).map(|c| Part::new(dq_i(c), qw, &chunks[c].t2.act, chunks[c].range.len()));
            tasks.push((*temb, lv.collect()));
            let mid =
                (0..nr).map(|k| Part::new(&grads[k].dh[i + 1], h, s.acts[k].mid(i), rows(k).len()));
            tasks.push((*lin2, mid.collect()));
        }
        let out = (0..nr).map(|k| Part::new(gs(k), d, s.acts[k].last(), rows(k).len()));
        tasks.push((lay.out_proj, out.collect()));
        // Each slice is overwritten in full by its task.
        let mut dp = uninit(lay.len);
        let mut jobs = vec![];
        let mut rest = dp.as_mut_slice();
        for (l, parts) in &tasks {
            let (head, tail) = rest.split_at_mut(l.len());
            jobs.push((l, parts.as_slice(), head));
            rest = tail;
        }
        let run =
            |(l, parts, dp): (&Lin, &[Part<'_, T>], &mut [T])| mlp_rows::weight_grad(l, parts, dp);
        if threads() <= 1 {
            jobs.into_iter().for_each(run);
        } else {
            jobs.into_par_iter().for_each(run);
        }
        let mut dx = Vec::with_capacity(x.len());
        for gr in &grads {
            dx.extend_from_slice(&gr.dx);
        }
        // With the embedding's gradient asked for, every row is its own level, in order.
        let demb = tg.demb.concat();
        (dx, demb, dp)
    }
}

impl CustomOp3 for MlpOp {
    fn name(&self) -> &'static str {
        "langevin-residual-mlp"
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
        fn run<T: Sigmoid>(
            op: &MlpOp,
            (s1, l1): (&CpuStorage, &Layout),
            (s2, l2): (&CpuStorage, &Layout),
            (s3, l3): (&CpuStorage, &Layout),
        ) -> candle_core::Result<CpuStorage> {
            let n = op.name();
            let (out, saved) = op.forward(
                data::<T>(s1, l1, n)?,
                data(s2, l2, n)?,
                data(s3, l3, n)?,
                op.save,
            );
            if op.save {
                *op.saved.lock().expect("not poisoned") = Some(Box::new(saved));
            }
            Ok(T::storage(out))
        }
        let args = ((s1, l1), (s2, l2), (s3, l3));
        let st = match s1.dtype() {
            DType::F32 => run::<f32>(self, args.0, args.1, args.2)?,
            DType::F64 => run::<f64>(self, args.0, args.1, args.2)?,
            d => {
                return Err(candle_core::Error::Msg(format!(
                    "{}: unsupported dtype {d:?}",
                    self.name()
                )))
            }
        };
        Ok((st, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        emb: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        fn run<T: Sigmoid + WithDType>(
            op: &MlpOp,
            x: &Tensor,
            emb: &Tensor,
            params: &Tensor,
            g: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let n = op.name();
            let (dx, de, dp) = with_data::<T, _>(x, n, |xs| {
                with_data::<T, _>(emb, n, |es| {
                    with_data::<T, _>(params, n, |ps| {
                        with_data::<T, _>(g, n, |gs| {
                            let saved = op.saved.lock().expect("not poisoned");
                            match saved.as_ref().and_then(|a| a.downcast_ref::<Saved<T>>()) {
                                Some(s) => Ok(op.backward(xs, ps, s, gs)),
                                None => {
                                    let (_, s) = op.forward(xs, es, ps, true);
                                    Ok(op.backward(xs, ps, &s, gs))
                                }
                            }
                        })
                    })
                })
            })?;
            let dev = Device::Cpu;
            Ok((
                Some(Tensor::from_vec(dx, x.shape(), &dev)?),
                match op.need_demb {
                    true => Some(Tensor::from_vec(de, emb.shape(), &dev)?),
                    false => None,
                },
                Some(Tensor::from_vec(dp, params.shape(), &dev)?),
            ))
        }
        match x.dtype() {
            DType::F32 => run::<f32>(self, x, emb, params, g),
            DType::F64 => run::<f64>(self, x, emb, params, g),
            d => Err(candle_core::Error::Msg(format!(
                "{}: unsupported dtype {d:?}",
                self.name()
            ))),
        }
    }
}
