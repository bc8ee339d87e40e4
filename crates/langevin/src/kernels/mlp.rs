//! The residual MLP of [`crate::nn::mlp`] as one fused CPU op, forward and backward.
//!
//! Written because the 2-D demo's training step was dominated by per-op overhead on small
//! tensors (issue 17): a `perf` profile of `langevin train` on the swiss roll (3 blocks of 128,
//! batch 512) had 28% in the GEMM micro-kernel and the rest in candle's elementwise ops
//! (SiLU's `exp` twice per element, once more in its backward), their thread barriers, fresh
//! buffers and copies. Here the whole network is one autograd node: GEMMs straight into
//! preallocated buffers with the bias as the GEMM's initial value, SiLU's sigmoid saved in the
//! forward pass for the backward one, and every parameter's gradient written into one packed
//! vector. Results do not depend on the thread count (threads split GEMM rows and columns and
//! elementwise ranges, never a sum).
use std::any::Any;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, WithDType};
use gemm::Parallelism;

use super::conv::mm;
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
struct Lin {
    off: usize,
    inp: usize,
    out: usize,
}

impl Lin {
    fn w<'a, T>(&self, p: &'a [T]) -> &'a [T] {
        &p[self.off..self.off + self.out * self.inp]
    }
    fn b<'a, T>(&self, p: &'a [T]) -> &'a [T] {
        let o = self.off + self.out * self.inp;
        &p[o..o + self.out]
    }
    fn len(&self) -> usize {
        self.out * (self.inp + 1)
    }
}

/// The layers in packing order: `time1, time2, in_proj, (lin1, temb, lin2) × blocks,
/// out_proj` — the order [`crate::nn::mlp::Mlp`] concatenates its parameters in.
struct Packing {
    time1: Lin,
    time2: Lin,
    in_proj: Lin,
    blocks: Vec<[Lin; 3]>,
    out_proj: Lin,
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
    };
    x.contiguous()?
        .apply_op3(&emb.contiguous()?, &params.contiguous()?, op)
}

struct MlpOp {
    dims: MlpDims,
    /// The forward pass's activations ([`Acts`] of the op's dtype), kept for `bwd`.
    saved: Mutex<Option<Box<dyn Any + Send>>>,
    save: bool,
}

/// A SiLU site: pre-activation z, σ(z) and silu(z) = z·σ(z), each [B, width].
struct Site<T> {
    z: Vec<T>,
    sig: Vec<T>,
    act: Vec<T>,
}

/// The forward pass's activations: the two time-MLP sites, then per block silu(h_i) and
/// silu(u_i), then silu(h_n) before the output layer.
struct Acts<T> {
    t1: Site<T>,
    t2: Site<T>,
    blocks: Vec<[Site<T>; 2]>,
    last: Site<T>,
}

fn par() -> Parallelism {
    match threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
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
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // Comparisons rather than f32::max / min, whose NaN rules keep the loop scalar.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    // 1.5·2^23: adding it rounds to the nearest integer n, which then sits in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let big = x * std::f32::consts::LOG2_E + ROUND;
    let n = big - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut y = 1.987_569_1e-4f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 0.166_666_65;
    y = y * r + 0.5;
    let y = y * (r * r) + r + 1.0;
    // 2^n from the exponent bits: n + 127 shifted into place (integer ops, no conversion).
    let two_n = big
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127)
        << 23;
    y * f32::from_bits(two_n)
}

impl<T: Sigmoid> Site<T> {
    fn new(z: Vec<T>) -> Self {
        let sig: Vec<T> = z.iter().map(|&v| v.sig()).collect();
        let act = z.iter().zip(&sig).map(|(&v, &s)| v * s).collect();
        Self { z, sig, act }
    }

    /// `g ← g · silu'(z)`, silu'(z) = σ(z)·(1 + z·(1 − σ(z))).
    fn backward(&self, g: &mut [T]) {
        for ((g, &z), &s) in g.iter_mut().zip(&self.z).zip(&self.sig) {
            *g = *g * (s * (T::ONE + z * (T::ONE - s)));
        }
    }
}

/// `y = a·Wᵀ + b` (`y` replaced) or `y += a·Wᵀ + b` (when `acc`), a [rows, inp], y [rows, out].
fn linear<T: Real>(l: &Lin, p: &[T], a: &[T], y: &mut Vec<T>, acc: bool) {
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
        par(),
    );
}

