//! Shared types for every `ft` crate: the compute device and dtype choice, and small tensor
//! helpers. Model, data and training code live in the crates above this one.
//!
//! ```
//! let device = ft_core::device::select(ft_core::device::DeviceRequest::Cpu).unwrap();
//! assert!(device.is_cpu());
//! ```

pub mod device;
pub mod error;
pub mod testing;

pub use error::{Error, Result};
