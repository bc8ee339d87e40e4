//! Differentiable building blocks shared by the UNet modules. Every op here has a correct
//! backward pass (no fused softmax / layer norm, no `upsample_nearest2d` from candle);
//! convolution and group norm run on the own CPU kernels of [`crate::kernels`], and for
//! inference on CUDA on the fused kernels of [`crate::kernels::gpu`] (the op picks).
use candle_core::{Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use crate::kernels;
use crate::kernels::gpu;

use super::config::Activation;
use crate::Result;

/// Apply an activation (diffusers' `get_activation`).
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => x.silu()?,
        Activation::Relu => x.relu()?,
        Activation::Gelu => x.gelu_erf()?,
        // mish(x) = x·tanh(softplus(x)), softplus(x) = max(x, 0) + ln(1 + e^{-|x|}).
        Activation::Mish => {
            let sp = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
            (x * sp.tanh()?)?
        }
    })
}

/// Softmax over the last dimension as exp(x - max)/Σ. The max is a constant shift (the
/// softmax does not depend on it), so it is detached from the graph.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// softmax(x·`scale`) over the last dimension: one CPU op with its backward pass where it
/// applies ([`kernels::softmax`]), else [`softmax_last_dim`] of the scaled scores.
pub fn scaled_softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    if kernels::softmax::applies(x) {
        return Ok(kernels::softmax::softmax_last_dim(x, scale)?);
    }
    softmax_last_dim(&(x * scale)?)
}

/// Nearest-neighbour ×2 upsampling by reshape → broadcast → reshape, whose gradient (a sum over
/// each 2×2 block) candle computes correctly.
///
/// # Shapes
/// `x`: [B, C, H, W] → [B, C, 2H, 2W].
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    if gpu::fast_path(x) {
        return Ok(gpu::upsample2x(x)?);
    }
    if kernels::upsample::applies(x) {
        return Ok(kernels::upsample::upsample2x(x)?);
    }
    let (b, c, h, w) = x.dims4()?;
    Ok(x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))?)
}

/// `nn.Conv2d(i, o, k, stride, padding)` with bias.
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    /// The [O, k, k, C] weights of the channels-last inference path, made on first use.
    nhwc: std::sync::OnceLock<Tensor>,
    /// The Winograd-transformed weights of CPU inference, made on first use.
    prepared: kernels::PreparedWeights,
}

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Whether this convolution of `x` runs the fused CUDA inference path.
    pub fn fused(&self, x: &Tensor) -> bool {
        gpu::fast_path(x) && !self.weight.track_op() && self.weight.dtype() == x.dtype()
    }

    /// Whether this convolution of `x` takes the CUDA training kernels (cuDNN with its
    /// gradients, the fused epilogue).
    fn trains_on_gpu(&self, x: &Tensor) -> bool {
        cfg!(feature = "cudnn")
            && kernels::gpu_train::available(x)
            && self.weight.dtype() == x.dtype()
            && square_kernel(&self.weight)
    }

    /// The convolution without its bias, for callers that fold the bias into the next op
    /// (on the fused path only; elsewhere the bias is added as usual).
    pub fn forward_unbiased(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused(x) {
            return Ok(gpu::conv2d_cached(
                x,
                &self.weight,
                &self.nhwc,
                self.padding,
                self.stride,
            )?);
        }
        fwd(self, x)
    }

    /// `(conv(x) + bias + residual) / divisor`: on the fused path the bias, residual and
    /// division are one pass after cuDNN's convolution; on the CPU's prepared (inference)
    /// path the residual joins the convolution's output pass; elsewhere they are the plain
    /// ops in that order.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        divisor: f64,
    ) -> Result<Tensor> {
        if self.fused(x) {
            let y = gpu::conv2d_cached(x, &self.weight, &self.nhwc, self.padding, self.stride)?;
            return Ok(gpu::bias_residual(
                &y,
                Some(&self.bias),
                residual,
                1.0 / divisor,
            )?);
        }
        if self.trains_on_gpu(x) {
            // Training on CUDA: cuDNN, then bias, residual and division as one op with its
            // backward pass.
            let y = kernels::conv2d(x, &self.weight, None, self.stride, self.padding)?;
            return Ok(kernels::gpu_train::bias_residual(
                &y,
                &self.bias,
                residual,
                1.0 / divisor,
            )?);
        }
        let y = match residual {
            // On the CPU's prepared path the residual is added as each image's output is
            // written (the same values as the add).
            Some(r) => kernels::conv2d_prepared_residual(
                x,
                &self.weight,
                Some(&self.bias),
                self.stride,
                self.padding,
                &self.prepared,
                r,
            )?,
            None => fwd(self, x)?,
        };
        Ok(if divisor == 1.0 { y } else { (y / divisor)? })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.fused(x) {
            let y = gpu::conv2d_cached(x, &self.weight, &self.nhwc, self.padding, self.stride)?;
            return gpu::bias_residual(&y, Some(&self.bias), None, 1.0);
        }
        kernels::conv2d_prepared(
            x,
            &self.weight,
            Some(&self.bias),
            self.stride,
            self.padding,
            &self.prepared,
        )
    }
}

/// Square kernels (the only ones the cuDNN path is set up for).
fn square_kernel(w: &Tensor) -> bool {
    w.dims4().is_ok_and(|(_, _, kh, kw)| kh == kw)
}

/// [`Conv2d`] with parameters `weight` [o, i, k, k] and `bias` [o] (initialised as
/// `candle_nn::conv2d` does).
pub fn conv2d(
    i: usize,
    o: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get_with_hints(
        (o, i, k, k),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bound = 1.0 / (i as f64).sqrt();
    let bias = vb.get_with_hints(
        o,
        "bias",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(Conv2d {
        weight,
        bias,
        stride,
        padding,
        nhwc: std::sync::OnceLock::new(),
        prepared: Default::default(),
    })
}

/// `nn.GroupNorm(groups, channels, eps, affine=True)`, optionally fused with the activation
/// that follows it.
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `act(norm(x))`, in one kernel for SiLU.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        self.shifted_act(x, None, act)
    }

    /// `act(norm(x + shift))` with `shift` [B, C] broadcast over positions, in one kernel for
    /// SiLU.
    pub fn shifted_act(
        &self,
        x: &Tensor,
        shift: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        use kernels::group_norm::shifted_group_norm_act as gn;
        let (w, b, g, eps) = (&self.weight, &self.bias, self.groups, self.eps);
        if act == Activation::Silu {
            return Ok(gn(x, shift, w, b, g, eps, true)?);
        }
        activation(&gn(x, shift, w, b, g, eps, false)?, act)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        kernels::group_norm_act(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }
}

/// [`GroupNorm`] with parameters `weight` (ones) and `bias` (zeros) [channels].
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    Ok(GroupNorm {
        weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
        bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
        groups,
        eps,
    })
}

/// `nn.Linear(i, o)` with bias.
pub fn linear(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(candle_nn::linear(i, o, vb)?)
}

/// Apply a module and convert the error.
pub fn fwd<M: Module>(m: &M, x: &Tensor) -> Result<Tensor> {
    Ok(m.forward(x)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn upsample_matches_candle_and_softmax_sums_to_one() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24.0, &dev)
            .unwrap()
            .reshape((1, 2, 3, 4))
            .unwrap();
        let a = upsample_nearest2x(&x).unwrap();
        let b = x.upsample_nearest2d(6, 8).unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let s = softmax_last_dim(&x.to_dtype(DType::F64).unwrap()).unwrap();
        let r = candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F64).unwrap()).unwrap();
        let d = (s.clone() - r).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f64>().unwrap() < 1e-12);
    }
}
