//! Inference convolutions from weights transformed once per model: a layer keeps the Winograd
//! filters U = G g Gᵀ of its 3×3 weights ([`PreparedWeights`], made on first use) and every
//! later evaluation multiplies them directly, instead of transforming 9·O·C weights into 16 or
//! 36·O·C values per call. Measured (issue 17, CPU round 10): the transform was 45 of ~135 ms
//! of the ddpm-cifar10 UNet's batch-1 forward, the workload a sampler repeats at every step.
//!
//! Only for weights that cannot change in place (plain tensors: inference weights loaded from
//! disk, never a training [`candle_core::Var`]) and inputs nobody differentiates; everything
//! else takes [`super::conv::conv2d`]. The result has the bits of that op (the same filters and
//! arithmetic, tested).
use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor,
};

use super::conv::{conv2d, enabled};
use super::cpu_conv::Geom;
use super::real::{data, own_kernel, with_data, Real};
use super::winograd;

/// The transformed filters of one convolution layer, per tiling (a layer normally sees one
/// image size, so one of the two is ever made).
#[derive(Default)]
pub struct PreparedWeights {
    f2: OnceLock<Tensor>,
    f4: OnceLock<Tensor>,
}

impl PreparedWeights {
    /// How many tilings have been prepared (0 until an inference call took this path).
    pub fn prepared(&self) -> usize {
        usize::from(self.f2.get().is_some()) + usize::from(self.f4.get().is_some())
    }
}

/// `y = conv2d(x, w) + bias` as [`conv2d`], for a layer that owns `w` and keeps `prepared`
/// with it: on the CPU, for a 3×3 convolution that Winograd takes, with neither `x` nor `w`
/// tracked by autograd, the filters are transformed on the first call and reused after.
/// `w` must not change in place while `prepared` lives (plain tensors never do; a `Var`'s
/// weights are tracked and take [`conv2d`]).
pub fn conv2d_prepared(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    prepared: &PreparedWeights,
) -> candle_core::Result<Tensor> {
    match prepared_op(x, w, bias, stride, padding, prepared, None)? {
        Some((op, u)) => apply(x, &u, bias, op),
        None => conv2d(x, w, bias, stride, padding),
    }
}

/// `(conv2d_prepared(x, w, bias) + residual)`, the residual added as each image's output is
/// written on the prepared path (the same values as the separate add, tested).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_prepared_residual(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    prepared: &PreparedWeights,
    residual: &Tensor,
) -> candle_core::Result<Tensor> {
    match prepared_op(x, w, bias, stride, padding, prepared, Some(residual))? {
        Some((op, u)) => apply(x, &u, bias, op),
        None => conv2d_prepared(x, w, bias, stride, padding, prepared)? + residual,
    }
}

/// The prepared op and filters, where the prepared path applies (else `None`: the caller
/// takes `conv2d`). A residual is taken along only where it has the output's shape and
/// dtype and nobody differentiates it.
#[allow(clippy::too_many_arguments)]
fn prepared_op(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    prepared: &PreparedWeights,
    residual: Option<&Tensor>,
) -> candle_core::Result<Option<(PreparedConv, Tensor)>> {
    let same = |t: &Tensor| t.dtype() == x.dtype();
    let eligible = enabled()
        && own_kernel(x)
        && same(w)
        && bias.is_none_or(same)
        && !x.track_op()
        && !w.track_op()
        && bias.is_none_or(|b| !b.track_op());
    if !eligible {
        return Ok(None);
    }
    let g = Geom::new(x.dims(), w.dims(), stride, padding)?;
    if !winograd::forward_applies(&g) {
        return Ok(None);
    }
    let out_dims = [g.b, g.o, g.ho, g.wo];
    let residual_fits =
        |r: &&Tensor| same(r) && own_kernel(r) && !r.track_op() && r.dims() == out_dims.as_slice();
    if residual.is_some_and(|r| !residual_fits(&r)) {
        return Ok(None);
    }
    let cell = if winograd::four(&g) {
        &prepared.f4
    } else {
        &prepared.f2
    };
    let u = match cell.get() {
        Some(u) => u.clone(),
        None => {
            let u = transform(w, &g)?;
            cell.get_or_init(|| u).clone()
        }
    };
    let residual = residual.map(Tensor::contiguous).transpose()?;
    Ok(Some((PreparedConv { g, residual }, u)))
}

