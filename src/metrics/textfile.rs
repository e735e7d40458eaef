//! The exposition written to a file every `metrics_interval_ms`, for
//! node_exporter's textfile collector. Written whole to a temporary file
//! beside it and renamed over it, so a reader sees the old file or the new
//! one, never part of one. The temporary name does not end in `.prom`, so
//! the collector never reads it. The format is Prometheus 0.0.4, the one
//! the collector parses.
//!
//! The file is removed at engine close: a left-over file would go on
//! reporting a stopped engine's last figures as current.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

use super::{Format, Metrics};

/// Tells apart the temporary files of several writers in one process.
static WRITERS: AtomicU64 = AtomicU64::new(0);

/// The writing thread; `stop` ends and joins it.
pub struct Writer {
    stop: Sender<()>,
    thread: JoinHandle<()>,
    path: PathBuf,
}

impl Writer {
    pub fn start(path: PathBuf, interval: Duration, metrics: Arc<Metrics>) -> io::Result<Writer> {
        let (stop, rx) = crossbeam_channel::bounded::<()>(1);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            WRITERS.fetch_add(1, Ordering::Relaxed)
        ));
        let target = path.clone();
        let thread = std::thread::Builder::new().name("elevenlabs-metrics-file".into()).spawn(move || {
            let mut failing = false;
            loop {
                match write(&target, &tmp, &metrics.render(Format::Prometheus)) {
                    Ok(()) if failing => {
                        log::info!("metrics: writing {} again", target.display());
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        // One line per failing streak, not one per interval.
                        log::error!("metrics: cannot write {}: {e}", target.display());
                        failing = true;
                    }
                    Err(_) => {}
                }
                match rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        })?;
        Ok(Writer { stop, thread, path })
    }

    /// Ends and joins the thread, then removes the file. Not on the MRCP
    /// Server thread (file I/O).
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
        let _ = fs::remove_file(&self.path);
    }
}

fn write(path: &Path, tmp: &Path, text: &str) -> io::Result<()> {
    let result = (|| {
        let mut file = fs::File::create(tmp)?;
        file.write_all(text.as_bytes())?;
        drop(file);
        fs::rename(tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}
