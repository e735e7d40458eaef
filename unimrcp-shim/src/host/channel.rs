//! Channels: one synthesizer session each. Opening follows the real
//! server's order (create_channel → capabilities check → rx descriptor →
//! open_rx on the media thread → channel open → wait for the answer), as
//! does closing (close → wait for the answer → close_rx → destroy).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use parking_lot::{Condvar, Mutex};

use super::context::{thread_name, violation};
use super::engine::stream_of;
use super::error::HostError;
use super::headers::str_of;
use super::media::{ChannelMedia, MediaCmd};
use super::message::{copy_out, session_id_of};
use super::pool::Pool;
use super::record::{FrameLog, Kind, Lifecycle, LifecycleKind, Recorded};
use super::request::{build_request, Properties, Request};
use super::server::{ServerShared, ANSWER_TIMEOUT};
use super::worker::{post, run_on, SendPtr, Task};
use crate::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Opening,
    Open,
    Closing,
    Closed,
    /// The plugin never answered; the channel is left as it is (its memory
    /// stays allocated, since the plugin may still use it).
    Stuck,
}

pub(crate) struct ChannelState {
    phase: Phase,
    messages: Vec<Recorded>,
    lifecycle: Vec<Lifecycle>,
    /// Request id → (method id, method name, sent at).
    sent: HashMap<u32, (usize, String, Instant)>,
    responded: HashSet<u32>,
    completed: HashSet<u32>,
    /// Requests live until the channel is destroyed: the plugin creates its
    /// SPEAK-COMPLETE from the SPEAK request, possibly much later.
    request_pools: Vec<Pool>,
    session_pool: Option<Pool>,
    /// Header fields stored by SET-PARAMS and inherited by each SPEAK, as
    /// the real server's synthesizer state machine does (see `Properties`).
    properties: Properties,
}

pub(crate) struct ChannelShared {
    /// What its engine channel's event_obj points to.
    route: &'static Route,
    id: String,
    session_id: String,
    rate: u32,
    ch: SendPtr<sys::mrcp_engine_channel_t>,
    stream: SendPtr<sys::mpf_audio_stream_t>,
    engine: SendPtr<sys::mrcp_engine_t>,
    tasks: Sender<Task>,
    media_tx: Sender<MediaCmd>,
    media: Arc<ChannelMedia>,
    state: Mutex<ChannelState>,
    cv: Condvar,
    next_request_id: AtomicU32,
}

/// The channel's event vtable (what the inline `mrcp_engine_channel_*`
/// respond/send helpers call).
static CHANNEL_EVENTS: sys::mrcp_engine_channel_event_vtable_t = sys::mrcp_engine_channel_event_vtable_t {
    on_open: Some(channel_on_open),
    on_close: Some(channel_on_close),
    on_message: Some(channel_on_message),
};

/// What a channel's `event_obj` points to. Leaked on purpose, so a
/// respond/send call through a channel that is long gone still finds it and
/// is reported instead of touching freed memory; but small (a lock and a
/// pointer), and emptied when the channel is dropped, so the channel's own
/// memory goes (a leaked `Weak<ChannelShared>` would keep the whole
/// allocation, for every channel of a long run). A leaf lock, held only to
/// upgrade or empty it.
struct Route(Mutex<Weak<ChannelShared>>);

/// The channel behind an engine channel's event_obj (a leaked `Route`).
unsafe fn channel_router(ch: *mut sys::mrcp_engine_channel_t) -> Option<Arc<ChannelShared>> {
    if ch.is_null() {
        return None;
    }
    // SAFETY: ch is the plugin's channel, whose event_obj the host set to a
    // leaked Route.
    let route = unsafe { (*ch).event_obj }.cast::<Route>();
    if route.is_null() {
        return None;
    }
    // SAFETY: see above; the Route is never freed.
    let weak = unsafe { (*route).0.lock().clone() };
    weak.upgrade()
}

impl Drop for ChannelShared {
    fn drop(&mut self) {
        let weak = std::mem::take(&mut *self.route.0.lock());
        drop(weak);
    }
}

