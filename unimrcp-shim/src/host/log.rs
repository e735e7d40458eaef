//! The logging part of the server ABI: `apt_log`, log sources and the
//! `def_log_source` data symbol.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, CStr};
use std::time::Instant;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::context::{thread_name, violation, with_current};
use super::record::LogLine;
use crate::sys;

/// Our `apt_log_source_t`: a name plus the priority and masking settings a
/// `<source>` element of logger.xml carries. The plugin only passes pointers
/// to it around.
#[repr(C)]
pub struct LogSource {
    name: *const c_char,
    priority: c_uint,
    masking: c_uint,
}

// SAFETY: the fields are never written after construction; `name` points to
// a static or leaked C string.
unsafe impl Sync for LogSource {}

/// The server's default log source, a data symbol the plugin takes the
/// address of (MRCP_PLUGIN_LOG_SOURCE_IMPLEMENT initialises its own source
/// pointer with `&def_log_source`).
#[no_mangle]
pub static def_log_source: LogSource =
    LogSource { name: c"default".as_ptr(), priority: sys::APT_PRIO_DEBUG, masking: 0 };

/// The `apt_logger_t` the host passes to `mrcp_plugin_logger_set`. Nothing
/// looks inside it; it only has to be a recognisable address.
#[repr(C)]
pub struct Logger {
    _tag: u64,
}

pub static HOST_LOGGER: Logger = Logger { _tag: 0x6c6f_6767_6572 };

/// Sources named in the configuration, created on first assignment and kept
/// forever (the plugin may hold pointers to them in its globals).
static SOURCES: Lazy<Mutex<HashMap<String, &'static LogSource>>> = Lazy::new(|| Mutex::new(HashMap::new()));

fn source_named(name: &str) -> &'static LogSource {
    let mut sources = SOURCES.lock();
    sources.entry(name.to_string()).or_insert_with(|| {
        let c = std::ffi::CString::new(name).unwrap_or_default();
        Box::leak(Box::new(LogSource { name: c.into_raw(), priority: sys::APT_PRIO_DEBUG, masking: 0 }))
    })
}

/// The name to record for a source pointer the plugin logged with.
fn source_name(source: *const LogSource) -> Option<String> {
    if std::ptr::eq(source, &def_log_source) {
        return Some("default".to_string());
    }
    let sources = SOURCES.lock();
    sources.iter().find(|(_, s)| std::ptr::eq(**s, source)).map(|(name, _)| name.clone())
}

pub const PRIORITY_NAMES: [&str; 8] = ["EMERG", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"];

/// `apt_log(source, file, line, priority, format, ...)`.
///
/// In C this is variadic, which stable Rust cannot define. On x86_64 System
/// V the first six integer/pointer arguments travel in registers (rdi, rsi,
/// rdx, rcx, r8, r9) whether they are fixed or variadic, so a caller's first
/// variadic pointer argument arrives exactly where a sixth fixed parameter
/// is read from (the caller also sets %al for vector registers, which a
/// non-variadic callee simply ignores). The plugin's contract is to call
/// `apt_log(..., "%s", text)`; we check that the format is "%s" and read
/// `arg` only then. Any other format is a violation and only the format text
/// is recorded (we cannot know what the other arguments are).
#[no_mangle]
pub unsafe extern "C" fn apt_log(
    source: *const LogSource,
    file: *const c_char,
    line: c_int,
    priority: c_uint,
    format: *const c_char,
    arg: *const c_char,
) -> sys::apt_bool_t {
    let at = Instant::now();
    let cstr = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: non-NULL C string from the caller (apt_log's contract).
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let fmt = cstr(format);
    let text = if fmt == "%s" {
        if arg.is_null() {
            violation("apt_log(\"%s\", NULL)");
        }
        cstr(arg)
    } else {
        if fmt.contains('%') {
            violation(format!("apt_log format must be \"%s\" with one string argument, got {fmt:?}"));
        }
        fmt
    };
    let source_label = if source.is_null() {
        violation("apt_log with a NULL log source");
        "NULL".to_string()
    } else {
        source_name(source).unwrap_or_else(|| {
            violation(format!("apt_log with an unknown log source {source:p}"));
            "unknown".to_string()
        })
    };
    if priority >= sys::APT_PRIO_COUNT {
        violation(format!("apt_log priority {priority} out of range"));
    }
    let entry = LogLine { at, source: source_label, priority, text, thread: thread_name(), file: cstr(file), line };
    with_current(|ctx| {
        if ctx.echo_logs {
            eprintln!("{}", entry.display(ctx.epoch));
        }
        ctx.logs.lock().push(entry);
    });
    1
}

/// Installs the logger (MRCP_PLUGIN_LOGGER_IMPLEMENT forwards the pointer
/// the server passed to `mrcp_plugin_logger_set`).
#[no_mangle]
pub unsafe extern "C" fn apt_log_instance_set(logger: *mut sys::apt_logger_t) -> sys::apt_bool_t {
    if !std::ptr::eq(logger.cast::<Logger>(), &HOST_LOGGER) {
        violation(format!("apt_log_instance_set({logger:p}): not the logger the server passed"));
    }
    with_current(|ctx| *ctx.logger_set.lock() = Some(logger as usize));
    1
}

#[no_mangle]
pub unsafe extern "C" fn apt_def_log_source_set(log_source: *mut sys::apt_log_source_t) {
    if !std::ptr::eq(log_source.cast::<LogSource>(), &def_log_source) {
        violation(format!("apt_def_log_source_set({log_source:p}): not the server's def_log_source"));
    }
    with_current(|ctx| *ctx.def_source_set.lock() = Some(log_source as usize));
}

/// Points `*log_source` at the source configured under `name`, if any.
#[no_mangle]
pub unsafe extern "C" fn apt_log_source_assign(
    name: *const c_char,
    log_source: *mut *mut sys::apt_log_source_t,
) -> sys::apt_bool_t {
    if name.is_null() || log_source.is_null() {
        violation("apt_log_source_assign with a NULL argument");
        return 0;
    }
    // SAFETY: name is a C string (checked non-NULL).
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
    let configured = with_current(|ctx| ctx.log_sources.contains(&name));
    if !configured {
        return 0;
    }
    let source: *const LogSource = source_named(&name);
    // SAFETY: log_source is a valid pointer to the plugin's source variable.
    unsafe { *log_source = source as *mut sys::apt_log_source_t };
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn def_source_has_a_name() {
        assert_eq!(source_name(&def_log_source).as_deref(), Some("default"));
        let other = source_named("UNIT-TEST-SOURCE");
        assert_eq!(source_name(other).as_deref(), Some("UNIT-TEST-SOURCE"));
    }
}
