//! cuDNN convolution, forward and both gradients, with the plan (descriptors, each
//! direction's algorithm and workspace size) cached per shape, every algorithm timed once per
//! shape, one reused workspace bounded at 1 GiB, tensor-core math for bf16 and strict f32 math
//! for f32 (`LANGEVIN_TF32=1` allows TF32, PyTorch's default for convolutions).
//!
//! Written because candle's cuDNN call rebuilds the descriptors, asks cuDNN's heuristics and
//! allocates a zeroed workspace on every call (measured on an H200: the f32 ddpm-cifar10 UNet
//! forward took 88 ms of wall time for 27 ms of kernels), and leaves bf16 convolutions on
//! cuDNN's default math, which runs them as f32 SIMT kernels (about 100 ms of the bf16
//! forward at batch 256). docs/benchmarks.md has the per-kernel tables.
use candle_core::Tensor;

/// `conv2d(x, w)` (no bias) with `padding` and `stride` on the cached cuDNN path; its
/// backward pass (both gradients) runs on cuDNN too.
///
/// A channels-last `x` ([`super::gpu_nhwc`]) runs cuDNN in NHWC with the weights as
/// [O, k, k, C] (inference only: no backward pass) and gives a channels-last result.
///
/// # Shapes
/// `x`: [B, C, H, W]; `w`: [O, C, k, k]; returns [B, O, H', W'].
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    use super::gpu_nhwc::{is_channels_last, logical, physical};
    if is_channels_last(x) {
        // Weights to [O, k, k, C] per call (a copy of at most a few hundred KiB; none for
        // 1×1): inference weights are plain tensors, but caching them per layer would go
        // stale if a caller updated shared storage.
        let wp = w.permute((0, 2, 3, 1))?.contiguous()?;
        let op = imp::CudnnConv {
            padding,
            stride,
            nhwc: true,
        };
        return logical(&physical(x)?.apply_op2_no_bwd(&wp, &op)?);
    }
    let op = imp::CudnnConv {
        padding,
        stride,
        nhwc: false,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// From now on, never free a cuDNN workspace (a grown one's predecessor, or a thread's at
/// exit): a captured CUDA graph ([`super::cuda_graph`]) keeps using the one it was captured
/// with. Retired workspaces stay allocated for the rest of the process (at most a few, each
/// ≤ 1 GiB, as the workspace only grows).
pub fn pin_workspaces() {
    #[cfg(feature = "cudnn")]
    imp::PINNED.store(true, std::sync::atomic::Ordering::SeqCst);
}

#[cfg(feature = "cudnn")]
mod imp {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    use candle_core::backend::{BackendDevice, BackendStorage};
    use candle_core::cuda_backend::cudarc::cudnn::safe::{
        ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
        TensorDescriptor,
    };
    use candle_core::cuda_backend::cudarc::cudnn::{sys, CudnnDataType};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
    use candle_core::cuda_backend::{CudaDType, DeviceId};
    use candle_core::{
        CpuStorage, CudaDevice, CudaStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType,
    };

    /// Largest workspace an algorithm may ask for: candle's heuristic choice for weight
    /// gradients asked for more than a 141 GB GPU holds (measured on an H200).
    const MAX_WORKSPACE: usize = 1 << 30;

    pub struct CudnnConv {
        pub padding: usize,
        pub stride: usize,
        /// x [B, H, W, C] and w [O, k, k, C] (channels-last); the output [B, H', W', O].
        pub nhwc: bool,
    }

    /// The input gradient: (dy, w) → dx of shape `x_dims`.
    struct BackwardData {
        padding: usize,
        stride: usize,
        x_dims: [usize; 4],
    }

    /// The weight gradient: (x, dy) → dw of shape `w_dims`.
    struct BackwardFilter {
        padding: usize,
        stride: usize,
        w_dims: [usize; 4],
    }

    /// Everything cuDNN needs for one convolution shape, made once; each direction's algorithm
    /// and workspace size chosen on first use.
    struct Plan<T> {
        conv: ConvDescriptor<f32>,
        x: TensorDescriptor<T>,
        w: FilterDescriptor<T>,
        y: TensorDescriptor<T>,
        fwd: Option<(sys::cudnnConvolutionFwdAlgo_t, usize)>,
        bwd_data: Option<(sys::cudnnConvolutionBwdDataAlgo_t, usize)>,
        bwd_filter: Option<(sys::cudnnConvolutionBwdFilterAlgo_t, usize)>,
    }

    /// (dtype, [b, c, h, w, o, k, h', w'], padding, stride, channels-last).
    type Key = (DType, [usize; 8], usize, usize, bool);

    struct State {
        handle: Arc<Cudnn>,
        f32_plans: HashMap<Key, Plan<f32>>,
        bf16_plans: HashMap<Key, Plan<half::bf16>>,
        workspace: Option<CudaSlice<u8>>,
    }

    /// Set by [`super::pin_workspaces`]: workspaces are retired, not freed.
    pub(super) static PINNED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    static RETIRED: std::sync::Mutex<Vec<CudaSlice<u8>>> = std::sync::Mutex::new(Vec::new());

    /// Frees `ws`, or keeps it for the process's lifetime once graphs may refer to it.
    fn retire(ws: Option<CudaSlice<u8>>) {
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
    fn deterministic() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("LANGEVIN_DETERMINISTIC").is_ok_and(|v| v == "1"))
    }

    fn tf32() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("LANGEVIN_TF32").is_ok_and(|v| v == "1"))
    }

    /// The element type's plan table and math mode: tensor-core math for bf16, strict FMA
    /// for f32 unless `LANGEVIN_TF32=1`.
    trait Elem: CudnnDataType + CudaDType + DeviceRepr + WithDType + ValidAsZeroBits {
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

    fn wrap<E: std::fmt::Debug + std::fmt::Display + Send + Sync + 'static>(
        e: E,
    ) -> candle_core::Error {
        candle_core::Error::Msg(format!("cuDNN: {e}"))
    }

    fn descriptors<T: Elem>(
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
    /// with a workspace ≤ [`MAX_WORKSPACE`], timed once, as PyTorch's `cudnn.benchmark =
    /// True` (cuDNN's heuristic alone picked FFT kernels for strict-f32 3×3 convolutions that
    /// ran 10× slower than its implicit GEMM, measured on an H200). In deterministic mode, the
    /// first of the leading `deterministic_first` candidates that runs, untimed.
    fn fastest<A: Copy + std::fmt::Debug>(
        what: &dyn Fn() -> String,
        dev: &CudaDevice,
        candidates: &[A],
        deterministic_first: usize,
        size: impl Fn(A) -> Option<usize>,
        mut launch: impl FnMut(A, &mut CudaSlice<u8>) -> bool,
    ) -> candle_core::Result<(A, usize)> {
        let mut best: Option<(f64, A, usize)> = None;
        // Deterministic mode: the first in the (deterministic-only) list that runs.
        let fixed = deterministic();
        let candidates = match fixed {
            true => &candidates[..deterministic_first],
            false => candidates,
        };
        for &algo in candidates {
            let Some(size) = size(algo).filter(|&s| s <= MAX_WORKSPACE) else {
                continue;
            };
            // SAFETY: scratch memory for cuDNN.
            let mut scratch = unsafe { dev.alloc::<u8>(size.max(1))? };
            if !launch(algo, &mut scratch) {
                continue;
            }
            if fixed {
                best = Some((0.0, algo, size));
                break;
            }
            dev.synchronize()?;
            let t0 = std::time::Instant::now();
            let ok = launch(algo, &mut scratch) && launch(algo, &mut scratch);
            dev.synchronize()?;
            let t = t0.elapsed().as_secs_f64();
            if ok && best.is_none_or(|b| t < b.0) {
                best = Some((t, algo, size));
            }
        }
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

    /// Runs `f` with the plan for `key` (made on first use) and the shared workspace, which
    /// `f` may grow.
    fn with_plan<T: Elem, R>(
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
    fn workspace<'a>(
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

    fn key<T: Elem>(x: [usize; 4], w: [usize; 4], p: usize, s: usize) -> candle_core::Result<Key> {
        key_in::<T>(x, w, p, s, false)
    }

    /// [`key`] for sizes given as [b, c, h, w] and [o, c, k, k] whatever the memory layout.
    fn key_in<T: Elem>(
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

    fn dims4(l: &Layout) -> candle_core::Result<[usize; 4]> {
        if !l.is_contiguous() {
            candle_core::bail!("cudnn conv2d: inputs must be contiguous")
        }
        let (a, b, c, d) = l.shape().dims4()?;
        Ok([a, b, c, d])
    }

    fn forward<T: Elem>(
        op: &CudnnConv,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaSlice<T>, Shape)> {
        let (xd, wd) = (dims4(xl)?, dims4(wl)?);
        let key = match op.nhwc {
            // [B, H, W, C] and [O, k, k, C] in memory.
            true => {
                let x = [xd[0], xd[3], xd[1], xd[2]];
                key_in::<T>(x, [wd[0], wd[3], wd[1], wd[2]], op.padding, op.stride, true)?
            }
            false => key::<T>(xd, wd, op.padding, op.stride)?,
        };
        let dev = x.device().clone();
        let xs = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
        let ws = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
        let [b, _, _, _, o, _, ho, wo] = key.1;
        // SAFETY: the convolution writes every output element (β = 0).
        let mut out = unsafe { dev.alloc::<T>(b * o * ho * wo)? };
        let one = (T::from_f64(1.0), T::from_f64(0.0));
        with_plan::<T, _>(&dev, key, |p, wsp| {
            let fwd = ConvForward {
                conv: &p.conv,
                x: &p.x,
                w: &p.w,
                y: &p.y,
            };
            if p.fwd.is_none() {
                use sys::cudnnConvolutionFwdAlgo_t as A;
                p.fwd = Some(fastest(
                    &|| format!("forward {:?} {key:?}", T::DTYPE),
                    &dev,
                    &[
                        A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
                    ],
                    7, // all forward algorithms are deterministic
                    |a| fwd.get_workspace_size(a).ok(),
                    // SAFETY: descriptors match the buffers; the scratch has the size asked.
                    |a, s| unsafe { fwd.launch(a, Some(s), one, &xs, &ws, &mut out) }.is_ok(),
                )?);
            }
            let (algo, need) = p.fwd.expect("chosen above");
            let wsp = workspace(&dev, wsp, need)?;
            // SAFETY: the descriptors describe these contiguous buffers; the workspace holds
            // at least the algorithm's size.
            unsafe { fwd.launch(algo, wsp, one, &xs, &ws, &mut out) }.map_err(wrap)
        })?;
        let shape = match op.nhwc {
            true => Shape::from((b, ho, wo, o)),
            false => Shape::from((b, o, ho, wo)),
        };
        Ok((out, shape))
    }

    fn backward_data<T: Elem>(
        op: &BackwardData,
        dy: &CudaStorage,
        dl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<CudaSlice<T>> {
        let key = key::<T>(op.x_dims, dims4(wl)?, op.padding, op.stride)?;
        let [b, _, _, _, o, _, ho, wo] = key.1;
        if dims4(dl)? != [b, o, ho, wo] {
            candle_core::bail!("cudnn conv2d backward: dy {:?}", dl.dims())
        }
        let dev = dy.device().clone();
        let dys = dy.as_cuda_slice::<T>()?.slice(dl.start_offset()..);
        let ws = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
        // SAFETY: the convolution writes every element (β = 0).
        let mut dx = unsafe { dev.alloc::<T>(op.x_dims.iter().product())? };
        let one = (T::from_f64(1.0), T::from_f64(0.0));
        with_plan::<T, _>(&dev, key, |p, wsp| {
            let bwd = ConvBackwardData {
                conv: &p.conv,
                dx: &p.x,
                w: &p.w,
                dy: &p.y,
            };
            if p.bwd_data.is_none() {
                use sys::cudnnConvolutionBwdDataAlgo_t as A;
                p.bwd_data = Some(fastest(
                    &|| format!("backward data {:?} {key:?}", T::DTYPE),
                    &dev,
                    &[
                        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
                        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
                        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
                        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
                        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, // nondeterministic: last
                    ],
                    5,
                    |a| bwd.get_workspace_size(a).ok(),
                    // SAFETY: descriptors match the buffers; the scratch has the size asked.
                    |a, s| unsafe { bwd.launch(a, Some(s), one, &mut dx, &ws, &dys) }.is_ok(),
                )?);
            }
            let (algo, need) = p.bwd_data.expect("chosen above");
            let wsp = workspace(&dev, wsp, need)?;
            // SAFETY: as in `forward`.
            unsafe { bwd.launch(algo, wsp, one, &mut dx, &ws, &dys) }.map_err(wrap)
        })?;
        Ok(dx)
    }

    fn backward_filter<T: Elem>(
        op: &BackwardFilter,
        x: &CudaStorage,
        xl: &Layout,
        dy: &CudaStorage,
        dl: &Layout,
    ) -> candle_core::Result<CudaSlice<T>> {
        let key = key::<T>(dims4(xl)?, op.w_dims, op.padding, op.stride)?;
        let [b, _, _, _, o, _, ho, wo] = key.1;
        if dims4(dl)? != [b, o, ho, wo] {
            candle_core::bail!("cudnn conv2d backward: dy {:?}", dl.dims())
        }
        let dev = x.device().clone();
        let xs = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
        let dys = dy.as_cuda_slice::<T>()?.slice(dl.start_offset()..);
        // SAFETY: the convolution writes every element (β = 0).
        let mut dw = unsafe { dev.alloc::<T>(op.w_dims.iter().product())? };
        let one = (T::from_f64(1.0), T::from_f64(0.0));
        with_plan::<T, _>(&dev, key, |p, wsp| {
            let bwd = ConvBackwardFilter {
                conv: &p.conv,
                x: &p.x,
                dw: &p.w,
                dy: &p.y,
            };
            if p.bwd_filter.is_none() {
                use sys::cudnnConvolutionBwdFilterAlgo_t as A;
                p.bwd_filter = Some(fastest(
                    &|| format!("backward filter {:?} {key:?}", T::DTYPE),
                    &dev,
                    &[
                        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
                        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
                        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
                        // nondeterministic (atomic accumulation): last
                        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
                    ],
                    4,
                    |a| bwd.get_workspace_size(a).ok(),
                    // SAFETY: descriptors match the buffers; the scratch has the size asked.
                    |a, s| unsafe { bwd.launch(a, Some(s), one, &xs, &mut dw, &dys) }.is_ok(),
                )?);
            }
            let (algo, need) = p.bwd_filter.expect("chosen above");
            let wsp = workspace(&dev, wsp, need)?;
            // SAFETY: as in `forward`.
            unsafe { bwd.launch(algo, wsp, one, &xs, &mut dw, &dys) }.map_err(wrap)
        })?;
        Ok(dw)
    }

    /// Dispatches `$f::<T>(args)` on the dtype of `$s` and wraps the slice.
    macro_rules! by_dtype {
        ($s:expr, $f:ident, $($arg:expr),*) => {{
            let dev = $s.device().clone();
            match $s.dtype() {
                DType::F32 => CudaStorage::wrap_cuda_slice($f::<f32>($($arg),*)?, dev),
                DType::BF16 => CudaStorage::wrap_cuda_slice($f::<half::bf16>($($arg),*)?, dev),
                d => candle_core::bail!("cudnn conv2d: unsupported dtype {d:?}"),
            }
        }};
    }

    fn no_cpu<T>(name: &str) -> candle_core::Result<T> {
        candle_core::bail!("{name} runs on CUDA only")
    }

    impl CustomOp2 for CudnnConv {
        fn name(&self) -> &'static str {
            "langevin-cudnn-conv2d"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            no_cpu(self.name())
        }
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            w: &CudaStorage,
            wl: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = x.device().clone();
            Ok(match x.dtype() {
                DType::F32 => {
                    let (y, s) = forward::<f32>(self, x, xl, w, wl)?;
                    (CudaStorage::wrap_cuda_slice(y, dev), s)
                }
                DType::BF16 => {
                    let (y, s) = forward::<half::bf16>(self, x, xl, w, wl)?;
                    (CudaStorage::wrap_cuda_slice(y, dev), s)
                }
                d => candle_core::bail!("{}: unsupported dtype {d:?}", self.name()),
            })
        }
        /// Both gradients by cuDNN (cached plans, measured algorithms, bounded workspace).
        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            _res: &Tensor,
            dy: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
            if self.nhwc {
                candle_core::bail!("the channels-last cuDNN convolution has no backward pass")
            }
            let dy = dy.contiguous()?;
            let (xd, wd) = (x.dims4()?, w.dims4()?);
            // No input gradient for data (the network's input): for the first convolution,
            // with 3 input channels, it was a slow kernel computing nothing anyone reads.
            let dx = x
                .track_op()
                .then(|| {
                    dy.apply_op2_no_bwd(
                        w,
                        &BackwardData {
                            padding: self.padding,
                            stride: self.stride,
                            x_dims: [xd.0, xd.1, xd.2, xd.3],
                        },
                    )
                })
                .transpose()?;
            let dw = x.apply_op2_no_bwd(
                &dy,
                &BackwardFilter {
                    padding: self.padding,
                    stride: self.stride,
                    w_dims: [wd.0, wd.1, wd.2, wd.3],
                },
            )?;
            Ok((dx, Some(dw)))
        }
    }

    impl CustomOp2 for BackwardData {
        fn name(&self) -> &'static str {
            "langevin-cudnn-conv2d-backward-data"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            no_cpu(self.name())
        }
        fn cuda_fwd(
            &self,
            dy: &CudaStorage,
            dl: &Layout,
            w: &CudaStorage,
            wl: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let st = by_dtype!(dy, backward_data, self, dy, dl, w, wl);
            Ok((st, Shape::from(self.x_dims.to_vec())))
        }
    }

    impl CustomOp2 for BackwardFilter {
        fn name(&self) -> &'static str {
            "langevin-cudnn-conv2d-backward-filter"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            no_cpu(self.name())
        }
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            dy: &CudaStorage,
            dl: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let st = by_dtype!(x, backward_filter, self, x, xl, dy, dl);
            Ok((st, Shape::from(self.w_dims.to_vec())))
        }
    }
}

/// Without cuDNN the op exists but is never chosen ([`super::gpu::fast_path`] routes
/// convolutions here only in a `cudnn` build).
#[cfg(not(feature = "cudnn"))]
mod imp {
    use candle_core::{CpuStorage, CustomOp2, Layout, Shape};

    pub struct CudnnConv {
        pub padding: usize,
        pub stride: usize,
        pub nhwc: bool,
    }

    impl CustomOp2 for CudnnConv {
        fn name(&self) -> &'static str {
            "langevin-cudnn-conv2d"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let _ = (self.padding, self.stride, self.nhwc);
            candle_core::bail!("the cached cuDNN convolution needs a build with `cudnn`")
        }
    }
}
