//! 2-D convolution on the CPU by im2col + GEMM, one image per worker, with its own backward
//! pass (input gradient as a convolution of dy with the flipped weights at stride 1, else by
//! GEMM + col2im; weight gradient by GEMM against the recomputed columns). The arithmetic is in
//! [`super::cpu_conv`]; this file holds the candle ops and the GEMM form for other devices.
//!
//! Written because candle 0.11's CPU convolution backward (a naive `conv_transpose2d` and a
//! convolution over transposed tensors) made a UNet training step ~8× slower than PyTorch
//! (issue 5; numbers in `docs/benchmarks.md`). The matrix products go to the `gemm` crate,
//! the same engine candle's matmul uses.
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use gemm::Parallelism;

use super::cpu_conv::{backward_input, backward_weight, bias_grad, forward, Geom};
use super::real::{data, dispatch, own_kernel, with_data, Real};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Use the own CPU kernels (`true`, the default) or candle's ops (`false`, for benchmarks and
/// reference tests). Applies to every kernel in [`crate::kernels`].
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the own CPU kernels are in use.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `y = conv2d(x, w) + bias` with square kernels, zero padding `padding` on all sides and
/// `stride`; no dilation, no groups (as `torch.nn.functional.conv2d`). The bias is added in the
/// kernel (the GEMM accumulates onto it).
///
/// # Shapes
/// `x`: [B, C, H, W]; `w`: [O, C, k, k]; `bias`: [O]; returns
/// [B, O, (H + 2p − k)/s + 1, (W + 2p − k)/s + 1].
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    let op = Conv2dOp { stride, padding };
    let same = |t: &Tensor| t.dtype() == x.dtype();
    if enabled() && own_kernel(x) && kh == kw && same(w) && bias.is_none_or(same) {
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        match bias {
            Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
            None => x.apply_op2(&w, op),
        }
    } else if cfg!(feature = "cudnn")
        && super::gpu_train::available(x)
        && kh == kw
        && same(w)
        && bias.is_none_or(same)
        && !gemm_on_gpu()
    {
        // CUDA (training included): cuDNN forward and both gradients, with cached plans and a
        // bounded workspace (`cudnn_conv`).
        let y = super::cudnn_conv::conv2d(x, w, padding, stride)?;
        match bias {
            Some(b) => super::gpu_train::bias_residual(&y, b, None, 1.0),
            None => Ok(y),
        }
    } else if kh == kw && (x.track_op() || w.track_op() || gemm_on_gpu()) {
        // Training on other devices: candle's conv2d backward computes the weight gradient as
        // a convolution with an H×W kernel, which cuDNN's heuristic pairs with workspaces that
        // exhaust a 141 GB GPU (measured on an H200); the GEMM form differentiates into GEMMs.
        conv2d_gemm(x, w, bias, stride, padding)
    } else {
        let y = x.conv2d(w, padding, stride, 1, 1)?;
        match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

/// `LANGEVIN_GPU_CONV=gemm` runs inference convolutions off the CPU in the GEMM form too
/// (instead of candle's cuDNN call), for comparing the two on a GPU.
fn gemm_on_gpu() -> bool {
    static GEMM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GEMM.get_or_init(|| std::env::var("LANGEVIN_GPU_CONV").is_ok_and(|v| v == "gemm"))
}

/// [`conv2d`] as im2col + one matrix product, in candle ops on any device, so that its
/// backward pass is two matrix products and copies: y[o, (b, p)] = W[o, (c, ky, kx)] ·
/// cols[(c, ky, kx), (b, p)], the columns being k² strided slices of the zero-padded input.
pub fn conv2d_gemm(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, c2, k, _) = w.dims4()?;
    if c2 != c {
        candle_core::bail!("conv2d: input has {c} channels, weight expects {c2}")
    }
    let s = stride;
    let (ho, wo) = (
        (h + 2 * padding - k) / s + 1,
        (wd + 2 * padding - k) / s + 1,
    );
    // Extra zeros past the far edges so every strided slice of length s·ho fits.
    let eh = (k - 1 + s * ho).saturating_sub(h + 2 * padding);
    let ew = (k - 1 + s * wo).saturating_sub(wd + 2 * padding);
    let xp =
        x.pad_with_zeros(2, padding, padding + eh)?
            .pad_with_zeros(3, padding, padding + ew)?;
    let mut cols = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let t = xp.narrow(2, ky, s * ho)?.narrow(3, kx, s * wo)?;
            let t = if s > 1 {
                t.reshape((b, c, ho, s, wo, s))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((b, c, ho, wo))?
            } else {
                t
            };
            cols.push(t.transpose(0, 1)?); // [c, b, ho, wo]
        }
    }
    let cols = Tensor::stack(&cols, 1)?.reshape((c * k * k, b * ho * wo))?;
    let y = w.reshape((o, c * k * k))?.matmul(&cols)?;
    let y = y.reshape((o, b, ho, wo))?.transpose(0, 1)?.contiguous()?;
    match bias {
        Some(bb) => y.broadcast_add(&bb.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// Row-major strides of a matrix operand: (row stride, column stride).
pub(super) type Strides = (usize, usize);

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` with `dst` row-major.
#[allow(clippy::too_many_arguments)]
pub(super) fn mm<T: Real>(
    mnk: (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    ls: Strides,
    rhs: &[T],
    rs: Strides,
    par: Parallelism,
) {
    gemm_into(mnk, dst, (mnk.1, 1), accumulate, lhs, ls, rhs, rs, par)
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` with `dst` column-major (element (i, j) at `i + j·m`).
/// `gemm` multiplies in its column-major view without transposing the problem here, so `lhs`
/// is the operand it packs; [`super::cpu_conv::backward_weight`] uses this to pack dy (O rows)
/// instead of the C·k² rows of im2col columns that the row-major [`mm`] would pack.
#[allow(clippy::too_many_arguments)]
pub(super) fn mm_colmajor<T: Real>(
    mnk: (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    ls: Strides,
    rhs: &[T],
    rs: Strides,
    par: Parallelism,
) {
    gemm_into(mnk, dst, (1, mnk.0), accumulate, lhs, ls, rhs, rs, par)
}

/// [`mm`] with `dst`'s (row, column) strides given.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_into<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    (drs, dcs): Strides,
    accumulate: bool,
    lhs: &[T],
    (lrs, lcs): Strides,
    rhs: &[T],
    (rrs, rcs): Strides,
    par: Parallelism,
) {
    assert!(m == 0 || n == 0 || dst.len() > (m - 1) * drs + (n - 1) * dcs);
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lrs + (k - 1) * lcs);
    assert!(n == 0 || k == 0 || rhs.len() > (k - 1) * rrs + (n - 1) * rcs);
    // SAFETY: the asserts above keep every index gemm touches inside the three slices, and
    // `dst` does not alias the inputs (it is a `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dcs as isize,
            drs as isize,
            accumulate,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

fn dispatch2(
    op: &str,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    out_shape: Shape,
    f32f: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64f: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let st = dispatch(
        op,
        [(s1, l1), (s2, l2)],
        |[a, b]| f32f(a, b),
        |[a, b]| f64f(a, b),
    )?;
    Ok((st, out_shape))
}

/// The forward convolution as a candle op; its backward pass uses the two ops below.
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "langevin-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        let shape = Shape::from((g.b, g.o, g.ho, g.wo));
        dispatch2(
            CustomOp2::name(self),
            s1,
            l1,
            s2,
            l2,
            shape,
            |x, w| forward(x, w, None, &g),
            |x, w| forward(x, w, None, &g),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.dims(), w.dims(), self.stride, self.padding)?;
        let dy = dy.contiguous()?;
        // Only the gradients someone asked for: a network's input (the first convolution's x)
        // is not tracked, and its input gradient was a full convolution's work for nothing.
        let dx = x
            .track_op()
            .then(|| dy.apply_op2_no_bwd(&w.contiguous()?, &BackwardInput(g)))
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| x.contiguous()?.apply_op2_no_bwd(&dy, &BackwardWeight(g)))
            .transpose()?;
        Ok((dx, dw))
    }
}