unsafe extern "C" fn channel_on_open(ch: *mut sys::mrcp_engine_channel_t, status: sys::apt_bool_t) -> sys::apt_bool_t {
    // SAFETY: called by the plugin with its channel.
    let Some(chan) = (unsafe { channel_router(ch) }) else {
        violation("mrcp_engine_channel_open_respond on an unknown or finished channel");
        return 0;
    };
    chan.lifecycle(LifecycleKind::OpenResponded(status != 0));
    let p = SendPtr::new(ch);
    post(&chan.tasks, move || {
        // SAFETY: the channel stays allocated until destroy, which is
        // queued on this same thread after this task.
        unsafe { (*p.get()).is_open = status };
    });
    1
}

unsafe extern "C" fn channel_on_close(ch: *mut sys::mrcp_engine_channel_t) -> sys::apt_bool_t {
    // SAFETY: called by the plugin with its channel.
    let Some(chan) = (unsafe { channel_router(ch) }) else {
        violation("mrcp_engine_channel_close_respond on an unknown or finished channel");
        return 0;
    };
    chan.lifecycle(LifecycleKind::CloseResponded);
    1
}

unsafe extern "C" fn channel_on_message(
    ch: *mut sys::mrcp_engine_channel_t,
    msg: *mut sys::mrcp_message_t,
) -> sys::apt_bool_t {
    let at = Instant::now();
    // SAFETY: called by the plugin with its channel.
    let Some(chan) = (unsafe { channel_router(ch) }) else {
        violation("mrcp_engine_channel_message_send on an unknown or finished channel");
        return 0;
    };
    if msg.is_null() {
        violation(format!("{}: mrcp_engine_channel_message_send(NULL)", chan.id));
        return 0;
    }
    // SAFETY: a message the plugin built with the host's functions.
    let (rec, session) = unsafe { (copy_out(msg, thread_name(), at), session_id_of(msg)) };
    chan.record_message(rec, &session);
    1
}

/// A 16-hex-digit session id, unique in the process.
fn new_session_id() -> String {
    static BASE: once_cell::sync::Lazy<u64> = once_cell::sync::Lazy::new(|| {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()).rotate_left(40)
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = BASE.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
    // splitmix64's finaliser: a bijection, so distinct inputs stay distinct,
    // but the ids look random like real session ids.
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("{:016x}", z ^ (z >> 31))
}

fn rate_mask(rate: u32) -> Option<i32> {
    match rate {
        8000 => Some(sys::MPF_SAMPLE_RATE_8000 as i32),
        16000 => Some(sys::MPF_SAMPLE_RATE_16000 as i32),
        32000 => Some(sys::MPF_SAMPLE_RATE_32000 as i32),
        48000 => Some(sys::MPF_SAMPLE_RATE_48000 as i32),
        _ => None,
    }
}

/// Whether the stream's capabilities offer LPCM at `mask` as a source.
///
/// # Safety
/// `stream` must be a stream made by `mrcp_engine_audio_termination_create`.
unsafe fn offers_lpcm(stream: *const sys::mpf_audio_stream_t, mask: i32) -> Result<(), String> {
    // SAFETY: per the function contract.
    let caps = unsafe { (*stream).capabilities };
    if caps.is_null() {
        return Err("the stream has no capabilities".into());
    }
    // SAFETY: non-NULL capabilities of the plugin.
    let caps = unsafe { &*caps };
    if caps.direction & sys::STREAM_DIRECTION_RECEIVE == 0 {
        return Err(format!("stream direction {} cannot act as a source (RECEIVE)", caps.direction));
    }
    let arr = caps.codecs.attrib_arr;
    if arr.is_null() {
        return Err("the capabilities have no codec list".into());
    }
    // SAFETY: attrib_arr is an array of mpf_codec_attribs_t.
    let attribs: &[sys::mpf_codec_attribs_t] = unsafe {
        let a = &*arr;
        if a.elt_size as usize != std::mem::size_of::<sys::mpf_codec_attribs_t>() {
            return Err(format!("codec list elements are {} bytes, not mpf_codec_attribs_t", a.elt_size));
        }
        if a.nelts <= 0 || a.elts.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(a.elts.cast(), a.nelts as usize)
        }
    };
    // SAFETY: codec names are apt_str_t set by the plugin.
    let offered: Vec<(String, i32)> = attribs.iter().map(|a| (unsafe { str_of(&a.name) }, a.sample_rates)).collect();
    if offered.iter().any(|(name, rates)| name.eq_ignore_ascii_case("LPCM") && rates & mask != 0) {
        Ok(())
    } else {
        Err(format!("no LPCM codec with sample-rate mask {mask:#x} among {offered:?}"))
    }
}

