//! The cuDNN plan cache behind [`super::cudnn_conv`]: descriptors per convolution shape and
//! layout, each direction's algorithm searched once (three timing rounds; or fixed by
//! `LANGEVIN_DETERMINISTIC=1`), the math mode per dtype, and one shared workspace per device and thread (pinned while CUDA
//! graphs may replay it).
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::cudnn::safe::{
    ConvDescriptor, Cudnn, FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::cudnn::{sys, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CudaDevice, DType, Layout, WithDType};

/// Largest workspace an algorithm may ask for: candle's heuristic choice for weight
/// gradients asked for more than a 141 GB GPU holds (measured on an H200).
pub(super) const MAX_WORKSPACE: usize = 1 << 30;

/// Everything cuDNN needs for one convolution shape, made once; each direction's algorithm
/// and workspace size chosen on first use.
pub(super) struct Plan<T> {
    pub(super) conv: ConvDescriptor<f32>,
    pub(super) x: TensorDescriptor<T>,
    pub(super) w: FilterDescriptor<T>,
    pub(super) y: TensorDescriptor<T>,
    pub(super) fwd: Option<(sys::cudnnConvolutionFwdAlgo_t, usize)>,
    pub(super) bwd_data: Option<(sys::cudnnConvolutionBwdDataAlgo_t, usize)>,
    pub(super) bwd_filter: Option<(sys::cudnnConvolutionBwdFilterAlgo_t, usize)>,
}

/// (dtype, [b, c, h, w, o, k, h', w'], padding, stride, channels-last).
pub(super) type Key = (DType, [usize; 8], usize, usize, bool);

pub(super) struct State {
    handle: Arc<Cudnn>,
    f32_plans: HashMap<Key, Plan<f32>>,
    bf16_plans: HashMap<Key, Plan<half::bf16>>,
    workspace: Option<CudaSlice<u8>>,
}

/// Set by [`super::pin_workspaces`]: workspaces are retired, not freed.
pub(super) static PINNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static RETIRED: std::sync::Mutex<Vec<CudaSlice<u8>>> = std::sync::Mutex::new(Vec::new());

/// Frees `ws`, or keeps it for the process's lifetime once graphs may refer to it.
pub(super) fn retire(ws: Option<CudaSlice<u8>>) {
    if let Some(ws) = ws {
        if PINNED.load(std::sync::atomic::Ordering::SeqCst) {
            RETIRED.lock().unwrap_or_else(|p| p.into_inner()).push(ws);
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        retire(self.workspace.take());
    }
}

// cuDNN handles and descriptors are neither Send nor Sync: one set per thread (as candle's).
thread_local! {
    static STATE: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
}

/// `LANGEVIN_DETERMINISTIC=1`: every direction uses the first algorithm of a fixed list
/// of cuDNN's deterministic ones that runs within the workspace bound, not the fastest
/// measured (which can differ between processes, and includes weight-gradient algorithms
/// that accumulate with atomics). GPU training is then reproducible run to run, and a
/// resumed run follows an uninterrupted one (as PyTorch's `cudnn.deterministic = True`
/// with `benchmark = False`).
pub(super) fn deterministic() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LANGEVIN_DETERMINISTIC").is_ok_and(|v| v == "1"))
}

pub(super) fn tf32() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LANGEVIN_TF32").is_ok_and(|v| v == "1"))
}

/// The element type's plan table and math mode: tensor-core math for bf16, strict FMA
/// for f32 unless `LANGEVIN_TF32=1`.
pub(super) trait Elem:
    CudnnDataType + CudaDType + DeviceRepr + WithDType + ValidAsZeroBits
{
    fn plans(s: &mut State) -> &mut HashMap<Key, Plan<Self>>;
    fn math() -> sys::cudnnMathType_t;
}
impl Elem for f32 {
    fn plans(s: &mut State) -> &mut HashMap<Key, Plan<f32>> {
        &mut s.f32_plans
    }
    fn math() -> sys::cudnnMathType_t {
        if tf32() {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        }
    }
}
impl Elem for half::bf16 {
    fn plans(s: &mut State) -> &mut HashMap<Key, Plan<half::bf16>> {
        &mut s.bf16_plans
    }
    fn math() -> sys::cudnnMathType_t {
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
    }
}