fn apply(
    x: &Tensor,
    u: &Tensor,
    bias: Option<&Tensor>,
    op: PreparedConv,
) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    match bias {
        Some(b) => x.apply_op3_no_bwd(u, &b.contiguous()?, &op),
        None => x.apply_op2_no_bwd(u, &op),
    }
}

/// U [ξ, O, C] of `w` for the tiling `g` takes.
fn transform(w: &Tensor, g: &Geom) -> candle_core::Result<Tensor> {
    const OP: &str = "conv2d-prepare";
    let xis = if winograd::four(g) { 36 } else { 16 };
    let shape = (xis, g.o, g.c);
    match w.dtype() {
        DType::F32 => with_data::<f32, _>(w, OP, |wt| {
            Tensor::from_vec(winograd::prepare(wt, g), shape, &Device::Cpu)
        }),
        DType::F64 => with_data::<f64, _>(w, OP, |wt| {
            Tensor::from_vec(winograd::prepare(wt, g), shape, &Device::Cpu)
        }),
        d => Err(candle_core::Error::Msg(format!(
            "{OP}: unsupported dtype {d:?}"
        ))),
    }
}

/// The Winograd convolution of (x, U[, bias]) for the geometry `g` (its batch taken from x),
/// plus `residual` (contiguous, the output's shape) when given.
struct PreparedConv {
    g: Geom,
    residual: Option<Tensor>,
}

impl PreparedConv {
    /// The geometry for the input laid out as `x` (its batch) and its output shape.
    fn geom(&self, x: &Layout) -> candle_core::Result<(Geom, Shape)> {
        let g = Geom::new(x.dims(), &[self.g.o, self.g.c, 3, 3], 1, self.g.p)?;
        Ok((g, Shape::from((g.b, g.o, g.ho, g.wo))))
    }