/// Opens a channel on `server` (see the module comment for the order).
pub(crate) fn open(server: &Arc<ServerShared>, rate: u32) -> Result<Channel, HostError> {
    let mask = rate_mask(rate).ok_or_else(|| HostError::Host(format!("unsupported sample rate {rate}")))?;
    let session_id = new_session_id();
    let id = format!("{session_id}@speechsynth");
    let session_pool = Pool::new(&format!("session {id}"));
    let engine = server.engine;
    let max = server.max_channel_count;

    // create_channel on MRCP Server, after the server's own channel limit
    // check; the channel counter is kept on that thread too.
    let pool_ptr = SendPtr::new(session_pool.as_ptr());
    let created = run_on(&server.tasks, ANSWER_TIMEOUT, move || {
        let e = engine.get();
        // SAFETY: the engine is open; create_channel runs on MRCP Server.
        unsafe {
            if max > 0 && (*e).cur_channel_count >= max {
                return Err(format!("max-channel-count {max} reached"));
            }
            let Some(create) = (*(*e).method_vtable).create_channel else {
                return Err("the engine has no create_channel".into());
            };
            let ch = create(e, pool_ptr.get());
            if ch.is_null() {
                return Err("create_channel returned NULL".into());
            }
            (*e).cur_channel_count += 1;
            Ok(SendPtr::new(ch))
        }
    });
    let ch = match created {
        None => {
            std::mem::forget(session_pool);
            return Err(HostError::Timeout("create_channel did not return".into()));
        }
        Some(Err(msg)) => return Err(HostError::Refused(msg)),
        Some(Ok(ch)) => ch,
    };

    // SAFETY: ch is the channel the plugin just returned.
    let raw = unsafe { &mut *ch.get() };
    if raw.engine != engine.get() {
        violation(format!("{id}: the channel's engine is not the engine that created it"));
    }
    // SAFETY: the termination pointer comes from the plugin.
    let stream = unsafe { stream_of(raw.termination) };
    let media = Arc::new(ChannelMedia::new(server.ctx.epoch, rate as usize / 100 * 2, server.tick_lock.clone()));
    let route: &'static Route = Box::leak(Box::new(Route(Mutex::new(Weak::new()))));
    let chan = Arc::new(ChannelShared {
        route,
        id: id.clone(),
        session_id: session_id.clone(),
        rate,
        ch,
        stream: SendPtr::new(stream.unwrap_or(std::ptr::null_mut())),
        engine,
        tasks: server.tasks.clone(),
        media_tx: server.media.clone(),
        media,
        state: Mutex::new(ChannelState {
            phase: Phase::Opening,
            messages: Vec::new(),
            lifecycle: Vec::new(),
            sent: HashMap::new(),
            responded: HashSet::new(),
            completed: HashSet::new(),
            request_pools: Vec::new(),
            session_pool: Some(session_pool),
            properties: Properties::default(),
        }),
        cv: Condvar::new(),
        next_request_id: AtomicU32::new(1),
    });
    *route.0.lock() = Arc::downgrade(&chan);
    let id_str = {
        let st = chan.state.lock();
        st.session_pool.as_ref().map(|p| p.apt_str(&id)).expect("session pool")
    };
    // What the server sets after create_channel; no other thread uses the
    // channel until it is opened below.
    raw.event_vtable = &CHANNEL_EVENTS;
    raw.event_obj = (route as *const Route).cast_mut().cast();
    raw.id = id_str;
    raw.mrcp_version = sys::MRCP_VERSION_2;
    raw.attribs = std::ptr::null_mut();
    if raw.method_vtable.is_null() {
        chan.fail_open(false);
        return Err(HostError::Refused(format!("{id}: the channel has no method vtable")));
    }
    let Some(stream) = stream else {
        chan.fail_open(false);
        return Err(HostError::Refused(format!(
            "{id}: the channel's termination was not made by mrcp_engine_audio_termination_create"
        )));
    };

    // What SDP negotiation checks: the plugin offers LPCM at this rate.
    // SAFETY: stream is ours (checked by stream_of).
    if let Err(why) = unsafe { offers_lpcm(stream, mask) } {
        chan.fail_open(false);
        return Err(HostError::Refused(format!("{id}: capabilities do not allow LPCM/{rate}: {why}")));
    }
    let descriptor = {
        let st = chan.state.lock();
        let pool = st.session_pool.as_ref().expect("session pool");
        pool.alloc_value(sys::mpf_codec_descriptor_t {
            payload_type: 96,
            name: pool.apt_str("LPCM"),
            sampling_rate: rate as u16,
            rtp_sampling_rate: rate as u16,
            channel_count: 1,
            frame_duration: sys::CODEC_FRAME_TIME_BASE as u16,
            format_params: std::ptr::null_mut(),
            match_formats: None,
            enabled: 1,
        })
    };
    // SAFETY: the stream is not attached to the media thread yet.
    unsafe { (*stream).rx_descriptor = descriptor };

    server.channels.lock().push(chan.clone());

    // open_rx on MPF Scheduler.
    let (tx, rx) = bounded(1);
    let attach = MediaCmd::Attach { stream: SendPtr::new(stream), media: chan.media.clone(), reply: tx };
    match chan.media_tx.send(attach).ok().and_then(|_| rx.recv_timeout(ANSWER_TIMEOUT).ok()) {
        Some(true) => {}
        Some(false) => {
            chan.fail_open(false);
            return Err(HostError::Refused(format!("{id}: open_rx returned FALSE")));
        }
        None => {
            chan.set_phase(Phase::Stuck);
            return Err(HostError::Timeout(format!("{id}: open_rx did not return")));
        }
    }

    // Channel open on MRCP Server; then wait for the answer.
    let returned = run_on(&chan.tasks, ANSWER_TIMEOUT, move || {
        // SAFETY: the channel is set up; open runs on MRCP Server.
        unsafe {
            let c = ch.get();
            match (*(*c).method_vtable).open {
                Some(open) => open(c) != 0,
                None => false,
            }
        }
    });
    match returned {
        None => {
            chan.set_phase(Phase::Stuck);
            return Err(HostError::Timeout(format!("{id}: channel open did not return")));
        }
        Some(false) => {
            chan.fail_open(true);
            return Err(HostError::Refused(format!("{id}: channel open returned FALSE")));
        }
        Some(true) => {}
    }
    let answer = chan.wait_lifecycle(ANSWER_TIMEOUT, |l| match l {
        LifecycleKind::OpenResponded(status) => Some(status),
        _ => None,
    });
    match answer {
        Some(true) => {
            chan.set_phase(Phase::Open);
            Ok(Channel { inner: chan })
        }
        Some(false) => {
            chan.fail_open(true);
            Err(HostError::Refused(format!("{id}: channel open answered FALSE")))
        }
        None => {
            chan.set_phase(Phase::Stuck);
            Err(HostError::Timeout(format!("{id}: no mrcp_engine_channel_open_respond within {ANSWER_TIMEOUT:?}")))
        }
    }
}