/// Gradients of `y = a·Wᵀ + b` given dy: dW, db into `dp` (overwritten), and, when `da` is
/// given, `da (+)= dy·W`.
fn linear_back<T: Real>(
    l: &Lin,
    p: &[T],
    a: &[T],
    dy: &[T],
    dp: &mut [T],
    da: Option<(&mut [T], bool)>,
) {
    let rows = dy.len() / l.out;
    let (dw, db) = dp[l.off..l.off + l.len()].split_at_mut(l.out * l.inp);
    // dW [out, inp] = dyᵀ · a.
    mm(
        (l.out, l.inp, rows),
        dw,
        false,
        dy,
        (1, l.out),
        a,
        (l.inp, 1),
        par(),
    );
    db.fill(T::ZERO);
    for r in dy.chunks(l.out) {
        for (s, &v) in db.iter_mut().zip(r) {
            *s += v;
        }
    }
    if let Some((da, acc)) = da {
        mm(
            (rows, l.inp, l.out),
            da,
            acc,
            dy,
            (l.out, 1),
            l.w(p),
            (l.inp, 1),
            par(),
        );
    }
}

impl MlpOp {
    fn forward<T: Sigmoid>(&self, x: &[T], emb: &[T], p: &[T]) -> (Vec<T>, Acts<T>) {
        let lay = self.dims.layout();
        let (b, h) = (x.len() / self.dims.in_dim, self.dims.hidden);
        let buf = || Vec::with_capacity(b * h);
        let mut z = buf();
        linear(&lay.time1, p, emb, &mut z, false);
        let t1 = Site::new(z);
        let mut z = buf();
        linear(&lay.time2, p, &t1.act, &mut z, false);
        let t2 = Site::new(z);
        let mut hs = buf();
        linear(&lay.in_proj, p, x, &mut hs, false);
        let mut blocks = Vec::with_capacity(lay.blocks.len());
        for [lin1, temb, lin2] in &lay.blocks {
            let a = Site::new(hs.clone());
            let mut u = buf();
            linear(lin1, p, &a.act, &mut u, false);
            linear(temb, p, &t2.act, &mut u, true);
            let v = Site::new(u);
            linear(lin2, p, &v.act, &mut hs, true);
            blocks.push([a, v]);
        }
        let last = Site::new(hs);
        let mut out = Vec::with_capacity(b * self.dims.in_dim);
        linear(&lay.out_proj, p, &last.act, &mut out, false);
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

    /// (dx, d emb, d params) from the output gradient `g`.
    fn backward<T: Sigmoid>(
        &self,
        x: &[T],
        emb: &[T],
        p: &[T],
        acts: &Acts<T>,
        g: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let lay = self.dims.layout();
        let (b, h) = (x.len() / self.dims.in_dim, self.dims.hidden);
        let mut dp = vec![T::ZERO; lay.len];
        let mut dh = vec![T::ZERO; b * h];
        linear_back(
            &lay.out_proj,
            p,
            &acts.last.act,
            g,
            &mut dp,
            Some((&mut dh, false)),
        );
        acts.last.backward(&mut dh);
        let mut de = vec![T::ZERO; b * h];
        let mut du = vec![T::ZERO; b * h];
        let mut da = vec![T::ZERO; b * h];
        for (i, ([lin1, temb, lin2], [a, v])) in
            lay.blocks.iter().zip(&acts.blocks).enumerate().rev()
        {
            // h_{i+1} = h_i + lin2(silu(u)): dh flows on unchanged and into the branch.
            linear_back(lin2, p, &v.act, &dh, &mut dp, Some((&mut du, false)));
            v.backward(&mut du);
            linear_back(
                temb,
                p,
                &acts.t2.act,
                &du,
                &mut dp,
                Some((&mut de, i + 1 < lay.blocks.len())),
            );
            linear_back(lin1, p, &a.act, &du, &mut dp, Some((&mut da, false)));
            a.backward(&mut da);
            for (d, &v) in dh.iter_mut().zip(&da) {
                *d += v;
            }
        }
        let mut dx = vec![T::ZERO; x.len()];
        linear_back(&lay.in_proj, p, x, &dh, &mut dp, Some((&mut dx, false)));
        acts.t2.backward(&mut de);
        let mut ds = vec![T::ZERO; b * h];
        linear_back(
            &lay.time2,
            p,
            &acts.t1.act,
            &de,
            &mut dp,
            Some((&mut ds, false)),
        );
        acts.t1.backward(&mut ds);
        let mut demb = vec![T::ZERO; emb.len()];
        linear_back(&lay.time1, p, emb, &ds, &mut dp, Some((&mut demb, false)));
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
            let (out, acts) = op.forward(data::<T>(s1, l1, n)?, data(s2, l2, n)?, data(s3, l3, n)?);
            if op.save {
                *op.saved.lock().expect("not poisoned") = Some(Box::new(acts));
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
                            match saved.as_ref().and_then(|a| a.downcast_ref::<Acts<T>>()) {
                                Some(acts) => Ok(op.backward(xs, es, ps, acts, gs)),
                                None => {
                                    let (_, acts) = op.forward(xs, es, ps);
                                    Ok(op.backward(xs, es, ps, &acts, gs))
                                }
                            }
                        })
                    })
                })
            })?;
            let dev = Device::Cpu;
            Ok((
                Some(Tensor::from_vec(dx, x.shape(), &dev)?),
                Some(Tensor::from_vec(de, emb.shape(), &dev)?),
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