    /// The output of x [B, C, H, W] and U [ξ, O, C], with the bias when given, plus the
    /// residual the op carries: the body of both `cpu_fwd`s.
    fn run(
        &self,
        name: &str,
        x: (&CpuStorage, &Layout),
        u: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, shape) = self.geom(x.1)?;
        let guard = self.residual.as_ref().map(Tensor::storage_and_layout);
        let residual = match &guard {
            None => None,
            Some((s, l)) => match &**s {
                Storage::Cpu(c) if l.dims() == shape.dims() => Some((c, *l)),
                _ => {
                    return Err(candle_core::Error::Msg(format!(
                        "{name}: the residual is not a CPU tensor of shape {shape:?}"
                    )))
                }
            },
        };
        fn go<'a, T: Real>(
            name: &str,
            g: &Geom,
            [x, u]: [(&'a CpuStorage, &Layout); 2],
            [b, r]: [Option<(&'a CpuStorage, &Layout)>; 2],
        ) -> candle_core::Result<CpuStorage> {
            let opt = |v: Option<(&'a CpuStorage, &Layout)>| {
                v.map(|(s, l)| data::<T>(s, l, name)).transpose()
            };
            let (x, u) = (data::<T>(x.0, x.1, name)?, data::<T>(u.0, u.1, name)?);
            let y = winograd::forward_prepared(x, u, opt(b)?, opt(r)?, g);
            Ok(T::storage(y))
        }
        let args = ([x, u], [bias, residual]);
        let st = match x.0.dtype() {
            DType::F32 => go::<f32>(name, &g, args.0, args.1)?,
            DType::F64 => go::<f64>(name, &g, args.0, args.1)?,
            d => {
                return Err(candle_core::Error::Msg(format!(
                    "{name}: unsupported dtype {d:?}"
                )))
            }
        };
        Ok((st, shape))
    }
}

impl CustomOp2 for PreparedConv {
    fn name(&self) -> &'static str {
        "langevin-conv2d-prepared"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(CustomOp2::name(self), (s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for PreparedConv {
    fn name(&self) -> &'static str {
        "langevin-conv2d-prepared-bias"
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
        self.run(CustomOp3::name(self), (s1, l1), (s2, l2), Some((s3, l3)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        crate::rng::NoiseSource::consecutive(seed, shape[0])
            .randn(shape, &Device::Cpu)
            .unwrap()
    }

    /// The prepared path gives the bits of `conv2d` for both tilings, with and without bias,
    /// at batch 1 and 3, and transforms each tiling once.
    #[test]
    fn prepared_convolution_is_bit_identical_and_made_once() {
        let w = randn(&[24, 16, 3, 3], 1);
        let b = randn(&[24], 2);
        let prepared = PreparedWeights::default();
        // 16×16: F(2×2, 3×3); 32×32: F(4×4, 3×3); 8×8 (24 ≥ 16 output channels): no
        // Winograd, the prepared path is `conv2d` itself.
        let sizes = [(16, 1), (32, 3), (16, 3), (32, 1), (8, 2)];
        for (n, (hw, batch)) in sizes.into_iter().enumerate() {
            let x = randn(&[batch, 16, hw, hw], 10 + n as u64);
            for bias in [Some(&b), None] {
                let want = conv2d(&x, &w, bias, 1, 1).unwrap();
                let got = conv2d_prepared(&x, &w, bias, 1, 1, &prepared).unwrap();
                let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{hw}×{hw} b{batch}");
            }
        }
        assert_eq!(prepared.prepared(), 2);
    }

    /// The residual joined to the output pass gives the bits of the separate add, for both
    /// tilings, with and without bias, on one and three threads (at batch 1 the three
    /// threads split one image by channels; at batch 3 they take images).
    #[test]
    fn residual_in_the_output_pass_is_the_separate_add() {
        let w = randn(&[24, 16, 3, 3], 5);
        let b = randn(&[24], 6);
        let prepared = PreparedWeights::default();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for (n, (hw, batch)) in [(16, 1), (32, 3), (16, 3), (32, 1)].into_iter().enumerate()
                {
                    let x = randn(&[batch, 16, hw, hw], 20 + n as u64);
                    let r = randn(&[batch, 24, hw, hw], 30 + n as u64);
                    for bias in [Some(&b), None] {
                        let want = (conv2d(&x, &w, bias, 1, 1).unwrap() + &r).unwrap();
                        let got =
                            conv2d_prepared_residual(&x, &w, bias, 1, 1, &prepared, &r).unwrap();
                        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                        let d = d.to_scalar::<f32>().unwrap();
                        assert_eq!(d, 0.0, "{hw}×{hw} b{batch} {threads} threads");
                    }
                }
            });
        }
        // 8×8 from 288 channels (F(2×2), 16 tiles per image: images side by side in groups
        // of 4, then 1 at batch 5).
        let w8 = randn(&[16, 288, 3, 3], 7);
        let x8 = randn(&[5, 288, 8, 8], 8);
        let r8 = randn(&[5, 16, 8, 8], 9);
        let prepared8 = PreparedWeights::default();
        let want =
            (conv2d(&x8, &w8, Some(&b.narrow(0, 0, 16).unwrap()), 1, 1).unwrap() + &r8).unwrap();
        let b16 = b.narrow(0, 0, 16).unwrap();
        let got = conv2d_prepared_residual(&x8, &w8, Some(&b16), 1, 1, &prepared8, &r8).unwrap();
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "8×8 b5");
        assert_eq!(
            prepared8.prepared(),
            1,
            "8×8 from 288 channels takes Winograd"
        );
        // A residual of another shape is not taken into the op: the add reports it.
        let x = randn(&[1, 16, 16, 16], 40);
        let r = randn(&[1, 24, 8, 8], 41);
        assert!(conv2d_prepared_residual(&x, &w, Some(&b), 1, 1, &prepared, &r).is_err());
    }

    /// Training weights (a `Var`) and differentiated inputs never use a cached transform, so
    /// an optimiser step is seen at once and gradients flow.
    #[test]
    fn tracked_weights_and_inputs_are_not_prepared() {
        let w = Var::from_tensor(&randn(&[16, 16, 3, 3], 3)).unwrap();
        let x = randn(&[1, 16, 8, 8], 4);
        let prepared = PreparedWeights::default();
        let y1 = conv2d_prepared(&x, w.as_tensor(), None, 1, 1, &prepared).unwrap();
        w.set(&(w.as_tensor() * 2.0).unwrap()).unwrap();
        let y2 = conv2d_prepared(&x, w.as_tensor(), None, 1, 1, &prepared).unwrap();
        assert_eq!(prepared.prepared(), 0);
        let ratio = (y2 / y1)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((ratio - 2.0).abs() < 1e-4, "{ratio}");

        let xv = Var::from_tensor(&x).unwrap();
        let plain = randn(&[16, 16, 3, 3], 3);
        let y = conv2d_prepared(xv.as_tensor(), &plain, None, 1, 1, &prepared).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(xv.as_tensor()).is_some());
        assert_eq!(prepared.prepared(), 0);
    }
}
