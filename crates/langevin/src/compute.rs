//! Where a model runs and in what precision: `cpu` or `cuda[:N]`, and `f32`, `bf16` or `f16`.
//!
//! Weights are cast to the compute dtype when a model is loaded; samplers, schedules and losses
//! keep their state in f32 (the preconditioner casts the network's input and output), so a
//! bf16 model changes only the network's arithmetic.
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The compute precision of a network; serialises as `f32`, `bf16`, `f16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" | "fp32" | "float32" => Precision::F32,
            "bf16" | "bfloat16" => Precision::Bf16,
            "f16" | "fp16" | "float16" => Precision::F16,
            _ => {
                return Err(Error::config(
                    "dtype",
                    format!("unknown dtype '{s}'; expected f32, bf16 or f16"),
                ))
            }
        })
    }
}

/// Check that `dtype` can run on `dev`: half precisions need a GPU (candle's CPU backend has
/// no bf16/f16 matmul or convolution kernels worth using).
pub fn check(dev: &Device, dtype: DType) -> Result<()> {
    if dev.is_cpu() && matches!(dtype, DType::BF16 | DType::F16) {
        return Err(Error::config(
            "dtype",
            format!(
                "{} runs on CUDA devices (--device cuda); on the CPU use f32",
                dtype.as_str()
            ),
        ));
    }
    Ok(())
}

/// Parse a device name: `cpu`, `cuda` (GPU 0) or `cuda:N`. A CUDA device in a binary built
/// without the `cuda` feature, or on a machine without that GPU, is a clear error.
pub fn device(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(Error::config(
                    "device",
                    format!("unknown device '{s}'; expected cpu, cuda or cuda:N"),
                ))
            }
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::config(
            "device",
            format!(
                "'{spec}' needs a CUDA build of langevin; this binary was built without the \
                 `cuda` feature (build one with scripts/build-cuda.sh)"
            ),
        ));
    }
    let dev = Device::new_cuda(ordinal)
        .map_err(|e| Error::config("device", format!("cannot open '{spec}': {e}")))?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &dev {
        // SAFETY: langevin runs all work of a device on its one stream, where allocation,
        // use and release are ordered; cudarc's per-tensor events (a host-side cost on every
        // op) guard only cross-stream use.
        unsafe { d.disable_event_tracking() };
    }
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_others() {
        assert!(device("cpu").unwrap().is_cpu());
        let e = check(&Device::Cpu, DType::BF16).unwrap_err().to_string();
        assert!(e.contains("--device cuda"), "{e}");
        check(&Device::Cpu, DType::F32).unwrap();
        assert!("bf16".parse::<Precision>().unwrap() == Precision::Bf16);
        assert_eq!("f32".parse::<Precision>().unwrap().dtype(), DType::F32);
        let e = "f64".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("dtype") && e.contains("bf16"), "{e}");
        let e = device("tpu").unwrap_err().to_string();
        assert!(e.contains("cuda:N"), "{e}");
        if !cfg!(feature = "cuda") {
            let e = device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("build-cuda.sh"), "{e}");
        }
    }
}
