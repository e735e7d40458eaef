//! What every curl handle of the engine is set up with: the share object
//! (DNS and TLS sessions, see `ffi::curl_share`), the CA file, and how
//! long curl may keep an idle connection.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ffi::curl_share::Share;

/// curl's own default for CURLOPT_MAXAGE_CONN (118 s): idle connections
/// older than this are closed by curl rather than reused.
const CURL_DEFAULT_MAX_AGE: Duration = Duration::from_secs(118);

pub struct Network {
    /// None only when curl could not make one (logged at open): then each
    /// handle keeps its own DNS and TLS session caches, as before.
    share: Option<Arc<Share>>,
    ca_file: Option<String>,
    /// Handed to CURLOPT_MAXAGE_CONN.
    max_age: Duration,
}

impl Network {
    /// For the engine; needs `curl::init` to have run.
    pub fn new(config: &Config) -> Network {
        let share = match Share::new() {
            Ok(share) => Some(Arc::new(share)),
            Err(e) => {
                log::warn!("no shared DNS/TLS session cache: {e}");
                None
            }
        };
        Network { share, ca_file: config.ca_file.clone(), max_age: max_age(config) }
    }

    pub fn share(&self) -> Option<&Arc<Share>> {
        self.share.as_ref()
    }

    pub fn ca_file(&self) -> Option<&str> {
        self.ca_file.as_deref()
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

/// A warm connection sits idle for up to `prewarm_refresh` between probes;
/// curl must not retire it for age before the next probe renews it, so the
/// limit is at least that plus a margin (and never below curl's default).
fn max_age(config: &Config) -> Duration {
    CURL_DEFAULT_MAX_AGE.max(config.prewarm_refresh + Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_keeps_a_warm_connection_past_its_refresh() {
        let mut config = Config::from_params(
            &[("api_key".to_owned(), "k".to_owned()), ("voice_id".to_owned(), "v".to_owned())],
            |_| unreachable!(),
        )
        .unwrap();
        assert_eq!(max_age(&config), Duration::from_secs(118), "default refresh: curl's default age");
        config.prewarm_refresh = Duration::from_secs(300);
        assert_eq!(max_age(&config), Duration::from_secs(330));
    }
}
