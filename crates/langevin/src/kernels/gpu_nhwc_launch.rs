//! The CUDA launches of [`super`]'s channels-last kernels (`cuda/nhwc.cu`) as candle custom
//! ops over the [B, H, W, C] memory: group norm (with the [`super::plan`] geometry), the
//! bias/residual epilogue and ×2 upsampling.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor,
    WithDType,
};

use super::super::gpu::{by_dtype, suffix, vec_width, view, with_side};

use super::{gn_form, plan, split_plan, GnForm, SplitPlan};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/nhwc.ptx"));

/// The group norm of the [B, H, W, C] memory `x` (see [`super::group_norm`]).
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    shift: Option<Tensor>,
    groups: usize,
    eps: f32,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let op = GroupNormCl {
        groups,
        eps,
        silu,
        shift,
    };
    x.apply_op3(gamma, beta, op)
}

/// The bias/residual epilogue over [B, H, W, C] memory (see [`super::bias_residual`]).
pub fn bias_residual(
    x: &Tensor,
    bias: Option<Tensor>,
    residual: Option<Tensor>,
    scale: f32,
) -> candle_core::Result<Tensor> {
    x.apply_op1(BiasResidualCl {
        bias,
        residual,
        scale,
    })
}

/// ×2 nearest upsampling of [B, H, W, C] memory.
pub fn upsample2x(x: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op1(Upsample2xCl)
}

/// `cat([a, b], channels)` of [B, H, W, Ca] and [B, H, W, Cb] memory.
pub fn cat_channels(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    a.apply_op2(b, CatChannelsCl)
}

/// `ph` rows and `pw` columns of zeros after each [B, H, W, C] map.
pub fn pad_bottom_right(x: &Tensor, ph: usize, pw: usize) -> candle_core::Result<Tensor> {
    x.apply_op1(PadBr { ph, pw })
}

/// The kernel `name` for a dtype and vector width (`bias_residual_cl_bf16_v8`, …),
/// loaded once per device.
macro_rules! func {
    ($dev:expr, $name:expr, $dt:expr, $v:expr) => {{
        let name = format!("{}_{}_v{}", $name, suffix($dt)?, $v);
        $dev.get_or_load_custom_func(&name, "langevin_nhwc", PTX)?
    }};
}

