//! Device names, as the `device` model option and `--device` take them: `cpu`, `cuda` (every
//! GPU) or `cuda:N`. Only the syntax lives here; whether this build and machine have the device
//! is checked where the work runs (`quiver_operators::ml::device`).

use std::fmt;
use std::str::FromStr;

use crate::QuiverError;
use crate::err;

/// A named device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    /// The CPU cores.
    Cpu,
    /// `cuda` (`None`: every GPU, or the first where one is meant) or `cuda:N`.
    Cuda(Option<usize>),
}

impl FromStr for DeviceName {
    type Err = QuiverError;

    /// Case and surrounding spaces do not matter.
    fn from_str(name: &str) -> Result<Self, QuiverError> {
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(None)),
            _ => lower
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(|n| Self::Cuda(Some(n)))
                .ok_or_else(|| {
                    err!(
                        QuiverError::Config,
                        "device '{name}' is not one of cpu, cuda, cuda:N"
                    )
                }),
        }
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (text, device) in [
            ("cpu", DeviceName::Cpu),
            (" CPU ", DeviceName::Cpu),
            ("cuda", DeviceName::Cuda(None)),
            ("cuda:3", DeviceName::Cuda(Some(3))),
        ] {
            assert_eq!(text.parse::<DeviceName>().unwrap(), device, "{text}");
        }
        assert_eq!(DeviceName::Cuda(Some(1)).to_string(), "cuda:1");
        for bad in ["tpu", "cuda:", "cuda:x", "cuda0", ""] {
            let err = bad.parse::<DeviceName>().unwrap_err().to_string();
            assert!(err.contains(&format!("device '{bad}'")), "{err}");
        }
    }
}
