//! The `log` crate over UniMRCP's logger.
//!
//! Every line goes to `apt_log` with our own log source, so operators route
//! and filter it in logger.xml (`<source name="ELEVENLABS-SYNTH" .../>`).
//! `apt_log` formats with APR's rules, so the text is always passed as the
//! single argument of a "%s" format: nothing we log is ever read as a format.
//!
//! Lines that concern a channel carry its id; callers put it first
//! (`log::info!("[{id}] ...")`). Nothing may log from `read_frame`.

use std::ffi::CString;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

use super::sys;

/// Name of our source in logger.xml.
pub const LOG_SOURCE_NAME: &str = "ELEVENLABS-SYNTH";

/// Our log source; null until the server hands us one, and then whatever
/// `apt_log_source_assign` pointed it at. Null means the server's default.
static LOG_SOURCE: AtomicPtr<sys::apt_log_source_t> = AtomicPtr::new(ptr::null_mut());

struct AptLogger;

static LOGGER: AptLogger = AptLogger;

/// Installs the logger once per load of the plugin. A second call (or another
/// logger already installed in this image) is harmless.
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Debug);
    }
}

/// Called from `mrcp_plugin_log_source_set`: adopt the server's default
/// source and look ours up by name, as UniMRCP's own plugin macro does.
///
/// # Safety
/// `orig` is the pointer the server passes (may be null).
pub unsafe fn adopt_log_source(orig: *mut sys::apt_log_source_t) {
    if !orig.is_null() {
        // SAFETY: the server passes a valid log source; this copies it into
        // the server's default source, exactly what UniMRCP plugins do.
        unsafe { sys::apt_def_log_source_set(orig) };
    }
    let mut source: *mut sys::apt_log_source_t = ptr::null_mut();
    let name = CString::new(LOG_SOURCE_NAME).expect("no NUL in the source name");
    // SAFETY: name is a valid C string; `source` is a valid out-pointer that
    // the server sets only when logger.xml names our source.
    let found = unsafe { sys::apt_log_source_assign(name.as_ptr(), &mut source) };
    // Not configured in logger.xml: log through the server's default (also
    // forgets a source from an earlier load of the plugin in this process).
    let ours = if found != 0 { source } else { ptr::null_mut() };
    LOG_SOURCE.store(ours, Ordering::Release);
}

fn current_source() -> *mut sys::apt_log_source_t {
    let source = LOG_SOURCE.load(Ordering::Acquire);
    if source.is_null() {
        // def_log_source is a data symbol of the server library; taking its
        // address reads nothing.
        ptr::addr_of_mut!(sys::def_log_source)
    } else {
        source
    }
}

fn priority(level: Level) -> sys::apt_log_priority_e {
    match level {
        Level::Error => sys::APT_PRIO_ERROR,
        Level::Warn => sys::APT_PRIO_WARNING,
        Level::Info => sys::APT_PRIO_INFO,
        Level::Debug | Level::Trace => sys::APT_PRIO_DEBUG,
    }
}

/// C strings cannot hold NUL; replace it rather than drop the line.
fn to_c_text(text: String) -> CString {
    CString::new(text).unwrap_or_else(|e| {
        let mut bytes = e.into_vec();
        bytes.iter_mut().filter(|b| **b == 0).for_each(|b| *b = b'?');
        CString::new(bytes).expect("NULs were replaced")
    })
}

impl Log for AptLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= Level::Debug
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = to_c_text(format!("{}", record.args()));
        let file = to_c_text(record.file().unwrap_or("elevenlabs").to_owned());
        let line = record.line().unwrap_or(0) as libc::c_int;
        // SAFETY: all pointers are valid C strings for the call; "%s" with one
        // string argument is the one format we ever pass.
        unsafe {
            sys::apt_log(
                current_source(),
                file.as_ptr(),
                line,
                priority(record.level()),
                c"%s".as_ptr(),
                text.as_ptr(),
            );
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_are_replaced_not_dropped() {
        assert_eq!(to_c_text("a\0b".into()).as_bytes(), b"a?b");
        assert_eq!(to_c_text("plain".into()).as_bytes(), b"plain");
    }

    #[test]
    fn levels_map_to_apt_priorities() {
        assert_eq!(priority(Level::Error), sys::APT_PRIO_ERROR);
        assert_eq!(priority(Level::Trace), sys::APT_PRIO_DEBUG);
    }
}
