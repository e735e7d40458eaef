//! The host's error type.

use std::fmt;

#[derive(Clone, Debug)]
pub enum HostError {
    /// The plugin could not be loaded: dlopen, missing symbols, version,
    /// `mrcp_plugin_create` returning NULL, or the .so was not found.
    Load(String),
    /// The plugin answered with a failure: engine open FALSE, create_channel
    /// NULL, unsuitable capabilities, channel open FALSE, ...
    Refused(String),
    /// The plugin did not answer within the host's time limit.
    Timeout(String),
    /// A problem on the host's side (another server running, bad argument).
    Host(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Load(m) => write!(f, "plugin load failed: {m}"),
            HostError::Refused(m) => write!(f, "plugin refused: {m}"),
            HostError::Timeout(m) => write!(f, "plugin did not answer in time: {m}"),
            HostError::Host(m) => write!(f, "host error: {m}"),
        }
    }
}

impl std::error::Error for HostError {}
