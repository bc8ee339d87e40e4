//! Group normalisation with an optional SiLU fused in, forward and backward in one pass each
//! over the data, statistics in f64.
//!
//! Written because candle composes `GroupNorm` from ~10 elementwise and reduction ops (and as
//! many more in the backward pass), each a full pass over the activations; see
//! `docs/benchmarks.md`.
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::enabled;
use super::mlp::Sigmoid;
use super::real::{dispatch, min_len, own_kernel, threads, with_data, Real};
use super::simd;

/// `silu?(group_norm(x) · γ + β)` over `groups` groups of channels (as `torch.nn.GroupNorm`
/// followed, when `silu`, by `torch.nn.functional.silu`).
///
/// # Shapes
/// `x`: [B, C, …]; `gamma`, `beta`: [C]; returns the shape of `x`.
pub fn group_norm_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> candle_core::Result<Tensor> {
    shifted_group_norm_act(x, None, gamma, beta, groups, eps, silu)
}

/// [`group_norm_act`] of `x + shift` with a per-sample, per-channel `shift` [B, C] (the
/// resnet's time-embedding add), in the same kernel.
pub fn shifted_group_norm_act(
    x: &Tensor,
    shift: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    if c % groups != 0 {
        return Err(candle_core::Error::Msg(format!(
            "group norm: {c} channels do not split into {groups} groups"
        )));
    }
    let same = |t: &Tensor| t.dtype() == x.dtype();
    if enabled() && own_kernel(x) && same(gamma) && same(beta) && shift.is_none_or(same) {
        let shift = match shift {
            Some(s) => s.reshape((b, c))?.contiguous()?,
            None => Tensor::zeros((b, c), x.dtype(), x.device())?,
        };
        let affine = Tensor::stack(&[gamma, beta], 0)?;
        let op = GroupNormOp {
            groups,
            eps,
            silu,
            stats: OnceLock::new(),
            save: x.track_op() || shift.track_op() || affine.track_op(),
        };
        return x.contiguous()?.apply_op3(&shift, &affine, op);
    }
    let untracked = |t: &Tensor| !t.track_op();
    if super::gpu::fast_path(x)
        && [gamma, beta]
            .into_iter()
            .chain(shift)
            .all(|t| same(t) && untracked(t))
    {
        return super::gpu::group_norm(x, shift, gamma, beta, groups, eps, silu);
    }
    if super::gpu_train::available(x) && same(gamma) && same(beta) && shift.is_none_or(same) {
        // Training on CUDA: one kernel forward, one backward (`gpu_train`).
        let shift = match shift {
            Some(s) => s.reshape((b, c))?,
            None => Tensor::zeros((b, c), x.dtype(), x.device())?,
        };
        let affine = Tensor::stack(&[gamma, beta], 0)?;
        return super::gpu_train::group_norm(x, &shift, &affine, groups, eps, silu);
    }
    let x = match shift {
        Some(s) => {
            let mut dims = vec![b, c];
            dims.resize(x.rank(), 1);
            x.broadcast_add(&s.reshape(dims)?)?
        }
        None => x.clone(),
    };
    let y = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, groups, eps)?;
    let y = candle_core::Module::forward(&y, &x)?;
    if silu {
        y.silu()
    } else {
        Ok(y)
    }
}

struct GroupNormOp {
    groups: usize,
    eps: f64,
    silu: bool,
    /// Whether the forward pass keeps its statistics for the backward one (training).
    save: bool,
    /// (mean, 1/σ) per (sample, group) from the forward pass, when `save` (computing them
    /// again in the backward pass was 1.2% of the small UNet's training step).
    stats: OnceLock<Vec<(f64, f64)>>,
}

/// Sizes: batch, channels, spatial elements per channel.
fn sizes(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

/// Independent f64 partial sums per quantity in the statistics: four vectors of AVX-512 (eight
/// of AVX2), so that the adds do not wait on each other. With eight lanes (one AVX-512 vector,
/// one chain of dependent adds) the statistics pass was 6.9% of the small UNet's training step
/// (CPU round 13).
const LANES: usize = 32;

/// Σ of `LANES` partial sums, pairwise in a fixed order.
#[inline(always)]
fn total(a: [f64; LANES]) -> f64 {
    let mut w = a;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            w[i] += w[i + n];
        }
    }
    w[0]
}

