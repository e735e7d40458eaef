//! The media thread's contract, measured: `read_frame` allocates nothing
//! (and frees nothing) while 100 channels speak at 16 kHz on the real-time
//! clock, through the paths a frame takes: audio, the jitter reserve, the
//! last frame, a writer waiting for space, speech markers, PAUSE/RESUME,
//! STOP, and underruns when the paced upstream falls behind.
//!
//! How allocations are seen: the plugin is a cdylib with its own copy of
//! std, so a `#[global_allocator]` here would not see its allocations; both
//! end up in the C allocator, though. So this binary, and only this one,
//! defines `malloc` and its siblings itself, forwarding to glibc's public
//! `__libc_*` entry points. Test binaries are linked with `--export-dynamic`
//! (build.rs) and the executable comes first in the global symbol scope, so
//! the dlopened plugin's `malloc` calls land here (as do libc's own, which
//! glibc routes through the PLT for interposition). The host's
//! `ReadFrameProbe` sets a thread-local flag exactly around each read_frame
//! call on "MPF Scheduler"; calls made while it is set are counted.
//!
//! This binary's own Rust allocations (the test host is Rust code in this
//! executable) go through a `#[global_allocator]` that calls glibc directly
//! and counts separately. The two counters let the positive controls prove
//! both halves of the harness: a `Vec` made inside the window shows up in
//! the host's counter, and a panic injected into the plugin's read_frame
//! (whose payload the plugin's own std allocates) shows up in the C one.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use unimrcp_shim::host::{set_read_frame_probe, Channel, Kind, MediaClock, ReadFrameProbe, Request, FRAME_AUDIO};
use unimrcp_shim::upstream::Behavior;

// ---------------------------------------------------------------------------
// The counting allocators
// ---------------------------------------------------------------------------

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    fn __libc_valloc(size: usize) -> *mut c_void;
    fn __libc_pvalloc(size: usize) -> *mut c_void;
}

thread_local! {
    /// Set while this thread is inside a probed read_frame. `const`
    /// initialised and without a destructor: reading it is a plain TLS
    /// access that can never call malloc (nor fail during thread exit).
    static IN_READ_FRAME: Cell<bool> = const { Cell::new(false) };
}

/// One kind of call, counted only inside the window.
struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    #[inline(always)]
    fn hit(&self) {
        if IN_READ_FRAME.with(Cell::get) {
            self.0.fetch_add(1, Relaxed);
            if TRACE.load(Relaxed) {
                trace();
            }
        }
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// While set, an allocator call inside read_frame writes its stack to
/// stderr (straight to fd 2, past the test harness), so a failure of the
/// audit names its culprit.
static TRACE: AtomicBool = AtomicBool::new(false);

extern "C" {
    fn backtrace(buffer: *mut *mut c_void, size: c_int) -> c_int;
    fn backtrace_symbols_fd(buffer: *const *mut c_void, size: c_int, fd: c_int);
}

/// The calling thread's stack, to stderr. Neither call allocates once
/// `backtrace` has been called before (its first call loads libgcc_s,
/// which does): see `warm_trace`.
fn trace() {
    const HEAD: &[u8] = b"read_frame called the allocator here:\n";
    let mut frames = [std::ptr::null_mut(); 48];
    // SAFETY: `frames` holds 48 entries; fd 2 is stderr.
    unsafe {
        let n = backtrace(frames.as_mut_ptr(), 48);
        libc::write(2, HEAD.as_ptr().cast(), HEAD.len());
        backtrace_symbols_fd(frames.as_ptr(), n, 2);
    }
}

fn warm_trace() {
    let mut frames = [std::ptr::null_mut(); 2];
    // SAFETY: `frames` holds 2 entries.
    unsafe { backtrace(frames.as_mut_ptr(), 2) };
}

/// Through the C symbols: the plugin's std, libc, any C code.
static C_ALLOCS: Counter = Counter::new();
static C_REALLOCS: Counter = Counter::new();
static C_FREES: Counter = Counter::new();
/// Through this binary's global allocator: the test host and this file.
static HOST_ALLOCS: Counter = Counter::new();
static HOST_REALLOCS: Counter = Counter::new();
static HOST_FREES: Counter = Counter::new();

// The C allocator, interposed. None of these allocates, panics or touches
// anything but an atomic and the thread-local flag.

#[no_mangle]
extern "C" fn malloc(size: usize) -> *mut c_void {
    C_ALLOCS.hit();
    // SAFETY: glibc's malloc under its public alias.
    unsafe { __libc_malloc(size) }
}

#[no_mangle]
extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    C_ALLOCS.hit();
    // SAFETY: as malloc.
    unsafe { __libc_calloc(n, size) }
}