/// The launch of a grid-stride kernel over `nv` vectors: blocks of 256 threads, at most
/// 65535 · 8 blocks.
fn vectors(nv: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (nv.div_ceil(256).min(65535 * 8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

struct GroupNormCl {
    groups: usize,
    eps: f32,
    silu: bool,
    shift: Option<Tensor>,
}

impl GroupNormCl {
    fn run<T: CudaDType + DeviceRepr + WithDType>(
        &self,
        x: (&CudaStorage, &Layout),
        gamma: (&CudaStorage, &Layout),
        beta: (&CudaStorage, &Layout),
    ) -> candle_core::Result<CudaSlice<T>> {
        let dev = x.0.device();
        let (b, h, w, c) = x.1.shape().dims4()?;
        let s = h * w;
        if gamma.1.dims() != [c] || beta.1.dims() != [c] || c % self.groups != 0 {
            candle_core::bail!(
                "channels-last group norm: {c} channels, γ {:?}",
                gamma.1.dims()
            )
        }
        let xv = view::<T>(x.0, x.1)?;
        let (gv, bv) = (view::<T>(gamma.0, gamma.1)?, view::<T>(beta.0, beta.1)?);
        with_side(&self.shift, |sh| {
            if let Some((_, l)) = sh {
                if l.dims() != [b, c] {
                    candle_core::bail!("channels-last group norm: shift {:?}", l.dims())
                }
            }
            let shv = sh.map(|(s, l)| view::<T>(s, l)).transpose()?;
            let max_v = vec_width::<T>(dev, c, &[Some(&xv)])?;
            if gn_form() == GnForm::Split {
                if let Some(sp) = split_plan(c, s, std::mem::size_of::<T>(), max_v) {
                    return self.split::<T>(dev, &xv, shv.as_ref(), &gv, &bv, (b, c, s), sp);
                }
            }
            let Some(p) = plan(c, self.groups, s, std::mem::size_of::<T>(), max_v) else {
                candle_core::bail!(
                    "channels-last group norm: no plan for C {c}, G {}, S {s}",
                    self.groups
                )
            };
            let f = match p.registers {
                true => {
                    let name = format!("group_norm_cl_reg_{}_v{}_k{}", suffix(T::DTYPE)?, p.v, p.k);
                    dev.get_or_load_custom_func(&name, "langevin_nhwc", PTX)?
                }
                false => func!(dev, "group_norm_cl_loop", T::DTYPE, p.v),
            };
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<T>(b * s * c)? };
            let null = 0u64;
            let (ci, gi, si, chi) = (c as i32, self.groups as i32, s as i32, p.ch as i32);
            let silu = self.silu as i32;
            let mut a = f.builder();
            a.arg(&xv);
            match &shv {
                Some(v) => a.arg(v),
                None => a.arg(&null),
            };
            a.arg(&gv)
                .arg(&bv)
                .arg(&out)
                .arg(&ci)
                .arg(&gi)
                .arg(&si)
                .arg(&chi)
                .arg(&self.eps)
                .arg(&silu);
            let cfg = LaunchConfig {
                grid_dim: ((b * (c / p.ch) * p.k) as u32, 1, 1),
                block_dim: (p.threads as u32, 1, 1),
                // `group_totals`: a row of CH partial sums per warp, the block's and the
                // cluster's CH totals.
                shared_mem_bytes: ((p.threads / 32 + 2) * p.ch * 4) as u32,
            };
            // SAFETY: the argument list matches `group_norm_cl_*` in nhwc.cu; `plan` keeps
            // the block within its limits (channels ≤ CL_MAX_CH, ≤ 512 threads, V | C).
            unsafe { a.launch(cfg) }.w()?;
            Ok(out)
        })
    }
}

impl GroupNormCl {
    /// The split form (see [`super::GnForm`]): per-chunk statistics, their combination, the
    /// normalising pass.
    fn split<T: CudaDType + DeviceRepr + WithDType>(
        &self,
        dev: &CudaDevice,
        xv: &CudaView<T>,
        shv: Option<&CudaView<T>>,
        gv: &CudaView<T>,
        bv: &CudaView<T>,
        (b, c, s): (usize, usize, usize),
        sp: SplitPlan,
    ) -> candle_core::Result<CudaSlice<T>> {
        let g = self.groups;
        let null = 0u64;
        let (ci, gi, si, pi) = (c as i32, g as i32, s as i32, sp.p as i32);
        let blocks = (b * sp.nchunk) as u32;
        // SAFETY (the three allocations): every element is written by the kernel that
        // produces it before the next one reads it.
        let part = unsafe { dev.alloc::<f32>(2 * b * sp.nchunk * g)? };
        let stats = unsafe { dev.alloc::<f32>(2 * b * g)? };
        let out = unsafe { dev.alloc::<T>(b * s * c)? };
        let f = func!(dev, "group_norm_cl_stats", T::DTYPE, sp.v);
        let mut a = f.builder();
        a.arg(xv);
        match shv {
            Some(v) => a.arg(v),
            None => a.arg(&null),
        };
        a.arg(&part).arg(&ci).arg(&gi).arg(&si).arg(&pi);
        let ty = sp.threads / (c / sp.v);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (sp.threads as u32, 1, 1),
            // `chunk_group_totals`' rows and column sums, the group sums and M2s.
            shared_mem_bytes: ((ty * c + c + 2 * g) * 4) as u32,
        };
        // SAFETY: the arguments match `group_norm_cl_stats_*`; `split_plan` keeps c / v ≤
        // the block's threads.
        unsafe { a.launch(cfg) }.w()?;
        let f = dev.get_or_load_custom_func("group_norm_cl_finalize", "langevin_nhwc", PTX)?;
        let (bi, cgi) = (b as i32, (c / g) as i32);
        let mut a = f.builder();
        a.arg(&part)
            .arg(&stats)
            .arg(&bi)
            .arg(&gi)
            .arg(&si)
            .arg(&pi)
            .arg(&cgi)
            .arg(&self.eps);
        // SAFETY: the arguments match `group_norm_cl_finalize`; one thread per (b, g).
        unsafe { a.launch(LaunchConfig::for_num_elems((b * g) as u32)) }.w()?;
        let f = func!(dev, "group_norm_cl_apply", T::DTYPE, sp.v);
        let silu = self.silu as i32;
        let mut a = f.builder();
        a.arg(xv);
        match shv {
            Some(v) => a.arg(v),
            None => a.arg(&null),
        };
        a.arg(&stats)
            .arg(gv)
            .arg(bv)
            .arg(&out)
            .arg(&ci)
            .arg(&gi)
            .arg(&si)
            .arg(&pi)
            .arg(&silu);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (sp.threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `group_norm_cl_apply_*`.
        unsafe { a.launch(cfg) }.w()?;
        Ok(out)
    }
}

impl CustomOp3 for GroupNormCl {
    fn name(&self) -> &'static str {
        "langevin-gpu-group-norm-nhwc"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA only", self.name())
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let st = by_dtype!(self, x, (x, xl), (g, gl), (b, bl));
        Ok((st, xl.shape().clone()))
    }
}

struct BiasResidualCl {
    bias: Option<Tensor>,
    residual: Option<Tensor>,
    scale: f32,
}

impl BiasResidualCl {
    fn run<T: CudaDType + DeviceRepr + WithDType>(
        &self,
        x: &CudaStorage,
        xl: &Layout,
    ) -> candle_core::Result<CudaSlice<T>> {
        let dev = x.device();
        let c = *xl.dims().last().unwrap_or(&1);
        let n = xl.shape().elem_count();
        let xv = view::<T>(x, xl)?;
        with_side(&self.bias, |bias| {
            with_side(&self.residual, |res| {
                if let Some((_, l)) = bias {
                    if l.dims() != [c] {
                        candle_core::bail!(
                            "channels-last bias_residual: bias {:?}, want [{c}]",
                            l.dims()
                        )
                    }
                }
                if let Some((_, l)) = res {
                    if l.dims() != xl.dims() {
                        candle_core::bail!("channels-last bias_residual: residual {:?}", l.dims())
                    }
                }
                let bv = bias.map(|(s, l)| view::<T>(s, l)).transpose()?;
                let rv = res.map(|(s, l)| view::<T>(s, l)).transpose()?;
                let v = vec_width::<T>(dev, c, &[Some(&xv), rv.as_ref(), bv.as_ref()])?;
                let nv = n / v;
                if nv >= u32::MAX as usize {
                    candle_core::bail!("bias_residual: {n} elements are too many for one launch")
                }
                let f = func!(dev, "bias_residual_cl", T::DTYPE, v);
                // SAFETY: every element is written by the kernel.
                let out = unsafe { dev.alloc::<T>(n)? };
                let null = 0u64;
                let (nvi, cvi) = (nv as u32, (c / v) as u32);
                let mut a = f.builder();
                a.arg(&xv);
                match &bv {
                    Some(v) => a.arg(v),
                    None => a.arg(&null),
                };
                match &rv {
                    Some(v) => a.arg(v),
                    None => a.arg(&null),
                };
                a.arg(&out).arg(&nvi).arg(&cvi).arg(&self.scale);
                let cfg = vectors(nv);
                // SAFETY: the argument list matches `bias_residual_cl_*` in nhwc.cu; sizes checked
                // above, vectors aligned (vec_width).
                unsafe { a.launch(cfg) }.w()?;
                Ok(out)
            })
        })
    }
}

impl CustomOp1 for BiasResidualCl {
    fn name(&self) -> &'static str {
        "langevin-gpu-bias-residual-nhwc"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA only", self.name())
    }
    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let st = by_dtype!(self, x, x, l);
        Ok((st, l.shape().clone()))
    }
}

