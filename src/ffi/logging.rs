//! The `log` crate over UniMRCP's logger.
//!
//! Every line goes to `apt_log` with our own log source, so operators route
//! and filter it in logger.xml (`<source name="ELEVENLABS-SYNTH" .../>`).
//! `apt_log` formats with APR's rules, so the text is always passed as the
//! single argument of a "%s" format: nothing we log is ever read as a format.
//!
//! Lines that concern a channel carry its id; callers put it first
//! (`log::info!("[{id}] ...")`). Nothing may log from `read_frame`.

use std::ffi::{CStr, CString};
use std::fmt;
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

/// Longest line (and file name) written without an allocation; longer
/// ones go to the heap.
const LINE_ON_STACK: usize = 512;
const FILE_ON_STACK: usize = 128;

/// A C string built on the stack: the channel workers write a few lines
/// per SPEAK, and a line used to cost three allocations (its `String`, the
/// `CString` of it, the file name's) and reallocations as it grew. NUL,
/// which a C string cannot hold, becomes '?' rather than cut the line.
struct CText<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// The whole text once it outgrew `buf` (without its NUL).
    heap: Option<Vec<u8>>,
}

impl<const N: usize> CText<N> {
    fn new() -> Self {
        CText { buf: [0; N], len: 0, heap: None }
    }

    fn push(&mut self, bytes: &[u8]) {
        if let Some(heap) = self.heap.as_mut() {
            heap.extend_from_slice(bytes);
        } else if self.len + bytes.len() < N {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut heap = Vec::with_capacity((self.len + bytes.len()) * 2);
            heap.extend_from_slice(&self.buf[..self.len]);
            heap.extend_from_slice(bytes);
            self.heap = Some(heap);
        }
    }

    /// The text with its NUL, NULs inside replaced.
    fn finish(&mut self) -> &CStr {
        let bytes = match self.heap.as_mut() {
            Some(heap) => {
                heap.push(0);
                &mut heap[..]
            }
            None => {
                self.buf[self.len] = 0; // push keeps len < N
                &mut self.buf[..=self.len]
            }
        };
        let (last, text) = bytes.split_last_mut().expect("holds its NUL");
        *last = 0;
        text.iter_mut().filter(|b| **b == 0).for_each(|b| *b = b'?');
        CStr::from_bytes_with_nul(bytes).expect("one NUL, at the end")
    }
}

impl<const N: usize> fmt::Write for CText<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

impl Log for AptLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= Level::Debug
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut text = CText::<LINE_ON_STACK>::new();
        let _ = fmt::write(&mut text, *record.args());
        let mut file = CText::<FILE_ON_STACK>::new();
        file.push(record.file().unwrap_or("elevenlabs").as_bytes());
        let line = record.line().unwrap_or(0) as libc::c_int;
        let (text, file) = (text.finish(), file.finish());
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

    fn c_text<const N: usize>(parts: &[&str]) -> Vec<u8> {
        let mut t = CText::<N>::new();
        for part in parts {
            fmt::Write::write_str(&mut t, part).unwrap();
        }
        t.finish().to_bytes().to_vec()
    }

    #[test]
    fn nul_bytes_are_replaced_not_dropped() {
        assert_eq!(c_text::<16>(&["a\0b"]), b"a?b");
        assert_eq!(c_text::<16>(&["plain"]), b"plain");
        assert_eq!(c_text::<4>(&["a\0", "bcdef\0g"]), b"a?bcdef?g", "on the heap too");
    }

    #[test]
    fn lines_longer_than_the_stack_buffer_are_kept_whole() {
        assert_eq!(c_text::<8>(&[]), b"");
        assert_eq!(c_text::<8>(&["1234567"]), b"1234567", "fills the buffer, NUL included");
        assert_eq!(c_text::<8>(&["1234", "5678"]), b"12345678", "one byte more moves it to the heap");
        let long = "x".repeat(3 * LINE_ON_STACK);
        assert_eq!(c_text::<LINE_ON_STACK>(&[&long[..700], &long[700..]]), long.as_bytes());
    }

    #[test]
    fn levels_map_to_apt_priorities() {
        assert_eq!(priority(Level::Error), sys::APT_PRIO_ERROR);
        assert_eq!(priority(Level::Trace), sys::APT_PRIO_DEBUG);
    }
}
