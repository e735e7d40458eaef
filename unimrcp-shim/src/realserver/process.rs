//! The private root and the two programs: `unimrcpserver` and `umc`, both
//! started with `-r <root>` and stopped by a guard even when a test fails.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A private UniMRCP root (`conf/ plugin/ log/ data/ var/`) in a temp dir,
/// removed on success and kept (and named) on failure.
pub struct TempRoot {
    pub path: PathBuf,
}

impl TempRoot {
    pub fn new() -> TempRoot {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("unimrcp-elevenlabs-real-{}-{nanos:08x}", std::process::id()));
        for sub in ["conf/client-profiles", "conf/umc-scenarios", "plugin", "log", "data", "var"] {
            fs::create_dir_all(path.join(sub)).expect("create the private root");
        }
        TempRoot { path }
    }
}

impl Default for TempRoot {
    fn default() -> TempRoot {
        TempRoot::new()
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("real-server test failed: its root is kept at {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The file's text; panics naming the file.
pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes the file; panics naming it.
pub fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The file's text, invalid UTF-8 replaced; empty when it cannot be read.
pub fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Time left until `deadline` (zero after it).
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Polls `path` until `done` holds for its text; the text either way.
pub fn wait_file(path: &Path, limit: Duration, mut done: impl FnMut(&str) -> bool) -> Result<String, String> {
    let until = Instant::now() + limit;
    loop {
        let text = read_lossy(path);
        if done(&text) {
            return Ok(text);
        }
        if Instant::now() >= until {
            return Err(text);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit, up to `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The server process; SIGTERM (then SIGKILL) on drop.
pub struct RealServer {
    child: Option<Child>,
    log: PathBuf,
}

impl RealServer {
    /// Starts `<home>/bin/unimrcpserver -r <root> -o 2 -w` (log file only,
    /// no console) and waits until it says "MRCP Server Started"; panics
    /// with its log when it does not, or when an engine failed to open.
    pub fn start(home: &Path, root: &Path, deadline: Instant) -> RealServer {
        let console = fs::File::create(root.join("unimrcpserver.console")).expect("console file");
        let child = Command::new(home.join("bin/unimrcpserver"))
            .arg("-r")
            .arg(root)
            .args(["-o", "2", "-w"])
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console file"))
            .stderr(console)
            .spawn()
            .expect("start unimrcpserver");
        let mut server = RealServer { child: Some(child), log: root.join("log/unimrcpserver_current.log") };
        let limit = remaining(deadline).min(Duration::from_secs(15));
        let child = server.child.as_mut().expect("child");
        let started = wait_file(&server.log, limit, |log| {
            log.contains("MRCP Server Started")
                || log.contains("engine open failed")
                || matches!(child.try_wait(), Ok(Some(_)))
        });
        match started {
            Ok(log) if log.contains("MRCP Server Started") && !log.contains("engine open failed") => server,
            Ok(log) | Err(log) => panic!("unimrcpserver did not start with the plugin; its log:\n{log}"),
        }
    }

    /// The server's process id (None once stopped), for reading its
    /// /proc entries.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log file.
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// SIGTERM; the exit status (None if it had to be killed) and how long
    /// the server took.
    pub fn stop(&mut self) -> (Option<ExitStatus>, Duration) {
        let Some(mut child) = self.child.take() else { return (None, Duration::ZERO) };
        let started = Instant::now();
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child, which has not been reaped
            // (we hold its Child), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let status = wait_exit(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        (status, started.elapsed())
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// umc driven through its console. Its stdout is block-buffered into a file,
/// so progress is read from its log file, which is flushed per line.
pub struct Umc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    console: PathBuf,
}

impl Umc {
    /// Starts `<home>/bin/umc -r <root> -o 3` and waits until the client is
    /// up and has loaded the named `scenarios`.
    pub fn start(home: &Path, root: &Path, scenarios: &[&str], deadline: Instant) -> Umc {
        let console = root.join("umc.console");
        let out = fs::File::create(&console).expect("console file");
        let mut child = Command::new(home.join("bin/umc"))
            .arg("-r")
            .arg(root)
            .args(["-o", "3"])
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().expect("console file"))
            .stderr(out)
            .spawn()
            .expect("start umc");
        let stdin = child.stdin.take();
        let umc = Umc { child: Some(child), stdin, log: root.join("log/unimrcpclient_current.log"), console };
        let limit = remaining(deadline).min(Duration::from_secs(15));
        umc.wait_log(limit, |log| {
            log.contains("MRCP Client Started")
                && scenarios.iter().all(|s| log.contains(&format!("Load Scenario Name [{s}]")))
        })
        .unwrap_or_else(|log| panic!("umc did not start; its log:\n{log}"));
        umc
    }

    /// One console command line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("umc stdin");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("write to umc");
    }

    /// umc's log file.
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// What umc printed.
    pub fn console_text(&self) -> String {
        read_lossy(&self.console)
    }

    /// Polls the log until `done` holds for it (see [`wait_file`]).
    pub fn wait_log(&self, limit: Duration, done: impl Fn(&str) -> bool) -> Result<String, String> {
        wait_file(&self.log, limit, done)
    }

    /// `quit` (umc spins on EOF, so it must be told), then wait.
    pub fn quit(&mut self) -> Option<ExitStatus> {
        if self.stdin.is_some() {
            self.send("quit");
        }
        let mut child = self.child.take()?;
        let status = wait_exit(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self.stdin.take());
        status
    }
}

impl Drop for Umc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