impl ChannelShared {
    fn set_phase(&self, phase: Phase) {
        self.state.lock().phase = phase;
        self.cv.notify_all();
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.lock().phase == Phase::Open
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().phase == Phase::Closed
    }

    pub(crate) fn is_stuck(&self) -> bool {
        self.state.lock().phase == Phase::Stuck
    }

    fn lifecycle(&self, what: LifecycleKind) {
        let entry = Lifecycle { at: Instant::now(), thread: thread_name(), what };
        {
            let mut st = self.state.lock();
            let dup = st.lifecycle.iter().any(|l| std::mem::discriminant(&l.what) == std::mem::discriminant(&what));
            if dup {
                violation(format!("{}: {what:?} answered twice", self.id));
            }
            if st.phase == Phase::Closed {
                violation(format!("{}: {what:?} after the channel was destroyed", self.id));
            }
            st.lifecycle.push(entry);
        }
        self.cv.notify_all();
    }

    fn wait_lifecycle<R>(&self, timeout: Duration, f: impl Fn(LifecycleKind) -> Option<R>) -> Option<R> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        loop {
            if let Some(r) = st.lifecycle.iter().find_map(|l| f(l.what)) {
                return Some(r);
            }
            if self.cv.wait_until(&mut st, deadline).timed_out() {
                return st.lifecycle.iter().find_map(|l| f(l.what));
            }
        }
    }

    fn record_message(&self, rec: Recorded, session: &str) {
        {
            let mut st = self.state.lock();
            let what = rec.summary();
            if st.phase == Phase::Closed {
                violation(format!("{}: {what} sent after the channel was destroyed", self.id));
            }
            if session != self.session_id {
                violation(format!("{}: {what} carries session id {session:?}", self.id));
            }
            match rec.kind {
                Kind::Response => {
                    if !st.sent.contains_key(&rec.request_id) {
                        violation(format!("{}: {what} answers a request that was never sent", self.id));
                    } else if !st.responded.insert(rec.request_id) {
                        violation(format!("{}: {what} is a second response to request {}", self.id, rec.request_id));
                    }
                }
                Kind::Event => {
                    match st.sent.get(&rec.request_id) {
                        Some((method, ..)) if *method == sys::SYNTHESIZER_SPEAK as usize => {}
                        _ => {
                            violation(format!("{}: {what} refers to request {}, not a SPEAK", self.id, rec.request_id))
                        }
                    }
                    if rec.method_id == sys::SYNTHESIZER_SPEAK_COMPLETE as usize && !st.completed.insert(rec.request_id)
                    {
                        violation(format!("{}: second SPEAK-COMPLETE for request {}", self.id, rec.request_id));
                    }
                }
                Kind::Other(t) => {
                    violation(format!("{}: message of type {t} is neither a response nor an event", self.id))
                }
            }
            st.messages.push(rec);
        }
        self.cv.notify_all();
    }

    /// Undoes a failed open: close_rx if attached, then destroy.
    fn fail_open(&self, attached: bool) {
        if attached {
            let _ = self.detach();
        }
        let _ = self.destroy();
    }

    fn detach(&self) -> Result<(), HostError> {
        let (tx, rx) = bounded(1);
        let cmd = MediaCmd::Detach { stream: self.stream, reply: tx };
        match self.media_tx.send(cmd).ok().and_then(|_| rx.recv_timeout(ANSWER_TIMEOUT).ok()) {
            Some(_) => Ok(()),
            None => {
                self.set_phase(Phase::Stuck);
                Err(HostError::Timeout(format!("{}: close_rx did not return", self.id)))
            }
        }
    }

    /// destroy on MRCP Server, then frees the session and request pools.
    fn destroy(&self) -> Result<(), HostError> {
        let (ch, engine) = (self.ch, self.engine);
        let done = run_on(&self.tasks, ANSWER_TIMEOUT, move || {
            // SAFETY: the channel is closed (or never opened) and detached
            // from the media thread; destroy runs on MRCP Server.
            unsafe {
                let c = ch.get();
                let vtable = (*c).method_vtable;
                if let Some(destroy) = vtable.as_ref().and_then(|v| v.destroy) {
                    destroy(c);
                }
                let e = engine.get();
                (*e).cur_channel_count = (*e).cur_channel_count.saturating_sub(1);
            }
        });
        if done.is_none() {
            self.set_phase(Phase::Stuck);
            return Err(HostError::Timeout(format!("{}: channel destroy did not return", self.id)));
        }
        let (requests, session) = {
            let mut st = self.state.lock();
            st.phase = Phase::Closed;
            (std::mem::take(&mut st.request_pools), st.session_pool.take())
        };
        self.cv.notify_all();
        drop(requests);
        drop(session);
        Ok(())
    }

    /// close → wait for close_respond → close_rx → destroy.
    pub(crate) fn close(&self) -> Result<(), HostError> {
        {
            let mut st = self.state.lock();
            match st.phase {
                Phase::Open => st.phase = Phase::Closing,
                Phase::Closed => return Ok(()),
                other => {
                    return Err(HostError::Host(format!("{}: cannot close a channel in state {other:?}", self.id)))
                }
            }
        }
        let ch = self.ch;
        let returned = run_on(&self.tasks, ANSWER_TIMEOUT, move || {
            // SAFETY: an open channel; close runs on MRCP Server.
            unsafe {
                let c = ch.get();
                match (*(*c).method_vtable).close {
                    Some(close) => close(c) != 0,
                    None => false,
                }
            }
        });
        if returned.is_none() {
            self.set_phase(Phase::Stuck);
            return Err(HostError::Timeout(format!("{}: channel close did not return", self.id)));
        }
        let answered = self.wait_lifecycle(ANSWER_TIMEOUT, |l| (l == LifecycleKind::CloseResponded).then_some(()));
        if answered.is_none() {
            self.set_phase(Phase::Stuck);
            return Err(HostError::Timeout(format!(
                "{}: no mrcp_engine_channel_close_respond within {ANSWER_TIMEOUT:?} (close returned {})",
                self.id,
                returned.unwrap_or(false)
            )));
        }
        self.detach()?;
        self.destroy()
    }
}