struct Upsample2xCl;

impl Upsample2xCl {
    fn run<T: CudaDType + DeviceRepr + WithDType>(
        &self,
        x: &CudaStorage,
        xl: &Layout,
    ) -> candle_core::Result<CudaSlice<T>> {
        let dev = x.device();
        let (_, h, w, c) = xl.shape().dims4()?;
        let n = xl.shape().elem_count() * 4;
        let xv = view::<T>(x, xl)?;
        let v = vec_width::<T>(dev, c, &[Some(&xv)])?;
        let nv = n / v;
        if nv >= u32::MAX as usize {
            candle_core::bail!("upsample2x: {n} elements are too many for one launch")
        }
        let f = func!(dev, "upsample2x_cl", T::DTYPE, v);
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(n)? };
        let (nvi, hi, wi, cvi) = (nv as u32, h as i32, w as i32, (c / v) as u32);
        let mut a = f.builder();
        a.arg(&xv).arg(&out).arg(&nvi).arg(&hi).arg(&wi).arg(&cvi);
        let cfg = vectors(nv);
        // SAFETY: the argument list matches `upsample2x_cl_*` in nhwc.cu.
        unsafe { a.launch(cfg) }.w()?;
        Ok(out)
    }
}

impl CustomOp1 for Upsample2xCl {
    fn name(&self) -> &'static str {
        "langevin-gpu-upsample2x-nhwc"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA only", self.name())
    }
    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, h, w, c) = l.shape().dims4()?;
        let st = by_dtype!(self, x, x, l);
        Ok((st, Shape::from((b, 2 * h, 2 * w, c))))
    }
}

