//! The "MPF Scheduler" thread: the media clock. Every tick (10 ms of media)
//! it calls read_frame on every attached stream, as UniMRCP's media engine
//! does through the bridge; streams are opened (open_rx) and closed
//! (close_rx) on this thread too.
//!
//! A test can watch every read_frame call from inside that thread through a
//! [`ReadFrameProbe`] (tests/realtime.rs counts the allocations made there).

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::context::violation;
use super::mapped::MappedVec;
use super::record::{
    FrameEntry, FrameLog, FRAME_ALL_ZERO, FRAME_AUDIO, FRAME_BAD_BUFFER, FRAME_EVENT, FRAME_READ_FAILED,
    FRAME_UNWRITTEN,
};
use super::worker::{SendPtr, WorkerThread};
use crate::sys;

/// How the media clock advances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaClock {
    /// A tick every 10 ms on absolute deadlines (no drift), like the real server.
    RealTime,
    /// A tick every given interval: faster (or slower) than real time.
    Every(Duration),
    /// Only `Server::tick()` advances the clock.
    Manual,
}

/// What the host fills a frame buffer with before read_frame, so a frame
/// flagged AUDIO but never written is recognisable.
pub const FILL_PATTERN: u8 = 0xA5;

/// Two plain functions the "MPF Scheduler" thread calls on its own stack
/// immediately around every read_frame call of every server in the process:
/// `enter` just before the call, `exit` just after it, with nothing of the
/// host's own in between (the host prepares the frame before `enter` and
/// records it after `exit`, so its allocations stay outside the window).
/// Both run on the media thread, in the middle of a tick: they must be
/// quick and must not block.
///
/// For audits of what the plugin does inside read_frame on that thread,
/// e.g. a thread-local flag that an interposed `malloc` checks. Unset (the
/// default) it costs one atomic load per read_frame.
#[derive(Debug)]
pub struct ReadFrameProbe {
    pub enter: fn(),
    pub exit: fn(),
}

static READ_FRAME_PROBE: AtomicPtr<ReadFrameProbe> = AtomicPtr::new(std::ptr::null_mut());

/// Installs `probe` for every read_frame call from now on, process-wide
/// (None removes it). A call in progress keeps the probe it started with,
/// so `enter` and `exit` always come in pairs from the same probe.
pub fn set_read_frame_probe(probe: Option<&'static ReadFrameProbe>) {
    let ptr = probe.map_or(std::ptr::null_mut(), |p| (p as *const ReadFrameProbe).cast_mut());
    READ_FRAME_PROBE.store(ptr, Ordering::Release);
}

fn read_frame_probe() -> Option<&'static ReadFrameProbe> {
    // SAFETY: only null or a `&'static ReadFrameProbe` is ever stored.
    unsafe { READ_FRAME_PROBE.load(Ordering::Acquire).as_ref() }
}

/// Audio and frame flags of one channel, written by the media thread.
pub(crate) struct ChannelMedia {
    pub epoch: Instant,
    pub frame_bytes: usize,
    pub log: Mutex<MediaLog>,
    /// Held by the media thread for a whole tick (server-wide). Readers take
    /// it first, so an event the plugin sent from inside read_frame (e.g.
    /// SPEAK-COMPLETE) is never observed before that frame's audio.
    tick_lock: Arc<Mutex<()>>,
}

/// In pages of their own (see `MappedVec`): they grow all the channel long
/// and go all at once when it is dropped.
#[derive(Default)]
pub(crate) struct MediaLog {
    pub audio: MappedVec<u8>,
    pub frames: MappedVec<FrameEntry>,
    reported_bad_buffer: bool,
}

impl ChannelMedia {
    pub fn new(epoch: Instant, frame_bytes: usize, tick_lock: Arc<Mutex<()>>) -> ChannelMedia {
        ChannelMedia { epoch, frame_bytes, log: Mutex::new(MediaLog::default()), tick_lock }
    }

    /// Runs `f` on the log once no tick is in progress (waiting at most 1 s,
    /// in case read_frame blocks).
    pub fn read<R>(&self, f: impl FnOnce(&MediaLog) -> R) -> R {
        let _tick = self.tick_lock.try_lock_for(Duration::from_secs(1));
        f(&self.log.lock())
    }

