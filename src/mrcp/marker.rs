/// `timestamp=<NTP time>[;<mark name>]`, the Speech-Marker value (RFC 6787):
/// the NTP timestamp is the 64-bit fixed-point count of seconds since 1900,
/// in decimal.
pub fn speech_marker(name: Option<&str>) -> String {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
    let ntp = (secs << 32) | frac;
    match name {
        Some(name) => format!("timestamp={ntp};{name}"),
        None => format!("timestamp={ntp}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_an_ntp_time_and_the_name() {
        let m = speech_marker(Some("here"));
        let (ts, name) = m.strip_prefix("timestamp=").unwrap().split_once(';').unwrap();
        assert_eq!(name, "here");
        let secs = ts.parse::<u64>().unwrap() >> 32;
        assert!(secs > 3_900_000_000, "seconds since 1900, not 1970: {secs}");
        assert!(!speech_marker(None).contains(';'));
    }
}