/// A channel of the server: send requests, read what the plugin sent back
/// and the audio it produced. Cheap to clone (all clones are one channel).
#[derive(Clone)]
pub struct Channel {
    inner: Arc<ChannelShared>,
}

impl Channel {
    /// "<16 hex>@speechsynth".
    pub fn id(&self) -> String {
        self.inner.id.clone()
    }

    pub fn sample_rate(&self) -> u32 {
        self.inner.rate
    }

    /// Sends a request (process_request on MRCP Server) without waiting;
    /// returns its request id. Request ids increase from 1 per channel.
    ///
    /// As in UniMRCP's server (mrcp_synth_state_machine.c), a SET-PARAMS's
    /// header fields are stored on the channel before it reaches the plugin,
    /// and a SPEAK inherits every stored field it does not carry itself
    /// (`mrcp_header_fields_inherit`), so the plugin sees them as the
    /// SPEAK's own headers. See `Properties` for the details.
    ///
    /// Panics if the channel is not open (a mistake in the test).
    pub fn send(&self, mut req: Request) -> u32 {
        let chan = &self.inner;
        let request_id = chan.next_request_id.fetch_add(1, Ordering::Relaxed);
        let pool = Pool::new(&format!("request {request_id} of {}", chan.id));
        let msg = {
            let mut st = chan.state.lock();
            assert!(st.phase == Phase::Open, "{}: send on a channel that is {:?}", chan.id, st.phase);
            // Under the lock: clones of a channel may send from several
            // threads, and each SPEAK must see whole SET-PARAMS.
            st.properties.apply(&mut req);
            let msg = SendPtr::new(build_request(&pool, &chan.session_id, request_id, &req));
            st.sent.insert(request_id, (req.method_id, req.method_name.clone(), Instant::now()));
            st.request_pools.push(pool);
            msg
        };
        let (ch, id, method) = (chan.ch, chan.id.clone(), req.method_name);
        post(&chan.tasks, move || {
            // SAFETY: the channel is open (destroy is queued after this task
            // if at all) and the request lives until destroy.
            let ok = unsafe {
                let c = ch.get();
                match (*(*c).method_vtable).process_request {
                    Some(process) => process(c, msg.get()) != 0,
                    None => false,
                }
            };
            if !ok {
                violation(format!("{id}: process_request returned FALSE for {method} {request_id}"));
            }
        });
        request_id
    }

