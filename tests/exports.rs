//! The plugin is loaded RTLD_GLOBAL: every symbol it defines is visible to
//! the whole server. It must define the UniMRCP entry points and nothing else.

use std::path::PathBuf;
use std::process::Command;

fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("deps dir");
    [dir.join("libunimrcp_elevenlabs.so"), dir.join("../libunimrcp_elevenlabs.so")]
        .into_iter()
        .find(|p| p.exists())
        .expect("cargo builds the plugin .so before integration tests")
}

#[test]
fn only_the_plugin_entry_points_are_exported() {
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(plugin_path()).output().expect("nm runs");
    assert!(out.status.success(), "nm failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut symbols: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (_addr, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
            // Linker-made markers are not ours.
            (!matches!(name, "_init" | "_fini" | "_edata" | "_end" | "__bss_start")).then(|| format!("{kind} {name}"))
        })
        .collect();
    symbols.sort();
    assert_eq!(
        symbols,
        ["R mrcp_plugin_version", "T mrcp_plugin_create", "T mrcp_plugin_log_source_set", "T mrcp_plugin_logger_set"]
    );
}

/// The plugin uses the host's libcurl, the one its distribution patches
/// (build.rs refuses one that curl-sys compiled itself): the .so needs
/// libcurl.so.4 and carries no curl of its own.
#[test]
fn libcurl_is_the_systems_shared_library() {
    let out = Command::new("readelf").args(["-d", "-W"]).arg(plugin_path()).output().expect("readelf runs");
    assert!(out.status.success(), "readelf failed: {}", String::from_utf8_lossy(&out.stderr));
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("Shared library: [libcurl.so.4]"), "{dynamic}");
    let out = Command::new("nm").args(["--defined-only"]).arg(plugin_path()).output().expect("nm runs");
    let defined = String::from_utf8_lossy(&out.stdout);
    let own_curl: Vec<&str> = defined.lines().filter(|l| l.ends_with(" curl_easy_init")).collect();
    assert!(own_curl.is_empty(), "the plugin defines libcurl itself: {own_curl:?}");
}
