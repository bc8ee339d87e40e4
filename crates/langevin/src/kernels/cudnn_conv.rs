//! cuDNN convolution, forward and both gradients, with the plan (descriptors, each
//! direction's algorithm and workspace size) cached per shape, the algorithms timed once per
//! shape (three interleaved rounds), one reused workspace bounded at 1 GiB, tensor-core math
//! for bf16 and strict f32 math for f32 (`LANGEVIN_TF32=1` allows TF32, PyTorch's default for
//! convolutions).
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
    use super::gpu_nhwc::is_channels_last;
    if is_channels_last(x) {
        // Weights to [O, k, k, C] per call (a copy of at most a few hundred KiB; none for
        // 1×1). Layers that own their weights keep that copy ([`conv2d_nhwc`]).
        return conv2d_nhwc(x, &nhwc_weight(w)?, padding, stride);
    }
    let op = imp::CudnnConv {
        padding,
        stride,
        nhwc: false,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// The [O, k, k, C] copy of [O, C, k, k] weights that a channels-last convolution reads.
pub fn nhwc_weight(w: &Tensor) -> candle_core::Result<Tensor> {
    w.permute((0, 2, 3, 1))?.contiguous()
}

/// [`conv2d`] of a channels-last `x` with weights already in [O, k, k, C] memory
/// ([`nhwc_weight`]); inference only (no backward pass).
pub fn conv2d_nhwc(
    x: &Tensor,
    w_okkc: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    use super::gpu_nhwc::{is_channels_last, logical, physical};
    if !is_channels_last(x) || !w_okkc.is_contiguous() {
        candle_core::bail!("conv2d_nhwc: a channels-last input and contiguous [O, k, k, C] weights")
    }
    let op = imp::CudnnConv {
        padding,
        stride,
        nhwc: true,
    };
    logical(&physical(x)?.apply_op2_no_bwd(w_okkc, &op)?)
}

/// From now on, never free a cuDNN workspace (a grown one's predecessor, or a thread's at
/// exit): a captured CUDA graph ([`super::cuda_graph`]) keeps using the one it was captured
/// with. Retired workspaces stay allocated for the rest of the process (at most a few, each
/// ≤ 1 GiB, as the workspace only grows).
pub fn pin_workspaces() {
    #[cfg(feature = "cudnn")]
    super::cudnn_plans::PINNED.store(true, std::sync::atomic::Ordering::SeqCst);
}

#[cfg(feature = "cudnn")]
mod imp {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cudnn::safe::{
        ConvBackwardData, ConvBackwardFilter, ConvForward,
    };
    use candle_core::cuda_backend::cudarc::cudnn::sys;
    use candle_core::cuda_backend::cudarc::driver::CudaSlice;
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Shape, Tensor};

    use super::super::cudnn_plans::{
        dims4, fastest, key, key_in, with_plan, workspace, wrap, Elem,
    };

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