    /// SPEAK with Content-Type text/plain.
    pub fn speak(&self, text: &str) -> u32 {
        self.send(Request::speak(text))
    }

    pub fn stop(&self) -> u32 {
        self.send(Request::stop())
    }

    pub fn barge_in(&self) -> u32 {
        self.send(Request::barge_in())
    }

    pub fn pause(&self) -> u32 {
        self.send(Request::pause())
    }

    pub fn resume(&self) -> u32 {
        self.send(Request::resume())
    }

    /// The internal STOP ("DEACTIVATE") the server makes when a session
    /// ends in the middle of a SPEAK.
    pub fn deactivate(&self) -> u32 {
        self.send(Request::deactivate())
    }

    /// When the request was sent.
    pub fn sent_at(&self, request_id: u32) -> Option<Instant> {
        self.inner.state.lock().sent.get(&request_id).map(|(_, _, at)| *at)
    }

    /// Every response and event the plugin sent on this channel, in order.
    pub fn messages(&self) -> Vec<Recorded> {
        self.inner.state.lock().messages.clone()
    }

    /// The plugin's open/close answers for this channel.
    pub fn lifecycle(&self) -> Vec<Lifecycle> {
        self.inner.state.lock().lifecycle.clone()
    }

    /// Waits up to `timeout` for a message matching `pred` (including ones
    /// already received).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Recorded) -> bool) -> Option<Recorded> {
        let deadline = Instant::now() + timeout;
        let chan = &self.inner;
        let mut st = chan.state.lock();
        let mut scanned = 0;
        loop {
            if let Some(found) = st.messages[scanned..].iter().find(|m| pred(m)) {
                return Some(found.clone());
            }
            scanned = st.messages.len();
            if chan.cv.wait_until(&mut st, deadline).timed_out() {
                return st.messages[scanned..].iter().find(|m| pred(m)).cloned();
            }
        }
    }

    /// The response to `request_id`.
    pub fn wait_response(&self, request_id: u32, timeout: Duration) -> Option<Recorded> {
        self.wait_for(timeout, |m| m.kind == Kind::Response && m.request_id == request_id)
    }

    /// The SPEAK-COMPLETE event of `request_id`.
    pub fn wait_complete(&self, request_id: u32, timeout: Duration) -> Option<Recorded> {
        self.wait_for(timeout, |m| {
            m.kind == Kind::Event
                && m.request_id == request_id
                && m.method_id == sys::SYNTHESIZER_SPEAK_COMPLETE as usize
        })
    }

    /// Every byte of every frame read_frame flagged AUDIO, concatenated.
    pub fn audio(&self) -> Vec<u8> {
        self.inner.media.read(|log| log.audio.to_vec())
    }

    /// Bytes of audio so far (cheaper than `audio().len()`).
    pub fn audio_len(&self) -> usize {
        self.inner.media.read(|log| log.audio.len())
    }

    /// Every read_frame of this channel: tick, time and flags.
    pub fn frames(&self) -> FrameLog {
        self.inner.media.frame_log()
    }

    pub fn is_open(&self) -> bool {
        self.inner.is_open()
    }

    /// The plugin's engine channel (for tests that inspect it directly).
    pub fn engine_channel(&self) -> *mut sys::mrcp_engine_channel_t {
        self.inner.ch.get()
    }

    /// Closes the channel: close on MRCP Server and wait (≤10 s) for
    /// close_respond, then close_rx on MPF Scheduler, then destroy on MRCP
    /// Server. Other clones of this channel become closed too.
    pub fn close(self) -> Result<(), HostError> {
        self.inner.close()
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("id", &self.inner.id).field("rate", &self.inner.rate).finish()
    }
}
