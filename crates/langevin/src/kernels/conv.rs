//! 2-D convolution on the CPU by im2col + GEMM, one image per worker, with its own backward
//! pass (input gradient by GEMM + col2im, weight gradient by GEMM against the recomputed
//! columns).
//!
//! Written because candle 0.11's CPU convolution backward (a naive `conv_transpose2d` and a
//! convolution over transposed tensors) made a UNet training step ~8× slower than PyTorch
//! (issue 5; numbers in `docs/benchmarks.md`). The matrix products go to the `gemm` crate,
//! the same engine candle's matmul uses.
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::real::{data, min_len, own_kernel, threads, with_data, Real};

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

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &[usize], w: &[usize], s: usize, p: usize) -> candle_core::Result<Self> {
        let bad = || candle_core::Error::Msg(format!("conv2d: input {x:?} and weight {w:?}"));
        let ([b, c, h, wd], [o, ci, k, k2]) = (
            <[usize; 4]>::try_from(x).map_err(|_| bad())?,
            <[usize; 4]>::try_from(w).map_err(|_| bad())?,
        );
        if ci != c || k != k2 || s == 0 || h + 2 * p < k || wd + 2 * p < k {
            return Err(bad());
        }
        Ok(Self {
            b,
            c,
            h,
            w: wd,
            o,
            k,
            s,
            p,
            ho: (h + 2 * p - k) / s + 1,
            wo: (wd + 2 * p - k) / s + 1,
        })
    }
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
    fn hwi(&self) -> usize {
        self.h * self.w
    }
    fn hwo(&self) -> usize {
        self.ho * self.wo
    }
    /// A 1×1 stride-1 convolution is a plain matrix product; no columns needed.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }
    /// The output columns `ox` whose input column `ox·s + kx − p` lies inside the image.
    fn valid_cols(&self, kx: usize) -> (usize, usize) {
        let lo = if kx >= self.p {
            0
        } else {
            (self.p - kx).div_ceil(self.s)
        };
        let hi = if self.w + self.p > kx {
            ((self.w - 1 + self.p - kx) / self.s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Unfold one image [C, H, W] into columns [C·k·k, Ho·Wo].
fn im2col<T: Real>(x: &[T], g: &Geom, col: &mut [T]) {
    let (k, s, hwo) = (g.k, g.s, g.hwo());
    for c in 0..g.c {
        let xc = &x[c * g.hwi()..(c + 1) * g.hwi()];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((c * k + ky) * k + kx) * hwo..][..hwo];
                let (lo, hi) = g.valid_cols(kx);
                for oy in 0..g.ho {
                    let dst = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    let iy = (oy * s + ky) as isize - g.p as isize;
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(T::ZERO);
                        continue;
                    }
                    let src = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    dst[..lo].fill(T::ZERO);
                    dst[hi..].fill(T::ZERO);
                    let ix0 = lo * s + kx - g.p;
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (j, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = src[ix0 + j * s];
                        }
                    }
                }
            }
        }
    }
}