    pub fn frame_log(&self) -> FrameLog {
        let frames = self.read(|log| log.frames.to_vec());
        FrameLog { epoch: self.epoch, frame_bytes: self.frame_bytes, frames }
    }
}

pub(crate) enum MediaCmd {
    /// open_rx, then read_frame every tick; replies open_rx's result.
    Attach {
        stream: SendPtr<sys::mpf_audio_stream_t>,
        media: Arc<ChannelMedia>,
        reply: Sender<bool>,
    },
    /// Stops reading, then close_rx; replies whether the stream was attached.
    Detach {
        stream: SendPtr<sys::mpf_audio_stream_t>,
        reply: Sender<bool>,
    },
    /// One tick now; replies the tick number.
    Tick {
        reply: Sender<u64>,
    },
    Stop,
}

/// Counters the media thread shares with the server.
#[derive(Default)]
pub(crate) struct MediaStats {
    pub ticks: AtomicU64,
    /// Ticks that started more than one period late.
    pub late_ticks: AtomicU64,
    /// Duration of every read_frame call (until `forget_closed_channels`).
    pub read_nanos: Mutex<MappedVec<u64>>,
}

struct Slot {
    stream: *mut sys::mpf_audio_stream_t,
    media: Arc<ChannelMedia>,
    buffer: Vec<u8>,
}

pub(crate) fn spawn_scheduler(
    clock: MediaClock,
    epoch: Instant,
    stats: Arc<MediaStats>,
    tick_lock: Arc<Mutex<()>>,
) -> std::io::Result<(Sender<MediaCmd>, WorkerThread)> {
    let (tx, rx) = unbounded::<MediaCmd>();
    let thread = WorkerThread::spawn("MPF Scheduler", move || {
        Scheduler { slots: Vec::new(), stats, epoch, times: Vec::with_capacity(64), tick_lock }.run(clock, rx);
    })?;
    Ok((tx, thread))
}

struct Scheduler {
    slots: Vec<Slot>,
    stats: Arc<MediaStats>,
    epoch: Instant,
    times: Vec<u64>,
    tick_lock: Arc<Mutex<()>>,
}

