//! Conditioning a network takes besides x and σ (class labels, an SR3 image): its own leaf
//! module, below both the networks (`nn`) and the denoisers that wrap them.
use candle_core::Tensor;

use crate::Result;

/// Conditioning passed through to the network untouched by samplers.
#[derive(Debug, Clone, Default)]
pub struct Cond {
    /// Class labels, [B] u32; `None` for unconditional models.
    pub labels: Option<Tensor>,
    /// An image [B, C, H, W] concatenated to the network's input channels (SR3-style
    /// super-resolution: the upsampled low-resolution input); `None` otherwise.
    pub image: Option<Tensor>,
}

impl Cond {
    /// Rows `start..start + len` of every conditioning tensor.
    pub fn rows(&self, start: usize, len: usize) -> Result<Cond> {
        let cut = |t: &Option<Tensor>| t.as_ref().map(|t| t.narrow(0, start, len)).transpose();
        Ok(Cond {
            labels: cut(&self.labels)?,
            image: cut(&self.image)?,
        })
    }

    /// The conditioning as a network on `dev` computing in `dtype` takes it: labels moved,
    /// the image moved and cast.
    pub fn to_network(&self, dev: &candle_core::Device, dtype: candle_core::DType) -> Result<Cond> {
        Ok(Cond {
            labels: self.labels.as_ref().map(|l| l.to_device(dev)).transpose()?,
            image: (self.image.as_ref())
                .map(|im| im.to_device(dev)?.to_dtype(dtype))
                .transpose()?,
        })
    }
}
