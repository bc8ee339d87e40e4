//! Own kernels for the hot spots candle is slow at (measured in `docs/benchmarks.md`). On the
//! CPU: convolution forward and backward, group normalisation fused with SiLU, the residual MLP
//! as one op, multi-head attention for inference, and the UNet's attention block as one op in
//! inference and training. Each is a candle custom op with its backward pass, so autograd sees
//! one node. On NVIDIA GPUs the same wrappers pick the fused
//! inference kernels of [`gpu`] (channels-last with [`gpu_nhwc`]), the differentiable training kernels of [`gpu_train`] and
//! cuDNN ([`cudnn_conv`]); elsewhere they fall back to candle's own ops. [`cuda_graph`] replays a
//! whole network evaluation as one captured CUDA graph.
pub mod attention;
pub mod attention_block;
mod attention_grad;
pub mod conv;
pub(crate) mod cpu_conv;
pub mod cuda_graph;
pub mod cudnn_conv;
#[cfg(feature = "cudnn")]
mod cudnn_plans;
pub mod gpu;
pub mod gpu_attention;
pub mod gpu_nhwc;
pub mod gpu_optim;
pub mod gpu_train;
pub mod group_norm;
mod lanes;
pub mod mlp;
mod mlp_rows;
mod mlp_time;
mod nt_gemm;
pub mod prepared;
pub(crate) mod real;
pub(crate) mod simd;
pub mod softmax;
mod switch;
pub mod upsample;
mod winograd;
mod winograd4;
mod winograd4_grad;
mod winograd4_simd;
mod winograd_grad;

pub use conv::conv2d;
pub use group_norm::group_norm_act;
pub use prepared::{conv2d_prepared, conv2d_prepared_residual, PreparedWeights};
pub(crate) use real::own_kernel;

/// Keep freed activation buffers in the process instead of returning them to the kernel: by
/// default glibc serves blocks over 128 KiB by `mmap` and unmaps them on free, so every
/// activation of a UNet step is page-faulted in again (measured: ~10% of a CPU training step
/// in page faults and zeroing). Call once at start-up; a no-op elsewhere than Linux/glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is called before any threads use
    // the allocator heavily and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