/// Σv and Σv² of a slice in f64, in [`LANES`] independent lanes so that the loop vectorises.
#[inline(always)]
fn sums<T: Real>(x: &[T]) -> (f64, f64) {
    let (mut s1, mut s2) = ([0f64; LANES], [0f64; LANES]);
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let v = c[l].to_f64();
            s1[l] += v;
            s2[l] += v * v;
        }
    }
    let (mut a, mut b) = (total(s1), total(s2));
    for v in rest {
        let v = v.to_f64();
        a += v;
        b += v * v;
    }
    (a, b)
}

/// Mean and 1/σ of one group of `x + shift[channel]` (one pass, f64 sums); `s` elements per
/// channel. Activations have |mean| ≪ 10⁴·σ, far from where Σv² − n·mean² cancels in f64.
fn stats<T: Real>(x: &[T], shift: &[T], s: usize, eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let (mut a, mut b) = (0f64, 0f64);
    for (xc, &t) in x.chunks(s).zip(shift) {
        // In AVX2 (4 f64 lanes, the same sums in the same order): compiled for the baseline
        // SSE2 this loop was 2.6% of the small UNet's batch-16 forward (CPU round 10).
        let (ca, cb) = simd::vectorized(
            #[inline(always)]
            || sums(xc),
        );
        let t = t.to_f64();
        // Σ(v + t) and Σ(v + t)².
        a += ca + s as f64 * t;
        b += cb + 2.0 * t * ca + s as f64 * t * t;
    }
    let mean = a / n;
    let var = (b / n - mean * mean).max(0.0);
    (mean, 1.0 / (var + eps).sqrt())
}

/// The affine map `x ↦ x·a + b` that gives one channel's normalised, scaled and shifted
/// value (the input of SiLU): a = γ/σ, b = β + (shift − mean)·a, rounded to `T`.
fn affine_at<T: Real>(
    gamma: &[T],
    beta: &[T],
    ch: usize,
    shift: T,
    mean: f64,
    rstd: f64,
) -> (T, T) {
    let a = rstd * gamma[ch].to_f64();
    let b = beta[ch].to_f64() + (shift.to_f64() - mean) * a;
    (T::from_f64(a), T::from_f64(b))
}

/// The backward pass's first sweep over one channel: dŷ = dy·silu'(x·a + b) when `SILU`
/// (silu'(y) = σ(y)·(1 + y·(1 − σ(y))), at the forward pass's `T`-valued pre-activation), else
/// dy, written to `dx`; returns Σ dŷ and Σ dŷ·(x + tm) (x̂ = (x + tm)·rstd) in f64. SiLU's
/// factor, dŷ and the products in `T`, the sums in 16 `T` lanes per block of 256 values, each
/// block's lanes then added in f64 in a fixed order (so the bits do not depend on the threads).
/// The factor had its own sweep, and the sums ran per element in f64 over four quantities (two
/// are γ times the other two): together with the statistics those were 5.4% of the small
/// UNet's training step (issue 17, CPU round 13/14).
#[inline(always)]
fn pass1<T: Sigmoid, const SILU: bool>(
    dx: &mut [T],
    x: &[T],
    dy: &[T],
    (a, b, tm): (T, T, T),
) -> (f64, f64) {
    let one = |d: &mut T, x: T, g: T, s: &mut T, sx: &mut T| {
        let v = if SILU {
            let y = x * a + b;
            let sg = y.sig();
            g * (sg * (T::ONE + y * (T::ONE - sg)))
        } else {
            g
        };
        *d = v;
        *s += v;
        *sx += v * (x + tm);
    };
    simd::vectorized(
        #[inline(always)]
        || {
            let (mut s1, mut s2) = (0f64, 0f64);
            let blocks = dx.chunks_mut(256).zip(x.chunks(256)).zip(dy.chunks(256));
            for ((d, x), g) in blocks {
                let (mut a1, mut a2) = ([T::ZERO; 16], [T::ZERO; 16]);
                let mut d16 = d.chunks_exact_mut(16);
                let (mut x16, mut g16) = (x.chunks_exact(16), g.chunks_exact(16));
                for ((d, x), g) in (&mut d16).zip(&mut x16).zip(&mut g16) {
                    for k in 0..16 {
                        one(&mut d[k], x[k], g[k], &mut a1[k], &mut a2[k]);
                    }
                }
                let tail = d16.into_remainder().iter_mut();
                for ((d, &x), &g) in tail.zip(x16.remainder()).zip(g16.remainder()) {
                    one(d, x, g, &mut a1[0], &mut a2[0]);
                }
                s1 += a1.iter().fold(0f64, |s, v| s + v.to_f64());
                s2 += a2.iter().fold(0f64, |s, v| s + v.to_f64());
            }
            (s1, s2)
        },
    )
}

