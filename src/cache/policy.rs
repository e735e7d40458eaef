use std::time::Duration;

/// What a SPEAK's Cache-Control header allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Serve from (and follow flights in) the cache.
    pub read: bool,
    /// Store the result.
    pub write: bool,
    /// Serve only entries younger than this.
    pub max_age: Option<Duration>,
}

impl Policy {
    /// `no-cache` bypasses the cache for the request (the fresh result
    /// still refreshes the entry), `no-store` keeps it out, `max-age=N`
    /// limits the age of what is served. Unknown directives are ignored.
    pub fn from_header(value: Option<&str>) -> Policy {
        let mut policy = Policy { read: true, write: true, max_age: None };
        for directive in value.unwrap_or("").split(',') {
            let d = directive.trim().to_ascii_lowercase();
            match d.split_once('=') {
                None if d == "no-cache" => policy.read = false,
                None if d == "no-store" => {
                    policy.read = false;
                    policy.write = false;
                }
                Some(("max-age", n)) => {
                    if let Ok(secs) = n.trim().trim_matches('"').parse::<u64>() {
                        policy.max_age = Some(Duration::from_secs(secs));
                    }
                }
                _ => {}
            }
        }
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        assert_eq!(Policy::from_header(None), Policy { read: true, write: true, max_age: None });
        assert_eq!(Policy::from_header(Some("no-cache")), Policy { read: false, write: true, max_age: None });
        assert_eq!(Policy::from_header(Some("No-Store")), Policy { read: false, write: false, max_age: None });
        assert_eq!(
            Policy::from_header(Some("max-age=60, private")),
            Policy { read: true, write: true, max_age: Some(Duration::from_secs(60)) }
        );
    }
}