#[no_mangle]
extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    C_REALLOCS.hit();
    // SAFETY: `p` is null or came from this allocator (every allocation in
    // the process goes through these functions to glibc).
    unsafe { __libc_realloc(p, size) }
}

#[no_mangle]
extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(bytes) => realloc(p, bytes),
        None => {
            // SAFETY: errno of the calling thread.
            unsafe { *libc::__errno_location() = libc::ENOMEM };
            std::ptr::null_mut()
        }
    }
}

#[no_mangle]
extern "C" fn free(p: *mut c_void) {
    if !p.is_null() {
        C_FREES.hit();
    }
    // SAFETY: as realloc; free(NULL) is a no-op in glibc too.
    unsafe { __libc_free(p) }
}

#[no_mangle]
extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    C_ALLOCS.hit();
    // SAFETY: as malloc.
    unsafe { __libc_memalign(align, size) }
}

#[no_mangle]
extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    C_ALLOCS.hit();
    // SAFETY: as malloc.
    unsafe { __libc_memalign(align, size) }
}

#[no_mangle]
unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % std::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    C_ALLOCS.hit();
    // SAFETY: as malloc.
    let p = unsafe { __libc_memalign(align, size) };
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid out pointer (posix_memalign's contract).
    unsafe { *out = p };
    0
}

#[no_mangle]
extern "C" fn valloc(size: usize) -> *mut c_void {
    C_ALLOCS.hit();
    // SAFETY: as malloc.
    unsafe { __libc_valloc(size) }
}

#[no_mangle]
extern "C" fn pvalloc(size: usize) -> *mut c_void {
    C_ALLOCS.hit();
    // SAFETY: as malloc.
    unsafe { __libc_pvalloc(size) }
}

/// This binary's Rust allocations, straight to glibc (as std's `System`
/// does, minus the detour through the interposed symbols).
struct HostAlloc;

/// malloc's guaranteed alignment on x86_64 / aarch64 glibc.
const MIN_ALIGN: usize = 16;