/// The second sweep: dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / σ in place from dŷ (dx̂ = dŷ·g),
/// and Σ dx (the shift's gradient) in f64. With x̂ = (x + tm)·rstd that is
/// dx = α·dŷ + β·x + γ, one affine map per channel in `T` (coefficients computed in f64): the
/// same map evaluated per element in f64, with two conversions per value, was 5.1% of the small
/// UNet's training step against 1.4% for the first sweep (CPU round 13). The sum runs in 16
/// independent `T` lanes per block of 256 values, each block's lanes then added in f64 in a
/// fixed order, so the bits do not depend on the threads.
#[inline(always)]
fn pass2<T: Real>(dx: &mut [T], x: &[T], (tm, rstd, m1, m2, g): (f64, f64, f64, f64, f64)) -> f64 {
    let alpha = T::from_f64(rstd * g);
    let beta = T::from_f64(-rstd * rstd * m2);
    let gamma = T::from_f64(-rstd * (m1 + tm * rstd * m2));
    simd::vectorized(
        #[inline(always)]
        || {
            let mut sum = 0f64;
            let mut dc = dx.chunks_mut(256);
            let mut xc = x.chunks(256);
            for (d, x) in (&mut dc).zip(&mut xc) {
                let mut acc = [T::ZERO; 16];
                let (mut d16, mut x16) = (d.chunks_exact_mut(16), x.chunks_exact(16));
                for (d, x) in (&mut d16).zip(&mut x16) {
                    for k in 0..16 {
                        let v = alpha * d[k] + beta * x[k] + gamma;
                        d[k] = v;
                        acc[k] += v;
                    }
                }
                for (d, &x) in d16.into_remainder().iter_mut().zip(x16.remainder()) {
                    let v = alpha * *d + beta * x + gamma;
                    *d = v;
                    acc[0] += v;
                }
                sum += acc.iter().fold(0f64, |s, v| s + v.to_f64());
            }
            sum
        },
    )
}

impl GroupNormOp {
    fn forward<T: Sigmoid>(&self, x: &[T], shift: &[T], affine: &[T], dims: &[usize]) -> Vec<T> {
        let (_, c, s) = sizes(dims);
        let (gamma, beta) = affine.split_at(c);
        let cg = c / self.groups;
        // Every value is written below (no zeroing pass).
        let mut out = super::cpu_conv::uninit(x.len());
        let mut kept = vec![(0f64, 0f64); x.len() / (cg * s).max(1)];
        out.par_chunks_mut(cg * s)
            .zip(x.par_chunks(cg * s))
            .zip(shift.par_chunks(cg))
            .zip(kept.par_iter_mut())
            .enumerate()
            .with_min_len(min_len(threads()))
            .for_each(|(bg, (((o, x), t), kept))| {
                let (mean, rstd) = stats(x, t, s, self.eps);
                *kept = (mean, rstd);
                let c0 = (bg % self.groups) * cg;
                // SiLU with the branch-free `exp` (f32) in an AVX2 loop: libm's scalar `expf`
                // and the loop around it were ~9% of the small UNet's forward pass (issue 17,
                // CPU round 4 in docs/benchmarks.md).
                simd::vectorized(
                    #[inline(always)]
                    || {
                        for ch in 0..cg {
                            let (a, b) = affine_at(gamma, beta, c0 + ch, t[ch], mean, rstd);
                            let (o, x) = (&mut o[ch * s..(ch + 1) * s], &x[ch * s..(ch + 1) * s]);
                            if self.silu {
                                for (o, &x) in o.iter_mut().zip(x) {
                                    let y = x * a + b;
                                    *o = y * y.sig();
                                }
                            } else {
                                for (o, &x) in o.iter_mut().zip(x) {
                                    *o = x * a + b;
                                }
                            }
                        }
                    },
                )
            });
        if self.save {
            // One forward pass per op (candle builds a new op per call).
            let _ = self.stats.set(kept);
        }
        out
    }