/// The convolution with its bias fused in: (x, w, bias) → y.
impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "langevin-conv2d-bias"
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
        let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        if l3.dims() != [g.o] {
            return Err(candle_core::Error::Msg(format!(
                "conv2d: bias {:?} for {} output channels",
                l3.dims(),
                g.o
            )));
        }
        let shape = Shape::from((g.b, g.o, g.ho, g.wo));
        let op = CustomOp3::name(self);
        dispatch2(
            op,
            s1,
            l1,
            s2,
            l2,
            shape,
            |x, w| forward(x, w, data::<f32>(s3, l3, op).ok(), &g),
            |x, w| forward(x, w, data::<f64>(s3, l3, op).ok(), &g),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = CustomOp2::bwd(self, x, w, res, dy)?;
        let g = Geom::new(x.dims(), w.dims(), self.stride, self.padding)?;
        let db = match dy.dtype() {
            DType::F32 => with_data::<f32, _>(dy, "conv2d", |d| {
                Tensor::from_vec(bias_grad(d, &g), b.shape(), &Device::Cpu)
            })?,
            _ => with_data::<f64, _>(dy, "conv2d", |d| {
                Tensor::from_vec(bias_grad(d, &g), b.shape(), &Device::Cpu)
            })?,
        };
        Ok((dx, dw, Some(db)))
    }
}

/// (dy, w) → dx.
struct BackwardInput(Geom);

impl CustomOp2 for BackwardInput {
    fn name(&self) -> &'static str {
        "langevin-conv2d-backward-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let shape = Shape::from((g.b, g.c, g.h, g.w));
        dispatch2(
            self.name(),
            s1,
            l1,
            s2,
            l2,
            shape,
            |dy, w| backward_input(dy, w, &g),
            |dy, w| backward_input(dy, w, &g),
        )
    }
}

/// (x, dy) → dw.
struct BackwardWeight(Geom);

impl CustomOp2 for BackwardWeight {
    fn name(&self) -> &'static str {
        "langevin-conv2d-backward-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let shape = Shape::from((g.o, g.c, g.k, g.k));
        dispatch2(
            self.name(),
            s1,
            l1,
            s2,
            l2,
            shape,
            |x, dy| backward_weight(x, dy, &g),
            |x, dy| backward_weight(x, dy, &g),
        )
    }
}