pub(super) fn wrap<E: std::fmt::Debug + std::fmt::Display + Send + Sync + 'static>(
    e: E,
) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN: {e}"))
}

pub(super) fn descriptors<T: Elem>(
    handle: &Arc<Cudnn>,
    [b, c, h, w, o, k, ho, wo]: [usize; 8],
    padding: usize,
    stride: usize,
    nhwc: bool,
) -> candle_core::Result<Plan<T>> {
    let (p, s) = (padding as i32, stride as i32);
    let mut conv = handle
        .create_conv2d::<f32>(
            [p, p],
            [s, s],
            [1, 1],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(wrap)?;
    conv.set_math_type(T::math()).map_err(wrap)?;
    // The format says how memory is laid out; the sizes are given as n, c, h, w either way.
    let nchw = match nhwc {
        true => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
        false => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
    };
    let i = |v: usize| v as i32;
    Ok(Plan {
        conv,
        x: handle
            .create_4d_tensor::<T>(nchw, [i(b), i(c), i(h), i(w)])
            .map_err(wrap)?,
        w: handle
            .create_4d_filter::<T>(nchw, [i(o), i(c), i(k), i(k)])
            .map_err(wrap)?,
        y: handle
            .create_4d_tensor::<T>(nchw, [i(b), i(o), i(ho), i(wo)])
            .map_err(wrap)?,
        fwd: None,
        bwd_data: None,
        bwd_filter: None,
    })
}

/// The fastest of `candidates` measured on the live buffers: each algorithm cuDNN accepts
/// with a workspace ≤ [`MAX_WORKSPACE`], as PyTorch's `cudnn.benchmark = True` (cuDNN's
/// heuristic alone picked FFT kernels for strict-f32 3×3 convolutions that ran 10× slower
/// than its implicit GEMM, measured on an H200). Each candidate runs once untimed, then the
/// candidates are timed in [`ROUNDS`] interleaved rounds of two launches and each keeps its
/// best round: one timing per candidate let a clock ramp or a stray stall decide, and the
/// same binary ran the README's small UNet at 2.8 ms in one process and 3.4 ms in the next
/// (H200, 2026-11-30); rounds after the first skip candidates over twice the best time. In
/// deterministic mode, the first of the leading
/// `deterministic_first` candidates that runs, untimed.
pub(super) fn fastest<A: Copy + std::fmt::Debug>(
    what: &dyn Fn() -> String,
    dev: &CudaDevice,
    candidates: &[A],
    deterministic_first: usize,
    size: impl Fn(A) -> Option<usize>,
    mut launch: impl FnMut(A, &mut CudaSlice<u8>) -> bool,
) -> candle_core::Result<(A, usize)> {
    // Deterministic mode: the first in the (deterministic-only) list that runs.
    let fixed = deterministic();
    let candidates = match fixed {
        true => &candidates[..deterministic_first],
        false => candidates,
    };
    // The candidates that run (the untimed first launch), with their workspace sizes.
    let mut ok: Vec<(A, usize, f64)> = vec![];
    for &algo in candidates {
        let Some(size) = size(algo).filter(|&s| s <= MAX_WORKSPACE) else {
            continue;
        };
        // SAFETY: scratch memory for cuDNN.
        let mut scratch = unsafe { dev.alloc::<u8>(size.max(1))? };
        if launch(algo, &mut scratch) {
            ok.push((algo, size, f64::INFINITY));
            if fixed {
                break;
            }
        }
    }
    if !fixed && ok.len() > 1 {
        let most = ok.iter().map(|c| c.1).max().unwrap_or(0);
        // SAFETY: scratch memory for cuDNN, large enough for every candidate.
        let mut scratch = unsafe { dev.alloc::<u8>(most.max(1))? };
        for round in 0..ROUNDS {
            // After the first round only the candidates within 2× of the best are timed again:
            // the slow ones (FFT on small maps, SIMT GEMM) cannot win, and timing them three
            // times made a short training run's start seconds longer.
            let best = ok.iter().map(|c| c.2).fold(f64::INFINITY, f64::min);
            for c in ok.iter_mut() {
                if round > 0 && !(c.2 <= 2.0 * best) {
                    continue;
                }
                dev.synchronize()?;
                let t0 = std::time::Instant::now();
                let ran = launch(c.0, &mut scratch) && launch(c.0, &mut scratch);
                dev.synchronize()?;
                let t = t0.elapsed().as_secs_f64();
                c.2 = if ran { c.2.min(t) } else { f64::NAN };
            }
        }
    }
    // A candidate that failed a timed launch has NaN and is never chosen.
    let best = (ok.into_iter().filter(|c| !c.2.is_nan()))
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .map(|(a, s, t)| (t, a, s));
    if std::env::var("LANGEVIN_CUDNN_LOG").is_ok_and(|v| v == "1") {
        match &best {
            Some((t, a, s)) => eprintln!(
                "cuDNN {}: {a:?}, {:.1} µs, workspace {s} B",
                what(),
                t * 5e5
            ),
            None => eprintln!("cuDNN {}: no algorithm ran", what()),
        }
    }
    best.map(|(_, a, s)| (a, s))
        .ok_or_else(|| candle_core::Error::Msg("cuDNN: no convolution algorithm ran".into()))
}

/// Interleaved timing rounds per algorithm search (see [`fastest`]).
const ROUNDS: usize = 3;

/// Runs `f` with the plan for `key` (made on first use) and the shared workspace, which
/// `f` may grow.
pub(super) fn with_plan<T: Elem, R>(
    dev: &CudaDevice,
    key: Key,
    f: impl FnOnce(&mut Plan<T>, &mut Option<CudaSlice<u8>>) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    STATE.with(|st| {
        let mut st = st.borrow_mut();
        let id = dev.id();
        if !st.contains_key(&id) {
            let handle = Cudnn::new(dev.cuda_stream()).map_err(wrap)?;
            st.insert(
                id,
                State {
                    handle,
                    f32_plans: HashMap::new(),
                    bf16_plans: HashMap::new(),
                    workspace: None,
                },
            );
        }
        let state = st.get_mut(&id).expect("inserted above");
        let handle = state.handle.clone();
        let mut ws = state.workspace.take();
        let plans = T::plans(state);
        if !plans.contains_key(&key) {
            plans.insert(key, descriptors::<T>(&handle, key.1, key.2, key.3, key.4)?);
        }
        let r = f(plans.get_mut(&key).expect("inserted above"), &mut ws);
        state.workspace = ws;
        r
    })
}

/// The shared workspace grown to at least `need` bytes, or `None` when none is needed.
pub(super) fn workspace<'a>(
    dev: &CudaDevice,
    ws: &'a mut Option<CudaSlice<u8>>,
    need: usize,
) -> candle_core::Result<Option<&'a mut CudaSlice<u8>>> {
    if need == 0 {
        return Ok(None);
    }
    if ws.as_ref().is_none_or(|w| w.len() < need) {
        retire(ws.take()); // free the old one first (unless graphs use it)
                           // SAFETY: scratch memory; cuDNN initialises what it reads.
        *ws = Some(unsafe { dev.alloc::<u8>(need)? });
    }
    Ok(ws.as_mut())
}

pub(super) fn key<T: Elem>(
    x: [usize; 4],
    w: [usize; 4],
    p: usize,
    s: usize,
) -> candle_core::Result<Key> {
    key_in::<T>(x, w, p, s, false)
}

/// [`key`] for sizes given as [b, c, h, w] and [o, c, k, k] whatever the memory layout.
pub(super) fn key_in<T: Elem>(
    x: [usize; 4],
    w: [usize; 4],
    p: usize,
    s: usize,
    nhwc: bool,
) -> candle_core::Result<Key> {
    let ([b, c, h, wd], [o, c2, k, k2]) = (x, w);
    if c != c2 || k != k2 || h + 2 * p < k || wd + 2 * p < k {
        candle_core::bail!("cudnn conv2d: input {x:?}, weight {w:?}")
    }
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (wd + 2 * p - k) / s + 1);
    Ok((T::DTYPE, [b, c, h, wd, o, k, ho, wo], p, s, nhwc))
}

pub(super) fn dims4(l: &Layout) -> candle_core::Result<[usize; 4]> {
    if !l.is_contiguous() {
        candle_core::bail!("cudnn conv2d: inputs must be contiguous")
    }
    let (a, b, c, d) = l.shape().dims4()?;
    Ok([a, b, c, d])
}