    /// (dx, d shift, d[γ; β]) from dy.
    fn backward<T: Sigmoid>(
        &self,
        x: &[T],
        shift: &[T],
        affine: &[T],
        dy: &[T],
        dims: &[usize],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (b, c, s) = sizes(dims);
        let (gamma, beta) = affine.split_at(c);
        let cg = c / self.groups;
        let n = (cg * s) as f64;
        // Every value is written by pass 1: no zeroing pass.
        let mut dx = super::cpu_conv::uninit(x.len());
        // Per (batch, channel): Σ dŷ·x̂, Σ dŷ and Σ dx, the first two summed over the batch
        // afterwards, the last the gradient of the shift.
        let mut part = vec![0f64; b * c * 3];
        let kept = self.stats.get().filter(|k| k.len() == b * self.groups);
        dx.par_chunks_mut(cg * s)
            .zip(x.par_chunks(cg * s))
            .zip(dy.par_chunks(cg * s))
            .zip(part.par_chunks_mut(cg * 3))
            .zip(shift.par_chunks(cg))
            .enumerate()
            .with_min_len(min_len(threads()))
            .for_each(|(bg, ((((dx, x), dy), part), t))| {
                let (mean, rstd) = match kept {
                    Some(k) => k[bg],
                    None => stats(x, t, s, self.eps),
                };
                let c0 = (bg % self.groups) * cg;
                // Pass 1: dŷ (the gradient before the affine map, through SiLU) stored in dx,
                // and per channel Σ dŷ·x̂ and Σ dŷ; the group sums Σ dx̂ and Σ dx̂·x̂ are γ times
                // those.
                let (mut s1, mut s2) = (0f64, 0f64);
                for ch in 0..cg {
                    let g = gamma[c0 + ch].to_f64();
                    let range = ch * s..(ch + 1) * s;
                    let tm = t[ch].to_f64() - mean;
                    let (a, b) = affine_at(gamma, beta, c0 + ch, t[ch], mean, rstd);
                    let coef = (a, b, T::from_f64(tm));
                    let (dxc, xc, dyc) = (&mut dx[range.clone()], &x[range.clone()], &dy[range]);
                    let (sum, sum_x) = if self.silu {
                        pass1::<T, true>(dxc, xc, dyc, coef)
                    } else {
                        pass1::<T, false>(dxc, xc, dyc, coef)
                    };
                    let dg = rstd * sum_x;
                    s1 += g * sum;
                    s2 += g * dg;
                    part[ch * 3] = dg;
                    part[ch * 3 + 1] = sum;
                }
                let (m1, m2) = (s1 / n, s2 / n);
                // Pass 2: dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / σ.
                for ch in 0..cg {
                    let g = gamma[c0 + ch].to_f64();
                    let tm = t[ch].to_f64() - mean;
                    let range = ch * s..(ch + 1) * s;
                    let coef = (tm, rstd, m1, m2, g);
                    part[ch * 3 + 2] = pass2(&mut dx[range.clone()], &x[range], coef);
                }
            });
        let mut daffine = vec![0f64; 2 * c];
        for p in part.chunks(3 * c) {
            for ch in 0..c {
                daffine[ch] += p[3 * ch];
                daffine[c + ch] += p[3 * ch + 1];
            }
        }
        let dshift = part.chunks(3).map(|p| T::from_f64(p[2])).collect();
        let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect();
        (dx, dshift, cast(daffine))
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "langevin-group-norm"
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
        let st = dispatch(
            op,
            [(s1, l1), (s2, l2), (s3, l3)],
            |[a, b, c]| self.forward(a, b, c, l1.dims()),
            |[a, b, c]| self.forward(a, b, c, l1.dims()),
        )?;
        Ok((st, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Here `gamma` is the shift [B, C] and `beta` the stacked affine [2, C].
        fn run<T: Sigmoid + candle_core::WithDType>(
            op: &GroupNormOp,
            x: &Tensor,
            gamma: &Tensor,
            beta: &Tensor,
            dy: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let name = op.name();
            let (dx, dg, db) = with_data::<T, _>(x, name, |xs| {
                with_data::<T, _>(gamma, name, |gs| {
                    with_data::<T, _>(beta, name, |bs| {
                        with_data::<T, _>(dy, name, |ds| Ok(op.backward(xs, gs, bs, ds, x.dims())))
                    })
                })
            })?;
            let dev = Device::Cpu;
            Ok((
                Some(Tensor::from_vec(dx, x.shape(), &dev)?),
                Some(Tensor::from_vec(dg, gamma.shape(), &dev)?),
                Some(Tensor::from_vec(db, beta.shape(), &dev)?),
            ))
        }
        match x.dtype() {
            DType::F32 => run::<f32>(self, x, gamma, beta, dy),
            DType::F64 => run::<f64>(self, x, gamma, beta, dy),
            d => Err(candle_core::Error::Msg(format!(
                "{}: unsupported dtype {d:?}",
                self.name()
            ))),
        }
    }
}