impl Scheduler {
    fn run(mut self, clock: MediaClock, rx: Receiver<MediaCmd>) {
        let period = match clock {
            MediaClock::RealTime => Some(Duration::from_millis(10)),
            MediaClock::Every(d) => Some(d),
            MediaClock::Manual => None,
        };
        let mut next = Instant::now() + period.unwrap_or_default();
        loop {
            let cmd = match period {
                None => match rx.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => break,
                },
                Some(p) => match rx.recv_deadline(next) {
                    Ok(cmd) => cmd,
                    Err(RecvTimeoutError::Timeout) => {
                        let now = Instant::now();
                        if now > next + p {
                            self.stats.late_ticks.fetch_add(1, Ordering::Relaxed);
                        }
                        self.tick(Some(next));
                        next += p;
                        // After a long stall (debugger, overloaded machine)
                        // start afresh rather than firing a burst of ticks.
                        if now > next + Duration::from_millis(500) {
                            next = now + p;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            match cmd {
                MediaCmd::Attach { stream, media, reply } => {
                    let _ = reply.send(self.attach(stream.get(), media));
                }
                MediaCmd::Detach { stream, reply } => {
                    let _ = reply.send(self.detach(stream.get()));
                }
                MediaCmd::Tick { reply } => {
                    let n = self.tick(None);
                    let _ = reply.send(n);
                }
                MediaCmd::Stop => break,
            }
        }
        if !self.slots.is_empty() {
            eprintln!("[unimrcp-shim] media clock stopped with {} stream(s) still attached", self.slots.len());
        }
    }

    fn attach(&mut self, stream: *mut sys::mpf_audio_stream_t, media: Arc<ChannelMedia>) -> bool {
        // SAFETY: the server checked the stream is ours and set its rx
        // descriptor; open_rx runs on this thread as in UniMRCP, with a NULL
        // codec for the linear (LPCM) bridge.
        let ok = unsafe {
            match (*(*stream).vtable).open_rx {
                Some(open_rx) => open_rx(stream, std::ptr::null_mut()) != 0,
                None => true,
            }
        };
        if ok {
            let buffer = vec![FILL_PATTERN; media.frame_bytes];
            self.slots.push(Slot { stream, media, buffer });
        }
        ok
    }

    fn detach(&mut self, stream: *mut sys::mpf_audio_stream_t) -> bool {
        let Some(i) = self.slots.iter().position(|s| s.stream == stream) else {
            return false;
        };
        self.slots.remove(i);
        // SAFETY: the stream was attached, so its vtable is valid; close_rx
        // runs on this thread as in UniMRCP.
        unsafe {
            if let Some(close_rx) = (*(*stream).vtable).close_rx {
                close_rx(stream);
            }
        }
        true
    }

    /// One media tick: read_frame for every stream, recorded. `due` is the
    /// clock's deadline for it (None: a manual tick, due now).
    fn tick(&mut self, due: Option<Instant>) -> u64 {
        let tick_lock = self.tick_lock.clone();
        let _tick = tick_lock.lock();
        let tick = self.stats.ticks.fetch_add(1, Ordering::Relaxed);
        let at_nanos = self.epoch.elapsed().as_nanos() as u64;
        let due_nanos = due.map_or(at_nanos, |d| d.saturating_duration_since(self.epoch).as_nanos() as u64);
        self.times.clear();
        for slot in &mut self.slots {
            let size = slot.buffer.len();
            slot.buffer.fill(FILL_PATTERN);
            let buf_ptr = slot.buffer.as_mut_ptr();
            let mut frame = sys::mpf_frame_t {
                type_: sys::MEDIA_FRAME_TYPE_NONE as i32,
                marker: 0,
                codec_frame: sys::mpf_codec_frame_t { buffer: buf_ptr.cast(), size },
                event_frame: sys::mpf_named_event_frame_t::default(),
            };
            // SAFETY: an attached stream with read_frame (checked at
            // termination creation).
            let read_frame = unsafe { (*(*slot.stream).vtable).read_frame.expect("source stream has read_frame") };
            let probe = read_frame_probe();
            let started = Instant::now();
            if let Some(probe) = probe {
                (probe.enter)();
            }
            // SAFETY: the stream is attached; the frame and its buffer are
            // ours and live across the call.
            let ok = unsafe { read_frame(slot.stream, &mut frame) } != 0;
            if let Some(probe) = probe {
                (probe.exit)();
            }
            self.times.push(started.elapsed().as_nanos() as u64);

            let mut flags = 0u8;
            if !ok {
                flags |= FRAME_READ_FAILED;
            }
            if frame.type_ & sys::MEDIA_FRAME_TYPE_EVENT as i32 != 0 {
                flags |= FRAME_EVENT;
            }
            let mut log = slot.media.log.lock();
            if frame.codec_frame.buffer != buf_ptr.cast() || frame.codec_frame.size != size {
                flags |= FRAME_BAD_BUFFER;
                if !log.reported_bad_buffer {
                    log.reported_bad_buffer = true;
                    violation(format!(
                        "read_frame changed codec_frame (buffer {:p} size {} instead of {:p} size {size}); the bridge owns the buffer",
                        frame.codec_frame.buffer, frame.codec_frame.size, buf_ptr
                    ));
                }
            } else if frame.type_ & sys::MEDIA_FRAME_TYPE_AUDIO as i32 != 0 {
                flags |= FRAME_AUDIO;
                if slot.buffer.iter().all(|&b| b == 0) {
                    flags |= FRAME_ALL_ZERO;
                } else if slot.buffer.iter().all(|&b| b == FILL_PATTERN) {
                    flags |= FRAME_UNWRITTEN;
                }
                log.audio.extend_from_slice(&slot.buffer);
            }
            log.frames.push(FrameEntry { tick, at_nanos, due_nanos, flags });
        }
        if !self.times.is_empty() {
            self.stats.read_nanos.lock().extend_from_slice(&self.times);
        }
        tick
    }
}
