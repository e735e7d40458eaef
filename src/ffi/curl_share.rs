//! A libcurl share object: the DNS cache and the TLS session cache, shared
//! by every easy handle of the engine, so a channel's first connection
//! skips the name lookup and resumes a TLS session another handle already
//! negotiated (an abbreviated handshake instead of a full one).
//!
//! The connection cache is deliberately NOT shared: libcurl documents for
//! `CURL_LOCK_DATA_CONNECT` that sharing connections between concurrent
//! threads is not supported, and our channels run their transfers at once
//! on their own threads. Warm connections travel instead inside whole
//! transports (see `tts::prewarm`).
//!
//! curl-rust has no share API, so this wraps `curl_sys` directly.

use std::ffi::{c_int, c_void, CStr};

use curl::easy::{Easy2, Handler};
use curl_sys::{
    curl_lock_access, curl_lock_data, CURLSHcode, CURL, CURLSH, CURLSHE_OK, CURLSHOPT_LOCKFUNC, CURLSHOPT_SHARE,
    CURLSHOPT_UNLOCKFUNC, CURLSHOPT_USERDATA, CURL_LOCK_DATA_DNS, CURL_LOCK_DATA_SHARE, CURL_LOCK_DATA_SSL_SESSION,
};
use parking_lot::lock_api::RawMutex as _;
use parking_lot::RawMutex;

/// One mutex per kind of shared data, as libcurl asks: the share's own
/// bookkeeping, DNS, TLS sessions, and one for any other kind (libcurl
/// only asks for the kinds it shares, but a spare slot costs nothing and
/// keeps the index total).
struct Locks {
    slots: [RawMutex; 4],
}

impl Locks {
    fn slot(&self, data: curl_lock_data) -> &RawMutex {
        let i = match data {
            CURL_LOCK_DATA_SHARE => 0,
            CURL_LOCK_DATA_DNS => 1,
            CURL_LOCK_DATA_SSL_SESSION => 2,
            _ => 3,
        };
        &self.slots[i]
    }
}

// These two are called by libcurl from whichever thread is running a
// transfer. They cannot panic, so nothing can unwind into C: the match
// above is total with constant indexes into a fixed array, and
// parking_lot's raw lock and unlock do not panic. That is why they do not
// go through the panic guard (which logs, and a lock callback must not).
extern "C" fn lock_cb(_easy: *mut CURL, data: curl_lock_data, _access: curl_lock_access, userptr: *mut c_void) {
    // SAFETY: userptr is the `Locks` boxed in the `Share` that registered
    // this callback; the box lives until curl_share_cleanup succeeded,
    // after which libcurl calls no callback of this share.
    let locks = unsafe { &*(userptr as *const Locks) };
    locks.slot(data).lock();
}

extern "C" fn unlock_cb(_easy: *mut CURL, data: curl_lock_data, userptr: *mut c_void) {
    // SAFETY: as in lock_cb; libcurl pairs every unlock with the lock it
    // took on the same thread for the same kind, so the mutex is held.
    unsafe {
        let locks = &*(userptr as *const Locks);
        locks.slot(data).unlock();
    }
}

/// The engine's share object. Every easy handle attached to it keeps an
/// `Arc` of it, so it is cleaned up only after the last of them is gone.
pub struct Share {
    raw: *mut CURLSH,
    locks: Box<Locks>,
}

// SAFETY: the share handle is only used through libcurl calls, which take
// the lock callbacks above around every access to the shared data; the
// handle itself is set up once in `new` and freed once in `drop`.
unsafe impl Send for Share {}
// SAFETY: as above; `attach` only hands the pointer to libcurl.
unsafe impl Sync for Share {}

fn share_error(code: CURLSHcode) -> String {
    // SAFETY: curl_share_strerror returns a static NUL-terminated string
    // for any code.
    let text = unsafe { CStr::from_ptr(curl_sys::curl_share_strerror(code)) };
    text.to_string_lossy().into_owned()
}

