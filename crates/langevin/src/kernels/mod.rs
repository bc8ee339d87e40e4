//! Own CPU kernels for the hot spots candle is slow at (measured in `docs/benchmarks.md`):
//! convolution forward and backward, and group normalisation fused with SiLU. Each is a candle
//! custom op with its backward pass, so autograd sees one node; on other devices or dtypes the
//! wrappers fall back to candle's own ops.
pub mod conv;
pub mod group_norm;
mod real;

pub use conv::conv2d;
pub use group_norm::group_norm_act;
