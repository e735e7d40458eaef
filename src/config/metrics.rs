//! The params of the metrics exporter (README "Monitoring"): where to serve
//! `/metrics`, where to write the node_exporter textfile, and how often.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{err, ConfigError, Params};

pub const DEFAULT_METRICS_INTERVAL_MS: u64 = 10_000;

/// Both outputs off unless set.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig {
    /// `metrics_listen`: address of the HTTP endpoint.
    pub listen: Option<SocketAddr>,
    /// `metrics_textfile`: file rewritten for node_exporter's textfile
    /// collector.
    pub textfile: Option<PathBuf>,
    /// `metrics_interval_ms`: how often the textfile is rewritten.
    pub interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: None, textfile: None, interval: Duration::from_millis(DEFAULT_METRICS_INTERVAL_MS) }
    }
}

pub(super) fn parse(p: &Params<'_>) -> Result<MetricsConfig, ConfigError> {
    let listen =
        match p.get("metrics_listen") {
            None | Some("") => None,
            Some(raw) => Some(raw.parse::<SocketAddr>().map_err(|_| {
                err("metrics_listen", format!("'{raw}' is not an IP address and port (127.0.0.1:9464)"))
            })?),
        };
    let textfile = match p.get("metrics_textfile") {
        None | Some("") => None,
        // The temporary file goes beside it (same filesystem, so the rename
        // is atomic): it needs a file name in a directory.
        Some(raw) if raw.starts_with('/') && !raw.ends_with('/') => Some(PathBuf::from(raw)),
        Some(raw) => return Err(err("metrics_textfile", format!("'{raw}' is not an absolute file path"))),
    };
    let interval = p.millis("metrics_interval_ms", DEFAULT_METRICS_INTERVAL_MS, 10, 3_600_000)?;
    Ok(MetricsConfig { listen, textfile, interval: Duration::from_millis(interval) })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut p: Vec<(String, String)> = vec![("api_key".into(), "k".into()), ("voice_id".into(), "v".into())];
        p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_params(&p, |_| Err(std::io::Error::other("no file")))
    }

    #[test]
    fn metrics_are_off_by_default_and_parse_when_set() {
        assert_eq!(with(&[]).unwrap().metrics, MetricsConfig::default());
        let c = with(&[
            ("metrics_listen", "127.0.0.1:9464"),
            ("metrics_textfile", "/var/lib/node_exporter/textfile/elevenlabs.prom"),
            ("metrics_interval_ms", "500"),
        ])
        .unwrap()
        .metrics;
        assert_eq!(c.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            c.textfile.as_deref(),
            Some(std::path::Path::new("/var/lib/node_exporter/textfile/elevenlabs.prom"))
        );
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(
            with(&[("metrics_listen", "[::1]:9464")]).unwrap().metrics.listen,
            Some("[::1]:9464".parse().unwrap())
        );
        assert_eq!(with(&[("metrics_listen", "")]).unwrap().metrics.listen, None);
    }

    #[test]
    fn bad_metrics_params_name_the_param() {
        for (name, bad) in [
            ("metrics_listen", "localhost:9464"),
            ("metrics_listen", "127.0.0.1"),
            ("metrics_textfile", "relative.prom"),
            ("metrics_textfile", "/var/lib/"),
            ("metrics_interval_ms", "5"),
            ("metrics_interval_ms", "soon"),
        ] {
            assert_eq!(with(&[(name, bad)]).unwrap_err().param, name, "{name}={bad}");
        }
    }
}
