//! cuDNN forward convolution for inference with the plan (descriptors, algorithm, workspace
//! size) cached per shape, the algorithm timed once per shape, and one reused workspace, tensor-core math for bf16 and strict f32
//! math for f32 (`LANGEVIN_TF32=1` allows TF32, PyTorch's default for convolutions).
//!
//! Written because candle's cuDNN call rebuilds the descriptors, asks cuDNN's heuristics and
//! allocates a zeroed workspace on every call (measured on an H200: the f32 ddpm-cifar10 UNet
//! forward took 88 ms of wall time for 27 ms of kernels), and leaves bf16 convolutions on
//! cuDNN's default math, which runs them as f32 SIMT kernels (about 100 ms of the bf16
//! forward at batch 256). docs/benchmarks.md has the per-kernel tables.
use candle_core::Tensor;

/// `conv2d(x, w)` (no bias) with `padding` and `stride` on the cached cuDNN path.
///
/// # Shapes
/// `x`: [B, C, H, W]; `w`: [O, C, k, k]; returns [B, O, H', W'].
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, imp::CudnnConv { padding, stride })
}

#[cfg(feature = "cudnn")]
mod imp {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    use candle_core::backend::BackendDevice;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cudnn::safe::{
        ConvDescriptor, ConvForward, Cudnn, FilterDescriptor, TensorDescriptor,
    };
    use candle_core::cuda_backend::cudarc::cudnn::{sys, CudnnDataType};
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDType, DeviceId};
    use candle_core::{
        CpuStorage, CudaDevice, CudaStorage, CustomOp2, DType, Layout, Shape, WithDType,
    };

    pub struct CudnnConv {
        pub padding: usize,
        pub stride: usize,
    }

    /// Everything cuDNN needs for one convolution shape, made once.
    struct Plan<T, C> {
        conv: ConvDescriptor<C>,
        x: TensorDescriptor<T>,
        w: FilterDescriptor<T>,
        y: TensorDescriptor<T>,
        algo: sys::cudnnConvolutionFwdAlgo_t,
        workspace: usize,
    }

    type Key = (DType, [usize; 8], usize, usize);

    struct State {
        handle: Arc<Cudnn>,
        f32_plans: HashMap<Key, Plan<f32, f32>>,
        bf16_plans: HashMap<Key, Plan<half::bf16, f32>>,
        workspace: Option<CudaSlice<u8>>,
    }

    // cuDNN handles and descriptors are neither Send nor Sync: one set per thread (as candle's).
    thread_local! {
        static STATE: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
    }

    fn tf32() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("LANGEVIN_TF32").is_ok_and(|v| v == "1"))
    }

    /// The descriptors for one shape, and the fastest forward algorithm measured on these
    /// buffers (each algorithm cuDNN accepts, timed once, as PyTorch's
    /// `cudnn.benchmark = True`): cuDNN's heuristic alone picked FFT kernels for strict-f32
    /// 3×3 convolutions that ran 10× slower than its implicit GEMM (measured on an H200).
    #[allow(clippy::too_many_arguments)]
    fn plan<T>(
        dev: &CudaDevice,
        handle: &Arc<Cudnn>,
        math: sys::cudnnMathType_t,
        [b, c, h, w, o, k, ho, wo]: [usize; 8],
        op: &CudnnConv,
        xs: &CudaView<T>,
        ws: &CudaView<T>,
        out: &mut CudaSlice<T>,
    ) -> candle_core::Result<Plan<T, f32>>
    where
        T: CudnnDataType + DeviceRepr + WithDType,
    {
        let wrap = candle_core::Error::wrap;
        let (p, s) = (op.padding as i32, op.stride as i32);
        let mut conv = handle
            .create_conv2d::<f32>(
                [p, p],
                [s, s],
                [1, 1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(wrap)?;
        conv.set_math_type(math).map_err(wrap)?;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let i = |v: usize| v as i32;
        let x = handle
            .create_4d_tensor::<T>(nchw, [i(b), i(c), i(h), i(w)])
            .map_err(wrap)?;
        let wd = handle
            .create_4d_filter::<T>(nchw, [i(o), i(c), i(k), i(k)])
            .map_err(wrap)?;
        let y = handle
            .create_4d_tensor::<T>(nchw, [i(b), i(o), i(ho), i(wo)])
            .map_err(wrap)?;
        let fwd = ConvForward {
            conv: &conv,
            x: &x,
            w: &wd,
            y: &y,
        };
        let heuristic = fwd.pick_algorithm().map_err(wrap)?;
        use sys::cudnnConvolutionFwdAlgo_t as A;
        let mut best = (
            f64::INFINITY,
            heuristic,
            fwd.get_workspace_size(heuristic).map_err(wrap)?,
        );
        for algo in [
            A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
            A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
            A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
            A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
            A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        ] {
            let Ok(size) = fwd.get_workspace_size(algo) else {
                continue;
            };
            if size > 1 << 30 {
                continue;
            }
            // SAFETY: scratch memory for cuDNN.
            let mut scratch = unsafe { dev.alloc::<u8>(size.max(1))? };
            let one = (T::from_f64(1.0), T::from_f64(0.0));
            let mut launch = || {
                // SAFETY: descriptors match the buffers; the workspace has the size asked.
                unsafe { fwd.launch(algo, Some(&mut scratch), one, xs, ws, out) }
            };
            if launch().is_err() {
                continue;
            }
            dev.synchronize()?;
            let t0 = std::time::Instant::now();
            let ok = launch().is_ok() && launch().is_ok();
            dev.synchronize()?;
            let t = t0.elapsed().as_secs_f64();
            if ok && t < best.0 {
                best = (t, algo, size);
            }
        }
        Ok(Plan {
            conv,
            x,
            w: wd,
            y,
            algo: best.1,
            workspace: best.2,
        })
    }

    impl CudnnConv {
        #[allow(clippy::too_many_arguments)]
        fn run<T>(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            w: &CudaStorage,
            wl: &Layout,
            dims: [usize; 8],
            pick: impl Fn(&mut State) -> &mut HashMap<Key, Plan<T, f32>>,
            math: sys::cudnnMathType_t,
        ) -> candle_core::Result<CudaSlice<T>>
        where
            T: CudnnDataType + CudaDType + DeviceRepr + WithDType + ValidAsZeroBits,
        {
            if !xl.is_contiguous() || !wl.is_contiguous() {
                candle_core::bail!("cudnn conv2d: inputs must be contiguous")
            }
            let dev = x.device().clone();
            let xs = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
            let ws = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
            let [b, _, _, _, o, _, ho, wo] = dims;
            // SAFETY: the convolution writes every output element (β = 0).
            let mut out = unsafe { dev.alloc::<T>(b * o * ho * wo)? };
            let key = (T::DTYPE, dims, self.padding, self.stride);
            STATE.with(|st| -> candle_core::Result<()> {
                let mut st = st.borrow_mut();
                let id = dev.id();
                if !st.contains_key(&id) {
                    let handle = Cudnn::new(dev.cuda_stream()).map_err(candle_core::Error::wrap)?;
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
                let need = {
                    let plans = pick(state);
                    if !plans.contains_key(&key) {
                        let p = plan::<T>(&dev, &handle, math, dims, self, &xs, &ws, &mut out)?;
                        plans.insert(key, p);
                    }
                    plans[&key].workspace
                };
                if state.workspace.as_ref().is_none_or(|ws| ws.len() < need) {
                    // SAFETY: scratch memory; cuDNN initialises what it reads.
                    state.workspace = Some(unsafe { dev.alloc::<u8>(need.max(1))? });
                }
                let mut wsp = state.workspace.take().expect("allocated above");
                let p = &pick(state)[&key];
                let fwd = ConvForward {
                    conv: &p.conv,
                    x: &p.x,
                    w: &p.w,
                    y: &p.y,
                };
                // SAFETY: the descriptors describe these contiguous buffers (shapes checked by
                // the caller); the workspace holds at least the plan's size.
                let r = unsafe {
                    fwd.launch(
                        p.algo,
                        (need > 0).then_some(&mut wsp),
                        (T::from_f64(1.0), T::from_f64(0.0)),
                        &xs,
                        &ws,
                        &mut out,
                    )
                };
                state.workspace = Some(wsp);
                r.map_err(candle_core::Error::wrap)
            })?;
            Ok(out)
        }
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
            candle_core::bail!("{} runs on CUDA only", self.name())
        }

        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            w: &CudaStorage,
            wl: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let (b, c, h, wd) = xl.shape().dims4()?;
            let (o, c2, k, k2) = wl.shape().dims4()?;
            if c != c2 || k != k2 {
                candle_core::bail!(
                    "cudnn conv2d: input {:?}, weight {:?}",
                    xl.dims(),
                    wl.dims()
                )
            }
            let (p, s) = (self.padding, self.stride);
            let ho = (h + 2 * p - k) / s + 1;
            let wo = (wd + 2 * p - k) / s + 1;
            let dims = [b, c, h, wd, o, k, ho, wo];
            let dev = x.device().clone();
            use sys::cudnnMathType_t::{CUDNN_DEFAULT_MATH, CUDNN_FMA_MATH, CUDNN_TENSOR_OP_MATH};
            let st = match x.dtype() {
                DType::F32 => {
                    let math = if tf32() {
                        CUDNN_DEFAULT_MATH
                    } else {
                        CUDNN_FMA_MATH
                    };
                    let y = self.run::<f32>(x, xl, w, wl, dims, |s| &mut s.f32_plans, math)?;
                    CudaStorage::wrap_cuda_slice(y, dev)
                }
                DType::BF16 => {
                    let y = self.run::<half::bf16>(
                        x,
                        xl,
                        w,
                        wl,
                        dims,
                        |s| &mut s.bf16_plans,
                        CUDNN_TENSOR_OP_MATH,
                    )?;
                    CudaStorage::wrap_cuda_slice(y, dev)
                }
                d => candle_core::bail!("{}: unsupported dtype {d:?}", self.name()),
            };
            Ok((st, Shape::from((b, o, ho, wo))))
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
            let _ = (self.padding, self.stride);
            candle_core::bail!("the cached cuDNN convolution needs a build with `cudnn`")
        }
    }
}