impl Share {
    /// A share of DNS and TLS sessions. Needs curl_global_init first
    /// (`curl::init`).
    pub fn new() -> Result<Share, String> {
        // SAFETY: plain constructor; a null result is handled.
        let raw = unsafe { curl_sys::curl_share_init() };
        if raw.is_null() {
            return Err("curl_share_init failed".to_owned());
        }
        let share = Share { raw, locks: Box::new(Locks { slots: [RawMutex::INIT; 4] }) };
        let userptr = std::ptr::addr_of!(*share.locks) as *mut c_void;
        type LockFn = extern "C" fn(*mut CURL, curl_lock_data, curl_lock_access, *mut c_void);
        type UnlockFn = extern "C" fn(*mut CURL, curl_lock_data, *mut c_void);
        // SAFETY: raw is a fresh share handle no easy handle uses yet. Each
        // option takes the argument type libcurl documents for it: a
        // function pointer for LOCKFUNC/UNLOCKFUNC, a pointer for USERDATA,
        // an int (a curl_lock_data) for SHARE.
        let codes = unsafe {
            [
                curl_sys::curl_share_setopt(raw, CURLSHOPT_LOCKFUNC, lock_cb as LockFn),
                curl_sys::curl_share_setopt(raw, CURLSHOPT_UNLOCKFUNC, unlock_cb as UnlockFn),
                curl_sys::curl_share_setopt(raw, CURLSHOPT_USERDATA, userptr),
                curl_sys::curl_share_setopt(raw, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS as c_int),
                curl_sys::curl_share_setopt(raw, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION as c_int),
            ]
        };
        if let Some(&bad) = codes.iter().find(|&&c| c != CURLSHE_OK) {
            // Dropping `share` cleans the handle up (no easy handle uses it).
            return Err(format!("curl_share_setopt: {}", share_error(bad)));
        }
        Ok(share)
    }

    /// Makes `easy` use the shared caches. The caller keeps this share
    /// alive for as long as `easy` lives (an `Arc` beside it).
    pub fn attach<H: Handler>(&self, easy: &Easy2<H>) -> Result<(), curl::Error> {
        // SAFETY: easy.raw() is a live easy handle we own and that is not
        // in a transfer (it is being set up); raw is a live share handle
        // that outlives it (the caller's Arc).
        let code = unsafe { curl_sys::curl_easy_setopt(easy.raw(), curl_sys::CURLOPT_SHARE, self.raw) };
        if code == curl_sys::CURLE_OK {
            Ok(())
        } else {
            Err(curl::Error::new(code))
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        // SAFETY: raw is our share handle; libcurl refuses (IN_USE) while an
        // easy handle still uses it, and then we must not free the locks.
        let code = unsafe { curl_sys::curl_share_cleanup(self.raw) };
        if code != CURLSHE_OK {
            log::error!("curl share still in use at cleanup ({}); leaving it", share_error(code));
            let locks = std::mem::replace(&mut self.locks, Box::new(Locks { slots: [RawMutex::INIT; 4] }));
            std::mem::forget(locks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curl::easy::Easy2;

    struct Nothing;
    impl Handler for Nothing {}

    #[test]
    fn handles_attach_and_the_share_cleans_up_after_them() {
        curl::init();
        let share = Share::new().expect("a share object");
        let easies: Vec<Easy2<Nothing>> = (0..3).map(|_| Easy2::new(Nothing)).collect();
        for easy in &easies {
            share.attach(easy).expect("CURLOPT_SHARE");
        }
        // Attaching and detaching take the share's own lock: the callbacks
        // ran and released it, or the next attach would deadlock.
        drop(easies);
        let again = Easy2::new(Nothing);
        share.attach(&again).expect("attach after the others left");
        drop(again);
        drop(share); // nothing uses it now: curl_share_cleanup frees it
    }

    #[test]
    fn every_kind_has_a_lock() {
        let locks = Locks { slots: [RawMutex::INIT; 4] };
        for kind in
            [CURL_LOCK_DATA_SHARE, CURL_LOCK_DATA_DNS, CURL_LOCK_DATA_SSL_SESSION, curl_sys::CURL_LOCK_DATA_CONNECT, 99]
        {
            let m = locks.slot(kind);
            m.lock();
            assert!(!m.try_lock(), "held");
            // SAFETY: locked just above on this thread.
            unsafe { m.unlock() };
        }
        assert!(!std::ptr::eq(locks.slot(CURL_LOCK_DATA_DNS), locks.slot(CURL_LOCK_DATA_SSL_SESSION)), "one per kind");
    }
}
