//! The element types the CPU kernels run on (f32 and f64) and access to candle's storage.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};

/// A float the kernels (and `gemm`) handle.
pub trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn sigmoid(self) -> Self;
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
}

macro_rules! real {
    ($t:ty, $variant:ident) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn sigmoid(self) -> Self {
                1.0 / (1.0 + (-self).exp())
            }
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
        }
    };
}
real!(f32, F32);
real!(f64, F64);

/// Whether the own CPU kernels handle a tensor (CPU, f32 or f64).
pub fn own_kernel(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The contiguous data of `s` under `l`, or an error naming the op.
pub fn data<'a, T: Real>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [T]> {
    let v = T::slice(s).ok_or_else(|| {
        candle_core::Error::Msg(format!("{op}: unsupported dtype {:?}", s.dtype()))
    })?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(candle_core::Error::Msg(format!(
            "{op}: input is not contiguous"
        ))),
    }
}

/// The body of a CPU op's `cpu_fwd`: `f32f` or `f64f` (by the first input's dtype; every input
/// must have it) on the contiguous data of `inputs`, its values as the op's storage.
pub fn dispatch<const N: usize>(
    op: &str,
    inputs: [(&CpuStorage, &Layout); N],
    f32f: impl FnOnce([&[f32]; N]) -> Vec<f32>,
    f64f: impl FnOnce([&[f64]; N]) -> Vec<f64>,
) -> candle_core::Result<CpuStorage> {
    fn all<'a, T: Real, const N: usize>(
        op: &str,
        inputs: [(&'a CpuStorage, &Layout); N],
    ) -> candle_core::Result<[&'a [T]; N]> {
        let mut out: [&[T]; N] = [&[]; N];
        for (o, (s, l)) in out.iter_mut().zip(inputs) {
            *o = data(s, l, op)?;
        }
        Ok(out)
    }
    match inputs.first().map(|(s, _)| s.dtype()) {
        Some(DType::F32) => Ok(f32::storage(f32f(all(op, inputs)?))),
        Some(DType::F64) => Ok(f64::storage(f64f(all(op, inputs)?))),
        d => Err(candle_core::Error::Msg(format!(
            "{op}: unsupported dtype {d:?}"
        ))),
    }
}

/// Run `f` on the contiguous CPU data of `t` (made contiguous first if needed).
pub fn with_data<T: Real, R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(data::<T>(c, l, op)?),
        _ => Err(candle_core::Error::Msg(format!("{op}: not a CPU tensor"))),
    }
}

/// The number of threads to split work over: rayon's pool (which candle and `gemm` use too),
/// fewer while other processes keep the cores busy ([`crate::threads::adapt`]).
pub fn threads() -> usize {
    crate::threads::adapt();
    crate::threads::active()
}

/// `with_min_len` for a parallel loop: one piece (no work for other threads) when only one
/// thread is to be used.
pub fn min_len(threads: usize) -> usize {
    if threads <= 1 {
        usize::MAX
    } else {
        1
    }
}
