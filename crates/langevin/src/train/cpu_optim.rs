//! The CPU form of the fused optimiser step: AdamW, EMA and the gradient sum of squares as one
//! pass per parameter tensor over its f32 data, with the same f32 operations in the same order
//! as the composed candle form (so the results are bit-identical to it; tested in `adamw.rs`).
//!
//! Written because the composed AdamW is about a dozen candle ops per parameter tensor, each a
//! pass with a fresh buffer and a thread-pool dispatch: a visible share of the demo MLP's
//! training step (profile in docs/benchmarks.md, CPU round 2).
use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Device, InplaceOp3, Layout, Tensor, Var};

use crate::kernels::cpu_conv::uninit;
use crate::kernels::gpu_optim::AdamStep;
use crate::kernels::real::{data, with_data};
use crate::kernels::simd::vectorized;
use crate::Result;

/// `f` on every item, over the worker threads when more than one may be used; results in
/// order.
pub fn per_tensor<I: Sync, R: Send>(
    items: &[I],
    f: impl Fn(&I) -> Result<R> + Sync + Send,
) -> Result<Vec<R>> {
    use rayon::prelude::*;
    if crate::kernels::real::threads() <= 1 {
        items.iter().map(f).collect()
    } else {
        items.par_iter().map(f).collect()
    }
}

/// Whether `t` is a contiguous f32 tensor in CPU memory.
pub fn eligible(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Runs `f` on the f32 data of a CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    Ok(with_data::<f32, R>(t, "optimiser", |v| Ok(f(v)))?)
}

/// Σ g² in f64, in four interleaved partial sums added at the end (one serial chain of f64
/// adds was ~0.2 ms of the demo's 8.6 ms step); the order is fixed, so the bits do not depend
/// on the threads.
pub fn sum_squares(g: &Tensor) -> Result<f64> {
    with_f32(g, |g| {
        vectorized(
            #[inline(always)]
            || {
                let mut acc = [0f64; 4];
                let chunks = g.chunks_exact(4);
                let tail = chunks.remainder();
                for c in chunks {
                    for (a, &v) in acc.iter_mut().zip(c) {
                        *a += (v as f64) * (v as f64);
                    }
                }
                let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
                for &v in tail {
                    s += (v as f64) * (v as f64);
                }
                s
            },
        )
    })
}

/// The f32 constants of one AdamW step.
struct AdamConsts {
    scale: f32,
    b1: f32,
    nb1: f32,
    b2: f32,
    nb2: f32,
    ibc1: f32,
    ibc2: f32,
    eps: f32,
    decay: f32,
    lr: f32,
}

/// θ (updated in place), m', v' from θ, m, v, g. Zipped slices rather than indices (no bounds
/// checks, so the loop vectorises: it was scalar, ~2 ms of the demo's 15 ms step), and always
/// inlined so that [`vectorized`] compiles it with AVX2.
#[inline(always)]
fn adam_pass(c: &AdamConsts, th: &mut [f32], [m, v, g]: [&[f32]; 3], [m2, v2]: [&mut [f32]; 2]) {
    let outs = th.iter_mut().zip(m2.iter_mut()).zip(v2.iter_mut());
    let ins = m.iter().zip(v).zip(g);
    for (((th2, m2), v2), ((&m, &v), &g)) in outs.zip(ins) {
        let th = *th2;
        // candle's affine is x·mul + add: the `+ 0.0` of each scalar product is kept so that
        // −0 rounds as it does there.
        let gi = g * c.scale + 0.0;
        let mi = (m * c.b1 + 0.0) + (gi * c.nb1 + 0.0);
        let vi = (v * c.b2 + 0.0) + ((gi * gi) * c.nb2 + 0.0);
        let update = (mi * c.ibc1 + 0.0) / ((vi * c.ibc2 + 0.0).sqrt() * 1.0 + c.eps);
        *th2 = (th * c.decay + 0.0) - (update * c.lr + 0.0);
        *m2 = mi;
        *v2 = vi;
    }
}

