//! The `device` option on this build and machine: `cpu`, or `cuda[:N]` in builds with the `cuda`
//! feature and a GPU.

use quiver_engine::device::DeviceName;

use super::MlError;
use quiver_engine::err;

/// A training or inference device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU (Burn's `flex` backend), all cores.
    Cpu,
    /// CUDA GPU number N.
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

/// Parses `cpu`, `cuda` or `cuda:N` (engine's [`DeviceName`]) and checks the device is there:
/// CUDA is an error in builds without the `cuda` feature.
pub fn parse(name: &str) -> Result<Device, MlError> {
    match name.parse::<DeviceName>()? {
        DeviceName::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        DeviceName::Cuda(index) => {
            let index = index.unwrap_or(0);
            cuda_available(index).map(|()| Device::Cuda(index))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceName::Cuda(_) => Err(err!(
            MlError::Option,
            "device '{name}' is not available: this build of Quiver has no CUDA support \
             (build it with --features cuda)"
        )),
    }
}

/// Checks that a CUDA driver is installed and that GPU `index` exists, so that a missing GPU is
/// a clear error before any work starts rather than a failure inside the CUDA runtime.
#[cfg(feature = "cuda")]
fn cuda_available(index: usize) -> Result<(), MlError> {
    // SAFETY: only tries to load the driver library (libcuda); no CUDA call is made here.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        quiver_engine::bail!(
            MlError::Option,
            "device 'cuda:{index}' is not available: no CUDA driver (libcuda) on this machine"
        );
    }
    let count = cudarc::driver::CudaContext::device_count().map_err(|e| {
        err!(
            MlError::Option,
            "device 'cuda:{index}' is not available: the CUDA driver failed: {e:?}"
        )
    })?;
    if index >= count.max(0) as usize {
        quiver_engine::bail!(
            MlError::Option,
            "device 'cuda:{index}' is not available: this machine has {count} CUDA device(s)"
        );
    }
    Ok(())
}

/// GPUs the CUDA driver reports (0 without a driver).
#[cfg(feature = "cuda")]
pub fn cuda_device_count() -> usize {
    // SAFETY: only tries to load the driver library (libcuda).
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    cudarc::driver::CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}
