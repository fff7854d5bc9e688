//! Choosing the compute device: `auto`, `cpu` or `cuda[:N]`.

use std::str::FromStr;

use candle_core::{DType, Device};

use crate::{Error, Result};

/// The device a user asked for on the command line (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// CUDA when this build has it and a driver is present, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(ordinal)) => Ok(Self::Cuda(ordinal)),
                _ => Err(Error::Device {
                    requested: s.to_string(),
                    reason: "expected auto, cpu, cuda or cuda:N".to_string(),
                }),
            },
        }
    }
}

/// Resolves a [`DeviceRequest`] into a candle [`Device`].
///
/// `Auto` never fails: without CUDA support in this build it picks the CPU and logs why.
pub fn select(request: DeviceRequest) -> Result<Device> {
    match request {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Auto => {
            if candle_core::utils::cuda_is_available() {
                match Device::new_cuda(0) {
                    Ok(device) => return Ok(device),
                    Err(err) => tracing::info!("CUDA unavailable ({err}); using the CPU"),
                }
            } else {
                tracing::debug!("this build has no CUDA support; using the CPU");
            }
            Ok(Device::Cpu)
        }
        DeviceRequest::Cuda(ordinal) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Device {
                    requested: format!("cuda:{ordinal}"),
                    reason: "this build of ft has no CUDA support (build with --features cuda)"
                        .to_string(),
                });
            }
            Device::new_cuda(ordinal).map_err(|err| Error::Device {
                requested: format!("cuda:{ordinal}"),
                reason: err.to_string(),
            })
        }
    }
}

/// The dtype the model computes in on `device`: f32 on CPU (candle's bf16 CPU kernels are
/// slower than f32), bf16 on CUDA.
pub fn compute_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_requests() -> Result<()> {
        assert_eq!("auto".parse::<DeviceRequest>()?, DeviceRequest::Auto);
        assert_eq!("cpu".parse::<DeviceRequest>()?, DeviceRequest::Cpu);
        assert_eq!("cuda".parse::<DeviceRequest>()?, DeviceRequest::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceRequest>()?, DeviceRequest::Cuda(3));
        assert!("gpu".parse::<DeviceRequest>().is_err());
        Ok(())
    }
}
