//! Threads of the host: a raw-pointer wrapper to move plugin objects into
//! them, the "MRCP Server" task queue, and joining with a time limit.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

/// A plugin object pointer moved to another host thread. The plugin ABI
/// itself says which thread may use what; the host follows that.
pub(crate) struct SendPtr<T>(*mut T);

impl<T> SendPtr<T> {
    pub fn new(p: *mut T) -> Self {
        SendPtr(p)
    }

    /// The pointer. (A method, so closures capture the whole Send wrapper
    /// rather than the raw field.)
    pub fn get(&self) -> *mut T {
        self.0
    }
}

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: see the type's comment: only an address crosses threads; who
// dereferences it where is governed by the plugin ABI's thread rules.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

/// A job for the "MRCP Server" thread.
pub(crate) enum Task {
    Run(Box<dyn FnOnce() + Send>),
    Stop,
}

/// A named thread whose end can be awaited with a time limit: it holds the
/// sending half of `done` and drops it when it returns.
pub(crate) struct WorkerThread {
    name: String,
    handle: Option<JoinHandle<()>>,
    done: Receiver<()>,
}

impl WorkerThread {
    pub fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<WorkerThread> {
        let (done_tx, done) = bounded::<()>(0);
        let handle = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            let _done = done_tx;
            body();
        })?;
        Ok(WorkerThread { name: name.to_string(), handle: Some(handle), done })
    }

    /// Waits up to `timeout` for the thread to end, then joins it. Returns
    /// false (leaving the thread detached) if it is still running.
    pub fn join_timeout(&mut self, timeout: Duration) -> bool {
        let Some(handle) = self.handle.take() else {
            return true;
        };
        match self.done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                let _ = handle.join();
                true
            }
            Err(RecvTimeoutError::Timeout) => {
                eprintln!("[unimrcp-shim] thread {:?} did not stop within {timeout:?}; leaving it", self.name);
                false
            }
        }
    }
}

/// The "MRCP Server" thread: runs tasks in order until told to stop.
pub(crate) fn spawn_mrcp_server() -> std::io::Result<(Sender<Task>, WorkerThread)> {
    let (tx, rx) = unbounded::<Task>();
    let thread = WorkerThread::spawn("MRCP Server", move || {
        while let Ok(task) = rx.recv() {
            match task {
                Task::Run(f) => f(),
                Task::Stop => break,
            }
        }
    })?;
    Ok((tx, thread))
}

/// Runs `f` on the thread behind `tasks` and waits up to `timeout` for its
/// result; None if it did not finish in time (or the thread is gone).
pub(crate) fn run_on<R: Send + 'static>(
    tasks: &Sender<Task>,
    timeout: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    let (tx, rx) = bounded::<R>(1);
    tasks
        .send(Task::Run(Box::new(move || {
            let _ = tx.send(f());
        })))
        .ok()?;
    rx.recv_timeout(timeout).ok()
}

/// Queues `f` on the thread behind `tasks` without waiting.
pub(crate) fn post(tasks: &Sender<Task>, f: impl FnOnce() + Send + 'static) -> bool {
    tasks.send(Task::Run(Box::new(f))).is_ok()
}
