//! The multi-tensor optimiser kernels of `cuda/train.cu` (AdamW, EMA, gradient sum of
//! squares): every parameter tensor updated in one launch, through a table of device
//! addresses.
//!
//! Written because the per-tensor AdamW composition was about a dozen launches per parameter
//! tensor, plus one host read-back per tensor for the gradient norm (issue 16). Checked against
//! the composed AdamW on the CPU by `langevin-bench --parity --device cuda`
//! (`gpu_train_checks`).
use candle_core::Tensor;

/// The AdamW constants of one step, as `train::adamw::AdamW::step` computes them.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub grad_scale: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 1 − β1ᵗ and 1 − β2ᵗ.
    pub bc1: f64,
    pub bc2: f64,
    pub lr: f64,
    pub weight_decay: f64,
}

/// One parameter tensor's AdamW state: f32 weight, moments and gradient (f32 or bf16), and an
/// optional bf16 copy of the weight that the network computes with (mixed precision).
pub struct AdamRow<'a> {
    pub theta: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    pub grad: &'a Tensor,
    pub shadow: Option<&'a Tensor>,
}

pub use imp::{adamw, ema, sum_squares};

#[cfg(feature = "cuda")]
mod imp {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DevicePtr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, DType, Storage, Tensor};

    use super::super::gpu::suffix;
    use super::{AdamRow, AdamStep};

    const TRAIN: &str = include_str!(concat!(env!("OUT_DIR"), "/train.ptx"));
    /// Elements per block of the multi-tensor kernels (`CHUNK` in train.cu).
    const CHUNK: usize = 16384;

    /// The device address of `t`'s first element (`t` contiguous, of dtype `dt`, on CUDA).
    /// The address stays valid while `t` lives; kernels launched on the device's stream are
    /// ordered with its eventual (stream-ordered) free.
    fn address(t: &Tensor, dt: DType) -> candle_core::Result<u64> {
        if t.dtype() != dt || !t.is_contiguous() {
            candle_core::bail!(
                "training kernels: want a contiguous {dt:?} tensor, got {:?} {:?}",
                t.dtype(),
                t.dims()
            )
        }
        let (st, l) = t.storage_and_layout();
        let Storage::Cuda(cs) = &*st else {
            candle_core::bail!("training kernels: a tensor is not on the GPU")
        };
        let stream = cs.device().cuda_stream();
        let off = l.start_offset() as u64 * dt.size_in_bytes() as u64;
        let base = match dt {
            DType::F32 => cs.as_cuda_slice::<f32>()?.device_ptr(&stream).0,
            DType::BF16 => cs.as_cuda_slice::<half::bf16>()?.device_ptr(&stream).0,
            d => candle_core::bail!("training kernels: unsupported dtype {d:?}"),
        };
        Ok(base + off)
    }

    fn cuda_device(t: &Tensor) -> candle_core::Result<CudaDevice> {
        match t.device() {
            candle_core::Device::Cuda(d) => Ok(d.clone()),
            _ => candle_core::bail!("training kernels: a tensor is not on the GPU"),
        }
    }

    /// The per-launch tables of the multi-tensor kernels: `fields` u64 per tensor (the last
    /// one the element count) and one (tensor, first element) pair per block.
    fn tables(
        dev: &CudaDevice,
        rows: Vec<Vec<u64>>,
    ) -> candle_core::Result<(CudaSlice<u64>, CudaSlice<i32>, u32)> {
        let mut chunks: Vec<i32> = vec![];
        for (i, r) in rows.iter().enumerate() {
            let n = *r.last().expect("a row ends with its length") as usize;
            for start in (0..n).step_by(CHUNK) {
                chunks.extend([i as i32, start as i32]);
            }
        }
        let blocks = (chunks.len() / 2) as u32;
        let flat: Vec<u64> = rows.into_iter().flatten().collect();
        Ok((
            dev.clone_htod(&flat[..])?,
            dev.clone_htod(&chunks[..])?,
            blocks,
        ))
    }

    fn grid(blocks: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Σ g² over all `grads` (one dtype, f32 or bf16), in f64 over fixed chunks: the result
    /// does not depend on scheduling.
    pub fn sum_squares(grads: &[&Tensor]) -> candle_core::Result<f64> {
        let Some(first) = grads.first() else {
            return Ok(0.0);
        };
        let (dev, dt) = (cuda_device(first)?, first.dtype());
        let rows = grads
            .iter()
            .map(|g| Ok(vec![address(g, dt)?, g.elem_count() as u64]))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (table, chunks, blocks) = tables(&dev, rows)?;
        if blocks == 0 {
            return Ok(0.0);
        }
        // SAFETY: every block writes its slot.
        let part = unsafe { dev.alloc::<f32>(blocks as usize)? };
        let f = dev.get_or_load_custom_func(
            &format!("sumsq_{}", suffix(dt)?),
            "langevin_train",
            TRAIN,
        )?;
        let mut a = f.builder();
        a.arg(&table).arg(&chunks).arg(&part);
        // SAFETY: the table rows are (address, length) of live tensors of dtype `dt`.
        unsafe { a.launch(grid(blocks)) }.w()?;
        let part = dev.clone_dtoh(&part)?;
        Ok(part.iter().map(|&v| v as f64).sum())
    }

    /// One AdamW step over every row, in place (θ, m, v and the shadow are written through
    /// their device addresses: the caller owns them exclusively, as a `Var` and the
    /// optimiser's own moment tensors).
    pub fn adamw(rows: &[AdamRow], k: AdamStep) -> candle_core::Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let (dev, gdt) = (cuda_device(first.theta)?, first.grad.dtype());
        let table = rows
            .iter()
            .map(|r| {
                let n = r.theta.elem_count();
                if [r.m, r.v, r.grad].iter().any(|t| t.elem_count() != n) {
                    candle_core::bail!("adamw: a moment or gradient does not match its weight")
                }
                Ok(vec![
                    address(r.theta, DType::F32)?,
                    address(r.m, DType::F32)?,
                    address(r.v, DType::F32)?,
                    address(r.grad, gdt)?,
                    r.shadow
                        .map(|s| address(s, DType::BF16))
                        .transpose()?
                        .unwrap_or(0),
                    n as u64,
                ])
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (table, chunks, blocks) = tables(&dev, table)?;
        if blocks == 0 {
            return Ok(());
        }
        let f = dev.get_or_load_custom_func(
            &format!("adamw_{}", suffix(gdt)?),
            "langevin_train",
            TRAIN,
        )?;
        // The same f32 constants as the composed AdamW.
        let c = |v: f64| v as f32;
        let args = [
            c(k.grad_scale),
            c(k.beta1),
            c(1.0 - k.beta1),
            c(k.beta2),
            c(1.0 - k.beta2),
            c(1.0 / k.bc1),
            c(1.0 / k.bc2),
            c(k.eps),
            c(1.0 - k.lr * k.weight_decay),
            c(k.lr),
        ];
        let mut a = f.builder();
        a.arg(&table).arg(&chunks);
        for v in &args {
            a.arg(v);
        }
        // SAFETY: the table rows are addresses of live f32 tensors (θ, m, v), the gradient of
        // dtype `gdt` and an optional bf16 shadow, all of length n.
        unsafe { a.launch(grid(blocks)) }.w()?;
        Ok(())
    }

    /// e ← e·d + θ·(1 − d) for every (e, θ) pair (f32), in place.
    pub fn ema(rows: &[(&Tensor, &Tensor)], decay: f64) -> candle_core::Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let dev = cuda_device(first.0)?;
        let table = rows
            .iter()
            .map(|(e, t)| {
                if e.elem_count() != t.elem_count() {
                    candle_core::bail!("ema: an average does not match its weight")
                }
                Ok(vec![
                    address(e, DType::F32)?,
                    address(t, DType::F32)?,
                    e.elem_count() as u64,
                ])
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (table, chunks, blocks) = tables(&dev, table)?;
        if blocks == 0 {
            return Ok(());
        }
        let f = dev.get_or_load_custom_func("ema_f32", "langevin_train", TRAIN)?;
        let (d, nd) = (decay as f32, (1.0 - decay) as f32);
        let mut a = f.builder();
        a.arg(&table).arg(&chunks).arg(&d).arg(&nd);
        // SAFETY: the table rows are addresses of live f32 tensors of the stated length.
        unsafe { a.launch(grid(blocks)) }.w()?;
        Ok(())
    }
}

/// Without the `cuda` feature the functions exist but are never called (the optimiser checks
/// [`super::gpu_train::available`] first).
#[cfg(not(feature = "cuda"))]
mod imp {
    use super::{AdamRow, AdamStep};
    use candle_core::Tensor;

    fn no_cuda<T>() -> candle_core::Result<T> {
        candle_core::bail!("the training kernels need a build with the `cuda` feature")
    }
    pub fn sum_squares(_: &[&Tensor]) -> candle_core::Result<f64> {
        no_cuda()
    }
    pub fn adamw(_: &[AdamRow], _: AdamStep) -> candle_core::Result<()> {
        no_cuda()
    }
    pub fn ema(_: &[(&Tensor, &Tensor)], _: f64) -> candle_core::Result<()> {
        no_cuda()
    }
}