unsafe impl GlobalAlloc for HostAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HOST_ALLOCS.hit();
        // SAFETY: plain glibc calls; memalign takes any power-of-two align.
        unsafe {
            if layout.align() <= MIN_ALIGN && layout.align() <= layout.size() {
                __libc_malloc(layout.size()).cast()
            } else {
                __libc_memalign(layout.align(), layout.size()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.align() <= layout.size() {
            HOST_ALLOCS.hit();
            // SAFETY: as alloc.
            unsafe { __libc_calloc(layout.size(), 1).cast() }
        } else {
            // SAFETY: forwarded contract; the new block has layout.size() bytes.
            unsafe {
                let p = self.alloc(layout);
                if !p.is_null() {
                    std::ptr::write_bytes(p, 0, layout.size());
                }
                p
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        HOST_FREES.hit();
        // SAFETY: `ptr` came from alloc/realloc above, i.e. from glibc.
        unsafe { __libc_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.align() <= new_size {
            HOST_REALLOCS.hit();
            // SAFETY: `ptr` came from glibc with an alignment malloc gives.
            unsafe { __libc_realloc(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: GlobalAlloc's contract for realloc; copy what both hold.
            unsafe {
                let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
                if !new.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                new
            }
        }
    }
}

#[global_allocator]
static GLOBAL: HostAlloc = HostAlloc;

// ---------------------------------------------------------------------------
// The probe and what it counted
// ---------------------------------------------------------------------------

/// read_frame calls made with a probe of this file installed.
static CALLS: AtomicU64 = AtomicU64::new(0);

fn enter() {
    CALLS.fetch_add(1, Relaxed);
    IN_READ_FRAME.with(|f| f.set(true));
}

fn exit() {
    IN_READ_FRAME.with(|f| f.set(false));
}

/// Counts what read_frame does.
static AUDIT: ReadFrameProbe = ReadFrameProbe { enter, exit };

/// Positive control: as AUDIT, plus one allocation and one free of our own
/// inside the window on every call.
static AUDIT_WITH_A_VEC: ReadFrameProbe = ReadFrameProbe { enter: enter_and_allocate, exit };

fn enter_and_allocate() {
    enter();
    let v: Vec<u8> = Vec::with_capacity(64);
    drop(std::hint::black_box(v));
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    calls: u64,
    c_allocs: u64,
    c_reallocs: u64,
    c_frees: u64,
    host_allocs: u64,
    host_reallocs: u64,
    host_frees: u64,
}

impl Counts {
    fn now() -> Counts {
        Counts {
            calls: CALLS.load(Relaxed),
            c_allocs: C_ALLOCS.get(),
            c_reallocs: C_REALLOCS.get(),
            c_frees: C_FREES.get(),
            host_allocs: HOST_ALLOCS.get(),
            host_reallocs: HOST_REALLOCS.get(),
            host_frees: HOST_FREES.get(),
        }
    }

    fn since(self, before: Counts) -> Counts {
        Counts {
            calls: self.calls - before.calls,
            c_allocs: self.c_allocs - before.c_allocs,
            c_reallocs: self.c_reallocs - before.c_reallocs,
            c_frees: self.c_frees - before.c_frees,
            host_allocs: self.host_allocs - before.host_allocs,
            host_reallocs: self.host_reallocs - before.host_reallocs,
            host_frees: self.host_frees - before.host_frees,
        }
    }

    /// Every allocator call of any kind.
    fn allocator_calls(&self) -> u64 {
        self.c_allocs + self.c_reallocs + self.c_frees + self.host_allocs + self.host_reallocs + self.host_frees
    }
}

/// Counts of what happens inside read_frame while `probe` is installed and
/// `run` runs. Ends with a synchronous tick: the media thread has then left
/// every read_frame call that began under the probe.
fn audited(server: &unimrcp_shim::host::Server, probe: &'static ReadFrameProbe, run: impl FnOnce()) -> Counts {
    let before = Counts::now();
    set_read_frame_probe(Some(probe));
    run();
    set_read_frame_probe(None);
    server.tick();
    Counts::now().since(before)
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

const CHANNELS: usize = 100;
const RATE: u32 = 16000;
/// Audio per upstream request: a plain SPEAK is one request, the SSML one
/// is two (around its break) of MARKS_AUDIO_MS.
const AUDIO_MS: u32 = 2500;
const MARKS_AUDIO_MS: u32 = 1200;
/// Bytes of one second of audio at RATE.
const SECOND: usize = RATE as usize * 2;
/// What each channel does with its SPEAK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Plain text, the upstream as fast as the socket takes it: the buffer
    /// fills, the rest is spilled, and the worker waits for space to pump
    /// it back (want_space).
    Burst,
    /// Plain text, the upstream paced at real time: underruns likely.
    Paced,
    /// SSML with marks inside, after a break, and at the end.
    Marks,
    /// STOP after half a second of audio.
    Stop,
    /// PAUSE after half a second of audio, RESUME 30 ticks later.
    Pause,
}

const ROLES: [Role; 5] = [Role::Burst, Role::Paced, Role::Marks, Role::Stop, Role::Pause];

fn text(i: usize, role: Role) -> String {
    match role {
        Role::Paced => format!("Channel {i} is paced."),
        _ => format!("Channel {i} speaks."),
    }
}

const SPEECH_MARKER: usize = 0;

/// A guard against hangs only (the test asserts no timing): the whole
/// 100-channel scenario, normally 3-10 s, must end within it.
const HANG: Duration = Duration::from_secs(120);

// One test function: the probe and the counters are process-wide.
#[test]
fn read_frame_allocates_nothing_with_100_channels_speaking() {
    // --- The harness proves itself first (manual clock: nothing runs
    // between ticks). ---
    let rig = rig_with_clock(&[], MediaClock::Manual);
    let ch = rig.server.open_channel(RATE).unwrap();
    rig.server.tick_n(3);

    // An idle channel: nothing counted, and the call count is exact.
    let idle = audited(&rig.server, &AUDIT, || rig.server.tick_n(10));
    println!("idle channel, 10 ticks: {idle:?}");
    assert_eq!(idle.calls, 10, "one stream, 10 ticks");
    assert_eq!(idle.allocator_calls(), 0, "an idle read_frame allocated: {idle:?}");

    // Control 1: an allocation of ours inside the window is seen.
    let control = audited(&rig.server, &AUDIT_WITH_A_VEC, || rig.server.tick_n(10));
    println!("positive control (a Vec in the window), 10 ticks: {control:?}");
    assert_eq!(control.calls, 10);
    assert!(
        control.host_allocs >= control.calls && control.host_frees >= control.calls,
        "a Vec made inside the window was not counted: the probe or the counting allocator does not work: {control:?}"
    );

    // Control 2: an allocation by the plugin's own std inside read_frame is
    // seen, i.e. the dlopened plugin's malloc resolved to this executable.
    // A panic injected into read_frame allocates its payload there. (The
    // variable is set while no plugin code runs: manual clock, idle channel.)
    #[cfg(feature = "panic-injection")]
    {
        let panicked = audited(&rig.server, &AUDIT, || {
            std::env::set_var("ELEVENLABS_PANIC_IN", "read_frame");
            rig.server.tick();
            std::env::remove_var("ELEVENLABS_PANIC_IN");
        });
        println!("positive control (a panic inside the plugin's read_frame), 1 tick: {panicked:?}");
        assert_eq!(panicked.calls, 1);
        assert!(
            rig.server.logs_text().contains("panic in read_frame"),
            "no injected panic: was the plugin .so built without the panic-injection feature?"
        );
        assert!(
            panicked.c_allocs > 0 && panicked.c_frees > 0,
            "the plugin's allocations do not reach the interposed malloc (expected under valgrind, which \
             replaces malloc itself): {panicked:?}"
        );
    }
    #[cfg(not(feature = "panic-injection"))]
    println!("positive control for the plugin's own allocations skipped (needs --features panic-injection)");
    ch.close().unwrap();
    drop(rig);

    // --- 100 channels speaking on the real-time clock. ---
    // Timeouts far beyond anything a loaded machine causes: every SPEAK
    // must end normally.
    let rig = rig_with_clock(
        &[
            ("max_buffer_ms", "1000"),
            ("prebuffer_ms", "60"),
            ("first_byte_timeout_ms", "60000"),
            ("stall_timeout_ms", "60000"),
        ],
        MediaClock::RealTime,
    );
    rig.upstream.set_default(Behavior::default().with_audio_ms(AUDIO_MS));
    rig.upstream.when_text_contains("paced", Behavior::realtime().with_audio_ms(AUDIO_MS));
    rig.upstream.when_text_contains("says hello", Behavior::default().with_audio_ms(MARKS_AUDIO_MS));
    rig.upstream.when_text_contains("Then it ends", Behavior::default().with_audio_ms(MARKS_AUDIO_MS));
    let server = &rig.server;

    let mut record = Record::default();
    let started = Instant::now();
    warm_trace();
    TRACE.store(true, Relaxed);
    let counts = audited(server, &AUDIT, || record = speak_all(&rig));
    TRACE.store(false, Relaxed);
    let audio_frames: usize = record.frames_with_audio;
    println!(
        "{CHANNELS} channels at {RATE} Hz, {:.1} s: read_frame calls {}, with audio {audio_frames}, {} speech markers, \
         {} stopped, {} paused and resumed, {} late ticks; allocator calls inside read_frame: {counts:?}",
        started.elapsed().as_secs_f64(),
        counts.calls,
        record.markers,
        record.stopped,
        record.resumed,
        server.late_ticks(),
    );

    assert!(audio_frames > CHANNELS * 100, "too few audio frames ({audio_frames}) for the audit to mean anything");
    assert!(counts.calls as usize >= record.frames, "every read_frame ran under the probe");
    assert_eq!(
        (counts.c_allocs, counts.c_reallocs, counts.host_allocs, counts.host_reallocs),
        (0, 0, 0, 0),
        "read_frame allocated: {counts:?} (the stacks are on stderr above)"
    );
    assert_eq!((counts.c_frees, counts.host_frees), (0, 0), "read_frame freed: {counts:?}");
    assert_clean(server);
}

#[derive(Default)]
struct Record {
    /// read_frame calls the host logged, and those that returned audio.
    frames: usize,
    frames_with_audio: usize,
    markers: usize,
    stopped: usize,
    resumed: usize,
}

/// Opens the channels, has them speak, STOPs/PAUSEs some midway, waits for
/// every SPEAK to end and closes the channels.
fn speak_all(rig: &Rig) -> Record {
    let server = &rig.server;
    let channels: Vec<Channel> = (0..CHANNELS).map(|_| server.open_channel(RATE).unwrap()).collect();
    let roles: Vec<Role> = (0..CHANNELS).map(|i| ROLES[i % ROLES.len()]).collect();
    let speaks: Vec<u32> = channels
        .iter()
        .zip(&roles)
        .enumerate()
        .map(|(i, (ch, &role))| match role {
            Role::Marks => ch.send(Request::speak_ssml(&format!(
                r#"<speak>Channel {i} says hello, <mark name="a"/>and keeps talking.<break time="200ms"/><mark name="b"/>Then it ends.<mark name="end"/></speak>"#
            ))),
            _ => ch.speak(&text(i, role)),
        })
        .collect();

    // STOP and PAUSE/RESUME midway, once enough audio has played.
    let mut stops: Vec<Option<u32>> = vec![None; CHANNELS];
    let mut pauses: Vec<Option<(u32, u64)>> = vec![None; CHANNELS];
    let mut resumes: Vec<Option<u32>> = vec![None; CHANNELS];
    let deadline = Instant::now() + HANG;
    let left = || deadline.saturating_duration_since(Instant::now());
    loop {
        let mut pending = 0;
        for (i, ch) in channels.iter().enumerate() {
            match roles[i] {
                Role::Stop if stops[i].is_none() => {
                    pending += 1;
                    if ch.audio_len() >= SECOND / 2 {
                        stops[i] = Some(ch.stop());
                    }
                }
                Role::Pause if pauses[i].is_none() => {
                    pending += 1;
                    if ch.audio_len() >= SECOND / 2 {
                        pauses[i] = Some((ch.pause(), server.ticks()));
                    }
                }
                Role::Pause if resumes[i].is_none() => {
                    pending += 1;
                    if server.ticks() >= pauses[i].unwrap().1 + 30 {
                        resumes[i] = Some(ch.resume());
                    }
                }
                _ => {}
            }
        }
        if pending == 0 {
            break;
        }
        assert!(left() > Duration::ZERO, "channels never reached the point to STOP or PAUSE");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut record = Record::default();
    for (i, ch) in channels.iter().enumerate() {
        let id = speaks[i];
        if let Some(stop_id) = stops[i] {
            let stop = ch.wait_response(stop_id, left()).expect("STOP answered");
            assert_eq!(stop.status_code, 200, "channel {i}: {stop:#?}");
            // A SPEAK that ended just before the STOP is not listed.
            if stop.active_request_ids.as_deref() == Some(&[id][..]) {
                record.stopped += 1;
            } else {
                ch.wait_complete(id, left()).unwrap_or_else(|| panic!("channel {i}: no SPEAK-COMPLETE"));
            }
            continue;
        }
        if let Some((pause_id, _)) = pauses[i] {
            assert_eq!(ch.wait_response(pause_id, left()).expect("PAUSE answered").status_code, 200, "channel {i}");
            assert_eq!(ch.wait_response(resumes[i].unwrap(), left()).expect("RESUME answered").status_code, 200);
            record.resumed += 1;
        }
        let done = ch.wait_complete(id, left()).unwrap_or_else(|| panic!("channel {i}: no SPEAK-COMPLETE"));
        assert_eq!(done.completion_cause, Some(NORMAL), "channel {i}: {done:#?}");
        if roles[i] == Role::Marks {
            let markers = ch
                .messages()
                .iter()
                .filter(|m| m.kind == Kind::Event && m.request_id == id && m.method_id == SPEECH_MARKER)
                .count();
            assert_eq!(markers, 3, "channel {i}: every mark announced");
            record.markers += markers;
        }
        if matches!(roles[i], Role::Burst | Role::Paced) {
            let req = request_for(&rig.upstream, &text(i, roles[i]));
            assert!(ch.audio() == padded(&req.audio_sent, frame_bytes(RATE)), "channel {i}: exact audio");
        }
    }
    // A tick boundary, then the frames every channel saw.
    server.tick();
    for ch in &channels {
        let frames = ch.frames().frames;
        record.frames += frames.len();
        record.frames_with_audio += frames.iter().filter(|f| f.flags & FRAME_AUDIO != 0).count();
    }
    for ch in channels {
        ch.close().unwrap();
    }
    record
}