/// One AdamW step of one tensor: writes θ and returns the new moments, and with `ema` =
/// (average e, decay d) also the new average e·d + θ'·(1 − d) of the updated θ' (the same
/// bits as [`ema`] after the step, without a second pass over θ). The expressions are those
/// of the composed form (`AdamW::step`): each candle op there is one f32 rounding here.
pub fn adamw(
    theta: &Var,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    k: &AdamStep,
    ema: Option<(&Tensor, f64)>,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let f = |x: f64| x as f32;
    let c = AdamConsts {
        scale: f(k.grad_scale),
        b1: f(k.beta1),
        nb1: f(1.0 - k.beta1),
        b2: f(k.beta2),
        nb2: f(1.0 - k.beta2),
        ibc1: f(1.0 / k.bc1),
        ibc2: f(1.0 / k.bc2),
        eps: f(k.eps),
        decay: f(1.0 - k.lr * k.weight_decay),
        lr: f(k.lr),
    };
    // θ in place (candle's in-place op: no fresh θ' and no copy of it into the variable, a
    // pass over ~700 KB of the demo's step fewer); m', v' and the average into fresh buffers.
    let op = AdamInPlace {
        c,
        g,
        ema,
        out: Mutex::new(None),
    };
    theta.as_tensor().inplace_op3(m, v, &op)?;
    let (m2, v2, e2) = op
        .out
        .into_inner()
        .expect("not poisoned")
        .expect("the op ran on the CPU")?;
    let (shape, cpu) = (theta.shape().clone(), Device::Cpu);
    Ok((
        Tensor::from_vec(m2, shape.clone(), &cpu)?,
        Tensor::from_vec(v2, shape.clone(), &cpu)?,
        e2.map(|e| Tensor::from_vec(e, shape, &cpu)).transpose()?,
    ))
}

/// One AdamW step as an in-place op on θ: the moments and the average it makes are left in
/// `out`.
struct AdamInPlace<'a> {
    c: AdamConsts,
    /// The gradient (read under its own lock: the op takes two inputs besides θ).
    g: &'a Tensor,
    ema: Option<(&'a Tensor, f64)>,
    #[allow(clippy::type_complexity)]
    out: Mutex<Option<Result<(Vec<f32>, Vec<f32>, Option<Vec<f32>>)>>>,
}

impl InplaceOp3 for AdamInPlace<'_> {
    fn name(&self) -> &'static str {
        "langevin-adamw"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        let name = self.name();
        let th = match (dst, dst_l.contiguous_offsets()) {
            (CpuStorage::F32(t), Some((a, b))) => &mut t[a..b],
            _ => candle_core::bail!("{name}: θ must be contiguous f32"),
        };
        let (m, v) = (data::<f32>(m, ml, name)?, data::<f32>(v, vl, name)?);
        with_data::<f32, _>(self.g, name, |g| self.step(th, m, v, g))
    }
}

impl AdamInPlace<'_> {
    fn step(&self, th: &mut [f32], m: &[f32], v: &[f32], g: &[f32]) -> candle_core::Result<()> {
        let n = th.len();
        if m.len() != n || v.len() != n || g.len() != n {
            candle_core::bail!("{}: θ, m, v and g differ in size", self.name());
        }
        // Each pass below writes every element.
        let (mut m2, mut v2) = (uninit(n), uninit(n));
        vectorized(
            #[inline(always)]
            || adam_pass(&self.c, th, [m, v, g], [&mut m2, &mut v2]),
        );
        let e2 = match self.ema {
            Some((e, d)) => Some(with_f32(e, |e| {
                let mut out = uninit(n);
                vectorized(
                    #[inline(always)]
                    || ema_pass(e, th, d, &mut out),
                );
                out
            })),
            None => None,
        }
        .transpose();
        *self.out.lock().expect("not poisoned") = Some(e2.map(|e2| (m2, v2, e2)));
        Ok(())
    }
}

/// out = e·d + θ·(1 − d), as the composed EMA update. Always inlined so that [`vectorized`]
/// compiles it with AVX2 (a plain loop: `collect` stays out-of-line).
#[inline(always)]
fn ema_pass(e: &[f32], theta: &[f32], decay: f64, out: &mut [f32]) {
    let (d, nd) = (decay as f32, (1.0 - decay) as f32);
    for ((o, &e), &t) in out.iter_mut().zip(e).zip(theta) {
        *o = (e * d + 0.0) + (t * nd + 0.0);
    }
}

/// e·d + θ·(1 − d), as the composed EMA update.
pub fn ema(e: &Tensor, theta: &Tensor, decay: f64) -> Result<Tensor> {
    let out = with_f32(e, |e| {
        with_f32(theta, |t| {
            let mut out = uninit(e.len());
            vectorized(
                #[inline(always)]
                || ema_pass(e, t, decay, &mut out),
            );
            out
        })
    })??;
    Ok(Tensor::from_vec(out, e.shape(), &Device::Cpu)?)
}