struct CatChannelsCl;

impl CatChannelsCl {
    fn run<T: CudaDType + DeviceRepr + WithDType>(
        &self,
        a: (&CudaStorage, &Layout),
        b: (&CudaStorage, &Layout),
    ) -> candle_core::Result<CudaSlice<T>> {
        let dev = a.0.device();
        let (n, h, w, ca) = a.1.shape().dims4()?;
        let (nb, hb, wb, cb) = b.1.shape().dims4()?;
        if (n, h, w) != (nb, hb, wb) {
            candle_core::bail!(
                "channels-last concatenation: {:?} and {:?}",
                a.1.dims(),
                b.1.dims()
            )
        }
        let (av, bv) = (view::<T>(a.0, a.1)?, view::<T>(b.0, b.1)?);
        let total = n * h * w * (ca + cb);
        // One width for both inputs: it must divide both channel counts and align both.
        let v = vec_width::<T>(dev, ca, &[Some(&av)])?.min(vec_width::<T>(dev, cb, &[Some(&bv)])?);
        let nv = total / v;
        if nv >= u32::MAX as usize {
            candle_core::bail!("channels-last concatenation: {total} elements are too many")
        }
        let f = func!(dev, "cat_channels_cl", T::DTYPE, v);
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(total)? };
        let (nvi, cav, cbv) = (nv as u32, (ca / v) as u32, (cb / v) as u32);
        let mut l = f.builder();
        l.arg(&av).arg(&bv).arg(&out).arg(&nvi).arg(&cav).arg(&cbv);
        let cfg = vectors(nv);
        // SAFETY: the argument list matches `cat_channels_cl_*` in nhwc.cu.
        unsafe { l.launch(cfg) }.w()?;
        Ok(out)
    }
}

impl CustomOp2 for CatChannelsCl {
    fn name(&self) -> &'static str {
        "langevin-gpu-cat-channels-nhwc"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA only", self.name())
    }
    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let st = by_dtype!(self, a, (a, al), (b, bl));
        let (n, h, w, ca) = al.shape().dims4()?;
        let cb = bl.dims()[3];
        Ok((st, Shape::from((n, h, w, ca + cb))))
    }
}

struct PadBr {
    ph: usize,
    pw: usize,
}

impl PadBr {
    fn run<T: CudaDType + DeviceRepr + WithDType>(
        &self,
        x: &CudaStorage,
        xl: &Layout,
    ) -> candle_core::Result<CudaSlice<T>> {
        let dev = x.device();
        let (b, h, w, c) = xl.shape().dims4()?;
        let (hp, wp) = (h + self.ph, w + self.pw);
        let n = b * hp * wp * c;
        let xv = view::<T>(x, xl)?;
        let v = vec_width::<T>(dev, c, &[Some(&xv)])?;
        let nv = n / v;
        if nv >= u32::MAX as usize {
            candle_core::bail!("channels-last padding: {n} elements are too many for one launch")
        }
        let f = func!(dev, "pad_br_cl", T::DTYPE, v);
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(n)? };
        let (nvi, cvi) = (nv as u32, (c / v) as u32);
        let (hi, wi, hpi, wpi) = (h as i32, w as i32, hp as i32, wp as i32);
        let mut a = f.builder();
        a.arg(&xv)
            .arg(&out)
            .arg(&nvi)
            .arg(&hi)
            .arg(&wi)
            .arg(&hpi)
            .arg(&wpi)
            .arg(&cvi);
        let cfg = vectors(nv);
        // SAFETY: the argument list matches `pad_br_cl_*` in nhwc.cu.
        unsafe { a.launch(cfg) }.w()?;
        Ok(out)
    }
}

impl CustomOp1 for PadBr {
    fn name(&self) -> &'static str {
        "langevin-gpu-pad-nhwc"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA only", self.name())
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let st = by_dtype!(self, x, x, xl);
        let (b, h, w, c) = xl.shape().dims4()?;
        Ok((st, Shape::from((b, h + self.ph, w + self.pw, c))))
    }
}
