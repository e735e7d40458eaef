//! Loading the plugin .so the way unimrcpserver does: dlopen with
//! RTLD_NOW|RTLD_GLOBAL, version check, logger hooks, `mrcp_plugin_create`.

use std::ffi::{c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::HostError;
use super::exports::anchor;
use super::log::{def_log_source, LogSource, HOST_LOGGER};
use super::pool::Pool;
use crate::sys;

/// File name cargo gives the plugin cdylib.
pub const PLUGIN_FILE_NAME: &str = "libunimrcp_elevenlabs.so";
/// Environment variable naming the plugin .so when it is not found next to
/// the executable.
pub const PLUGIN_PATH_ENV: &str = "UNIMRCP_ELEVENLABS_SO";

/// The newest plugin version this host (like UniMRCP 1.8.0) accepts.
pub const SERVER_VERSION: (i32, i32, i32) = (1, 8, 0);

/// A loaded plugin and the engine its `mrcp_plugin_create` returned.
/// Dropping it dlcloses the library (after which the engine is invalid).
pub struct PluginLibrary {
    handle: *mut c_void,
    path: PathBuf,
    version: sys::apr_version_t,
    engine: *mut sys::mrcp_engine_t,
    has_logger_set: bool,
    has_log_source_set: bool,
    /// The pool `mrcp_plugin_create` got (the server's pool); freed after dlclose.
    pool: Pool,
}

// SAFETY: the handle and engine are addresses; the server decides on which
// thread each is used, following the plugin ABI.
unsafe impl Send for PluginLibrary {}
// SAFETY: &self methods only read plain fields set at load time.
unsafe impl Sync for PluginLibrary {}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns NULL or a C string valid until the next dl call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown dl error".to_string()
    } else {
        // SAFETY: non-NULL C string from dlerror.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

impl PluginLibrary {
    /// Loads the plugin at `path` as unimrcpserver does, on the calling
    /// thread (the server's main thread in UniMRCP).
    pub fn load(path: &Path) -> Result<PluginLibrary, HostError> {
        anchor();
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| HostError::Load(format!("{}: path contains NUL", path.display())))?;
        // SAFETY: c_path is a valid C string; the flags are the server's.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            return Err(HostError::Load(format!("dlopen {}: {}", path.display(), dlerror_text())));
        }
        let sym = |name: &CStr| {
            // SAFETY: handle is a live dlopen handle, name a C string.
            unsafe { libc::dlsym(handle, name.as_ptr()) }
        };
        let close = || {
            // SAFETY: handle came from dlopen and is closed once on this path.
            unsafe { libc::dlclose(handle) };
        };

        let version_ptr = sym(c"mrcp_plugin_version").cast::<sys::apr_version_t>();
        if version_ptr.is_null() {
            close();
            return Err(HostError::Load(format!("{}: No Version Info Found (mrcp_plugin_version)", path.display())));
        }
        // SAFETY: the data symbol is an apr_version_t (4 ints).
        let version = unsafe { *version_ptr };
        let (major, minor, patch) = SERVER_VERSION;
        let acceptable = version.major < major
            || (version.major == major
                && (version.minor < minor || (version.minor == minor && version.patch <= patch)));
        if !acceptable {
            close();
            return Err(HostError::Load(format!(
                "{}: plugin version {}.{}.{} is newer than the server's {major}.{minor}.{patch}",
                path.display(),
                version.major,
                version.minor,
                version.patch
            )));
        }

        let logger_set = sym(c"mrcp_plugin_logger_set");
        if !logger_set.is_null() {
            // SAFETY: the optional hook has this signature in the plugin ABI.
            let f: unsafe extern "C" fn(*mut sys::apt_logger_t) -> sys::apt_bool_t =
                unsafe { std::mem::transmute(logger_set) };
            // SAFETY: HOST_LOGGER lives forever; the plugin only passes it on.
            unsafe { f((&HOST_LOGGER as *const super::log::Logger).cast_mut().cast()) };
        }
        let log_source_set = sym(c"mrcp_plugin_log_source_set");
        if !log_source_set.is_null() {
            // SAFETY: the optional hook has this signature in the plugin ABI.
            let f: unsafe extern "C" fn(*mut sys::apt_log_source_t) -> sys::apt_bool_t =
                unsafe { std::mem::transmute(log_source_set) };
            // SAFETY: def_log_source is a static; the plugin only reads it.
            unsafe { f((&def_log_source as *const LogSource).cast_mut().cast()) };
        }

        let create = sym(c"mrcp_plugin_create");
        if create.is_null() {
            close();
            return Err(HostError::Load(format!("{}: Failed to Load DSO Symbol mrcp_plugin_create", path.display())));
        }
        // SAFETY: the creator has this signature in the plugin ABI.
        let create: unsafe extern "C" fn(*mut sys::apr_pool_t) -> *mut sys::mrcp_engine_t =
            unsafe { std::mem::transmute(create) };
        let pool = Pool::new("server");
        // SAFETY: pool is live for as long as the library stays loaded.
        let engine = unsafe { create(pool.as_ptr()) };
        if engine.is_null() {
            close();
            return Err(HostError::Load(format!("{}: mrcp_plugin_create returned NULL", path.display())));
        }
        Ok(PluginLibrary {
            handle,
            path: path.to_path_buf(),
            version,
            engine,
            has_logger_set: !logger_set.is_null(),
            has_log_source_set: !log_source_set.is_null(),
            pool,
        })
    }

    pub fn engine(&self) -> *mut sys::mrcp_engine_t {
        self.engine
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (major, minor, patch, is_dev) of `mrcp_plugin_version`.
    pub fn version(&self) -> (i32, i32, i32, i32) {
        (self.version.major, self.version.minor, self.version.patch, self.version.is_dev)
    }

    /// Whether the optional hooks were exported (and called).
    pub fn has_logger_hooks(&self) -> (bool, bool) {
        (self.has_logger_set, self.has_log_source_set)
    }

    /// The server pool given to `mrcp_plugin_create`.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Keeps the library loaded forever (used when a plugin thread may still
    /// run its code, e.g. after a callback never returned).
    /// The server pool is leaked with it: the plugin may still use it.
    pub fn leak(self) {
        std::mem::forget(self);
    }

    /// Where the plugin is: next to the current executable (cargo puts test
    /// binaries and the .so in target/<profile>/deps), else in its parent
    /// directory (target/<profile>), else the path in UNIMRCP_ELEVENLABS_SO.
    pub fn default_path() -> Result<PathBuf, HostError> {
        let mut tried = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            let mut dir = exe.parent().map(Path::to_path_buf);
            for _ in 0..2 {
                let Some(d) = dir else { break };
                let candidate = d.join(PLUGIN_FILE_NAME);
                if candidate.is_file() {
                    return Ok(candidate);
                }
                tried.push(candidate.display().to_string());
                dir = d.parent().map(Path::to_path_buf);
            }
        }
        if let Some(p) = std::env::var_os(PLUGIN_PATH_ENV).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            if p.is_file() {
                return Ok(p);
            }
            tried.push(format!("{} (from {PLUGIN_PATH_ENV})", p.display()));
        }
        Err(HostError::Load(format!("{PLUGIN_FILE_NAME} not found; looked at: {}", tried.join(", "))))
    }

    /// The plugin in `<workspace>/target/release`, else `<workspace>/target/debug`.
    pub fn find_in_workspace(workspace: &Path) -> Result<PathBuf, HostError> {
        let candidates = [
            workspace.join("target/release").join(PLUGIN_FILE_NAME),
            workspace.join("target/debug").join(PLUGIN_FILE_NAME),
        ];
        candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
            HostError::Load(format!(
                "{PLUGIN_FILE_NAME} not found in {} or {}; run `cargo build --release` first",
                candidates[0].display(),
                candidates[1].display()
            ))
        })
    }

    /// Names of the dynamic symbols the .so defines (`nm -D --defined-only`).
    pub fn dynamic_symbols(path: &Path) -> Result<Vec<String>, HostError> {
        nm_symbols(path, "--defined-only")
    }

    /// Names of the dynamic symbols the .so needs from the process
    /// (`nm -D --undefined-only`), without version suffixes.
    pub fn undefined_symbols(path: &Path) -> Result<Vec<String>, HostError> {
        nm_symbols(path, "--undefined-only")
    }
}

fn nm_symbols(path: &Path, filter: &str) -> Result<Vec<String>, HostError> {
    let out = Command::new("nm")
        .arg("-D")
        .arg(filter)
        .arg(path)
        .output()
        .map_err(|e| HostError::Host(format!("running nm: {e}")))?;
    if !out.status.success() {
        return Err(HostError::Host(format!(
            "nm -D {filter} {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect())
}

impl Drop for PluginLibrary {
    fn drop(&mut self) {
        // SAFETY: handle came from dlopen and is closed exactly once here.
        unsafe { libc::dlclose(self.handle) };
    }
}
