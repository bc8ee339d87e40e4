//! Fused attention for small heads (d ≤ 32) on the channel-first map, a candle custom op over
//! `cuda/attention.cu` (inference only).
//!
//! Written because diffusers' default `attention_head_dim = 8` gives 32 heads of d = 8, for
//! which the GEMM + softmax form spends its time writing and reading the [B·heads, N, N]
//! scores (measured: the heads-8 forward at 0.74–0.88× PyTorch, docs/benchmarks.md). Checked
//! against that composition on the GPU by `langevin-bench --parity --device cuda`.
use candle_core::{DType, Tensor};

/// Head sizes the kernel is compiled for.
const HEAD_DIMS: [usize; 3] = [8, 16, 32];

/// Whether [`attention`] takes `q` (a CUDA f32/bf16 tensor of head size `d`).
pub fn supported(q: &Tensor, d: usize) -> bool {
    cfg!(feature = "cuda")
        && q.device().is_cuda()
        && matches!(q.dtype(), DType::F32 | DType::BF16)
        && HEAD_DIMS.contains(&d)
        && super::gpu::enabled()
}

/// `o[h, :, i] = Σ_j softmax_j(q[h, :, i] · k[h, :, j]) · v[h, :, j]`, the scale already in q.
///
/// # Shapes
/// `q`, `k`, `v`: [B·heads, d, N] → [B·heads, d, N].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    if q.dims() != k.dims() || q.dims() != v.dims() || q.rank() != 3 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} must all be [B·heads, d, N]",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let op = imp::Attention {
        heads: 1,
        cl: false,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// [`attention`] on channels-last maps ([`super::gpu_nhwc`]): `heads` heads of d = C / heads
/// channels each, head h being channels h·d … h·d + d − 1 (diffusers' split). The result is
/// channels-last.
///
/// # Shapes
/// `q`, `k`, `v`: [B, C, H, W] channels-last → [B, C, H, W] channels-last.
pub fn attention_channels_last(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> candle_core::Result<Tensor> {
    use super::gpu_nhwc::{logical, physical, to_channels_last};
    if q.dims() != k.dims() || q.dims() != v.dims() || q.rank() != 4 || q.dim(1)? % heads != 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} must all be [B, heads·d, H, W]",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let p = |t: &Tensor| physical(&to_channels_last(t)?);
    let op = imp::Attention { heads, cl: true };
    logical(&p(q)?.apply_op3(&p(k)?, &p(v)?, op)?)
}

/// The composed reference on any device: softmax(qᵀk)·vᵀ in the same layout.
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let p = candle_nn::ops::softmax_last_dim(&q.t()?.matmul(k)?)?; // [BH, N, N]
    v.matmul(&p.t()?)
}

#[cfg(feature = "cuda")]
mod imp {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Shape, WithDType};

    use super::super::gpu::{by_dtype, suffix, view};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
    /// Queries per block (one per thread).
    const THREADS: usize = 128;

    /// `cl`: q, k, v are [B, H, W, heads·d] (channels-last) instead of [B·heads, d, N].
    pub struct Attention {
        pub heads: usize,
        pub cl: bool,
    }

    impl Attention {
        fn run<T: CudaDType + DeviceRepr + WithDType>(
            &self,
            q: (&CudaStorage, &Layout),
            k: (&CudaStorage, &Layout),
            v: (&CudaStorage, &Layout),
        ) -> candle_core::Result<CudaSlice<T>> {
            let dev = q.0.device();
            let (bh, d, n) = match self.cl {
                true => {
                    let (b, h, w, c) = q.1.shape().dims4()?;
                    (b * self.heads, c / self.heads, h * w)
                }
                false => q.1.shape().dims3()?,
            };
            if !super::HEAD_DIMS.contains(&d) {
                candle_core::bail!("attention: head size {d} not in {:?}", super::HEAD_DIMS)
            }
            let f = dev.get_or_load_custom_func(
                &format!("attention_cf_{}_d{d}", suffix(T::DTYPE)?),
                "langevin_attention",
                PTX,
            )?;
            let (qv, kv, vv) = (
                view::<T>(q.0, q.1)?,
                view::<T>(k.0, k.1)?,
                view::<T>(v.0, v.1)?,
            );
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<T>(bh * d * n)? };
            let (ni, hi, cl) = (n as i32, self.heads as i32, self.cl as i32);
            let mut a = f.builder();
            a.arg(&qv)
                .arg(&kv)
                .arg(&vv)
                .arg(&out)
                .arg(&ni)
                .arg(&hi)
                .arg(&cl);
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(THREADS) as u32, bh as u32, 1),
                block_dim: (THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the argument list matches `attention_cf_*` in attention.cu; q, k, v and
            // the output all hold bh·d·n elements (checked by the caller's shape test).
            unsafe { a.launch(cfg) }.w()?;
            Ok(out)
        }
    }

    impl CustomOp3 for Attention {
        fn name(&self) -> &'static str {
            "langevin-gpu-attention"
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
            q: &CudaStorage,
            ql: &Layout,
            k: &CudaStorage,
            kl: &Layout,
            v: &CudaStorage,
            vl: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let st = by_dtype!(self, q, (q, ql), (k, kl), (v, vl));
            Ok((st, ql.shape().clone()))
        }
    }
}

/// Without the `cuda` feature the op exists but [`supported`] is never true.
#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::{CpuStorage, CustomOp3, Layout, Shape};

    pub struct Attention {
        pub heads: usize,
        pub cl: bool,
    }

    impl CustomOp3 for Attention {
        fn name(&self) -> &'static str {
            "langevin-gpu-attention"
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
            let _ = (self.heads, self.cl);
            candle_core::bail!("the fused attention needs a build with the `cuda` feature")
        }
    }
}