/// Fold columns [C·k·k, Ho·Wo] back onto one image [C, H, W], adding overlaps (the adjoint of
/// [`im2col`]). `dx` must be zeroed.
fn col2im<T: Real>(col: &[T], g: &Geom, dx: &mut [T]) {
    let (k, s, hwo) = (g.k, g.s, g.hwo());
    for c in 0..g.c {
        let xc = &mut dx[c * g.hwi()..(c + 1) * g.hwi()];
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((c * k + ky) * k + kx) * hwo..][..hwo];
                let (lo, hi) = g.valid_cols(kx);
                for oy in 0..g.ho {
                    let iy = (oy * s + ky) as isize - g.p as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let src = &row[oy * g.wo..(oy + 1) * g.wo];
                    let dst = &mut xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let ix0 = lo * s + kx - g.p;
                    if s == 1 {
                        for (d, v) in dst[ix0..ix0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d += *v;
                        }
                    } else {
                        for (j, v) in src[lo..hi].iter().enumerate() {
                            dst[ix0 + j * s] += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Row-major strides of a matrix operand: (row stride, column stride).
pub(super) type Strides = (usize, usize);

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` with `dst` row-major.
#[allow(clippy::too_many_arguments)]
pub(super) fn mm<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    (lrs, lcs): Strides,
    rhs: &[T],
    (rrs, rcs): Strides,
    par: Parallelism,
) {
    assert!(dst.len() >= m * n);
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
            1,
            n as isize,
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

/// Work split: whole images per worker when the batch fills the pool, else one image at a time
/// with a multi-threaded GEMM.
/// The third value is the `with_min_len` of the loop over images.
fn split(b: usize) -> (bool, Parallelism, usize) {
    let nt = threads();
    if b >= nt || nt == 1 {
        (true, Parallelism::None, min_len(nt))
    } else {
        (false, Parallelism::Rayon(nt), 1)
    }
}

fn forward<T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let (ckk, hwo) = (g.ckk(), g.hwo());
    let mut out = vec![T::ZERO; g.b * g.o * hwo];
    let one = |xb: &[T], ob: &mut [T], col: &mut Vec<T>, par| {
        if let Some(bias) = bias {
            for (row, &v) in ob.chunks_mut(hwo).zip(bias) {
                row.fill(v);
            }
        }
        let src: &[T] = if g.pointwise() {
            xb
        } else {
            col.resize(ckk * hwo, T::ZERO);
            im2col(xb, g, col);
            col
        };
        mm(
            (g.o, hwo, ckk),
            ob,
            bias.is_some(),
            wt,
            (ckk, 1),
            src,
            (hwo, 1),
            par,
        );
    };
    let (per_image, par, min) = split(g.b);
    let (ochunk, xchunk) = (g.o * hwo, g.c * g.hwi());
    if per_image {
        out.par_chunks_mut(ochunk)
            .zip(x.par_chunks(xchunk))
            .with_min_len(min)
            .for_each_init(Vec::new, |col, (ob, xb)| one(xb, ob, col, par));
    } else {
        let mut col = Vec::new();
        for (ob, xb) in out.chunks_mut(ochunk).zip(x.chunks(xchunk)) {
            one(xb, ob, &mut col, par);
        }
    }
    out
}

/// dL/dx from dL/dy: columns `Wᵀ·dy`, folded back by [`col2im`].
fn backward_input<T: Real>(dy: &[T], wt: &[T], g: &Geom) -> Vec<T> {
    let (ckk, hwo, hwi) = (g.ckk(), g.hwo(), g.hwi());
    let mut dx = vec![T::ZERO; g.b * g.c * hwi];
    let one = |dyb: &[T], dxb: &mut [T], col: &mut Vec<T>, par| {
        if g.pointwise() {
            mm(
                (g.c, hwi, g.o),
                dxb,
                false,
                wt,
                (1, ckk),
                dyb,
                (hwo, 1),
                par,
            );
        } else {
            col.resize(ckk * hwo, T::ZERO);
            mm(
                (ckk, hwo, g.o),
                col,
                false,
                wt,
                (1, ckk),
                dyb,
                (hwo, 1),
                par,
            );
            col2im(col, g, dxb);
        }
    };
    let (per_image, par, min) = split(g.b);
    let (xchunk, ychunk) = (g.c * hwi, g.o * hwo);
    if per_image {
        dx.par_chunks_mut(xchunk)
            .zip(dy.par_chunks(ychunk))
            .with_min_len(min)
            .for_each_init(Vec::new, |col, (dxb, dyb)| one(dyb, dxb, col, par));
    } else {
        let mut col = Vec::new();
        for (dxb, dyb) in dx.chunks_mut(xchunk).zip(dy.chunks(ychunk)) {
            one(dyb, dxb, &mut col, par);
        }
    }
    dx
}

/// dL/dw = Σ_b dy_b · col_bᵀ, in partial sums over groups of images.
fn backward_weight<T: Real>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    let (ckk, hwo) = (g.ckk(), g.hwo());
    let (xchunk, ychunk) = (g.c * g.hwi(), g.o * hwo);
    let images = |range: std::ops::Range<usize>, par| {
        let mut dw = vec![T::ZERO; g.o * ckk];
        let mut col = Vec::new();
        for (n, b) in range.enumerate() {
            let (xb, dyb) = (&x[b * xchunk..][..xchunk], &dy[b * ychunk..][..ychunk]);
            let src: &[T] = if g.pointwise() {
                xb
            } else {
                col.resize(ckk * hwo, T::ZERO);
                im2col(xb, g, &mut col);
                &col
            };
            mm(
                (g.o, ckk, hwo),
                &mut dw,
                n > 0,
                dyb,
                (hwo, 1),
                src,
                (1, hwo),
                par,
            );
        }
        dw
    };
    // The images are summed in a fixed number of consecutive groups and the groups' sums added
    // in order, so the result does not depend on the number of threads (which
    // `crate::threads::adapt` may change between calls).
    let groups = g.b.clamp(1, WEIGHT_GRAD_GROUPS);
    let per = g.b.div_ceil(groups);
    let range = |t: usize| (t * per).min(g.b)..((t + 1) * per).min(g.b);
    let nt = threads();
    let parts: Vec<Vec<T>> = if groups >= nt && nt > 1 {
        (0..groups)
            .into_par_iter()
            .map(|t| images(range(t), Parallelism::None))
            .collect()
    } else {
        let par = if nt > 1 {
            Parallelism::Rayon(nt)
        } else {
            Parallelism::None
        };
        (0..groups).map(|t| images(range(t), par)).collect()
    };
    let mut parts = parts.into_iter();
    let mut dw = parts.next().unwrap_or_else(|| vec![T::ZERO; g.o * ckk]);
    for p in parts {
        for (x, y) in dw.iter_mut().zip(p) {
            *x += y;
        }
    }
    dw
}

/// Partial sums of the weight gradient: enough groups to keep 8 threads busy, few enough that
/// adding them up costs nothing next to the GEMMs.
const WEIGHT_GRAD_GROUPS: usize = 8;

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
    let st = match (s1.dtype(), s2.dtype()) {
        (DType::F32, DType::F32) => f32::storage(f32f(data(s1, l1, op)?, data(s2, l2, op)?)),
        (DType::F64, DType::F64) => f64::storage(f64f(data(s1, l1, op)?, data(s2, l2, op)?)),
        (a, b) => {
            return Err(candle_core::Error::Msg(format!(
                "{op}: unsupported dtypes {a:?}, {b:?}"
            )))
        }
    };
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
        let dx = dy.apply_op2_no_bwd(&w.contiguous()?, &BackwardInput(g))?;
        let dw = x.contiguous()?.apply_op2_no_bwd(&dy, &BackwardWeight(g))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// dL/dbias: the sum of dy over batch and positions, per output channel.
fn bias_grad<T: Real>(dy: &[T], g: &Geom) -> Vec<T> {
    let hwo = g.hwo();
    let mut db = vec![0f64; g.o];
    for img in dy.chunks(g.o * hwo) {
        for (d, row) in db.iter_mut().zip(img.chunks(hwo)) {
            *d += row.iter().map(|v| v.to_f64()).sum::<f64>();
        }
    }
    db.into_iter().map(T::from_f64).collect()
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
