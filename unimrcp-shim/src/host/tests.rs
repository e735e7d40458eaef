//! Unit tests of the exported server functions, called directly (no plugin):
//! layouts, and the behaviour the plugin relies on.

use std::ffi::{c_char, c_int, c_uint, CStr};
use std::mem::{offset_of, size_of};

use super::apr::{table_create, table_set};
use super::context::with_current;
use super::engine::*;
use super::headers::{section_fields, str_of, GENERIC_COUNT, SECTION_SIZE};
use super::log::{apt_log, def_log_source, LogSource};
use super::message::*;
use super::pool::Pool;
use super::request::{build_request, ProsodyRate, Request};
use crate::sys;

fn cstr(p: *const c_char) -> String {
    assert!(!p.is_null());
    // SAFETY: test pointers are C strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn orphan_violations_containing(needle: &str) -> usize {
    with_current(|ctx| ctx.violations.lock().iter().filter(|v| v.contains(needle)).count())
}

#[test]
fn layouts_match_the_facts() {
    assert_eq!(size_of::<sys::mrcp_engine_t>(), 104);
    assert_eq!(offset_of!(sys::mrcp_engine_t, config), 64);
    assert_eq!(offset_of!(sys::mrcp_engine_t, pool), 88);
    assert_eq!(size_of::<sys::mrcp_engine_channel_t>(), 88);
    assert_eq!(offset_of!(sys::mrcp_engine_channel_t, id), 48);
    assert_eq!(offset_of!(sys::mrcp_engine_channel_t, attribs), 80);
    assert_eq!(size_of::<sys::mrcp_message_t>(), 184);
    assert_eq!(offset_of!(sys::mrcp_message_t, header), 88);
    assert_eq!(offset_of!(sys::mrcp_message_t, body), 152);
    assert_eq!(offset_of!(sys::mrcp_message_t, pool), 176);
    assert_eq!(size_of::<sys::mrcp_generic_header_t>(), 248);
    assert_eq!(offset_of!(sys::mrcp_generic_header_t, content_type), 64);
    assert_eq!(offset_of!(sys::mrcp_generic_header_t, content_length), 144);
    assert_eq!(size_of::<sys::mrcp_synth_header_t>(), 280);
    assert_eq!(offset_of!(sys::mrcp_synth_header_t, completion_cause), 48);
    assert_eq!(offset_of!(sys::mrcp_synth_header_t, speech_language), 144);
    assert_eq!(size_of::<sys::mpf_frame_t>(), 32);
    assert_eq!(size_of::<sys::mpf_audio_stream_t>(), 72);
    assert_eq!(size_of::<sys::mpf_codec_descriptor_t>(), 56);
    assert_eq!(size_of::<sys::mpf_codec_attribs_t>(), 32);
    assert_eq!(size_of::<sys::mpf_stream_capabilities_t>(), 24);
    assert_eq!(size_of::<sys::mrcp_engine_config_t>(), 16);
}

/// A SPEAK request as the host sends it, in `pool`.
fn speak_request(pool: &Pool) -> *mut sys::mrcp_message_t {
    let req = Request {
        voice_name: Some("Rachel".into()),
        speech_language: Some("en-US".into()),
        kill_on_barge_in: Some(true),
        prosody_rate: Some(ProsodyRate::Fast),
        vendor_specific: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
        logging_tag: Some("tag".into()),
        ..Request::speak("Hello world")
    };
    build_request(pool, "0123456789abcdef", 7, &req)
}

#[test]
fn requests_carry_fields_and_presence_slots() {
    let pool = Pool::new("req");
    let msg = speak_request(&pool);
    // SAFETY: msg was just built in a live pool.
    let m = unsafe { &*msg };
    assert_eq!(m.start_line.message_type, sys::MRCP_MESSAGE_TYPE_REQUEST);
    assert_eq!(m.start_line.request_id, 7);
    assert_eq!(m.start_line.method_id, sys::SYNTHESIZER_SPEAK as usize);
    // SAFETY: strings of the message.
    unsafe {
        assert_eq!(str_of(&m.start_line.method_name), "SPEAK");
        assert_eq!(str_of(&m.body), "Hello world");
        assert_eq!(str_of(&m.channel_id.session_id), "0123456789abcdef");
        assert_eq!(str_of(&m.channel_id.resource_name), "speechsynth");
        let g = &*m.header.generic_header_accessor.data.cast::<sys::mrcp_generic_header_t>();
        assert_eq!(str_of(&g.content_type), "text/plain");
        assert_eq!(g.content_length, 11);
        let s = &*m.header.resource_header_accessor.data.cast::<sys::mrcp_synth_header_t>();
        assert_eq!(str_of(&s.voice_param.name), "Rachel");
        assert_eq!(s.kill_on_barge_in, 1);
        assert_eq!(s.completion_cause, sys::SYNTHESIZER_COMPLETION_CAUSE_UNKNOWN);
        assert_eq!(s.prosody_param.rate.type_, sys::PROSODY_RATE_TYPE_LABEL);
        assert_eq!(s.prosody_param.rate.value.label, sys::PROSODY_RATE_FAST);
        let arr = m.header.header_section.arr;
        assert_eq!(m.header.header_section.arr_size, SECTION_SIZE);
        assert!(!(*arr.add(sys::GENERIC_HEADER_CONTENT_TYPE as usize)).is_null());
        assert!(!(*arr.add(GENERIC_COUNT + sys::SYNTHESIZER_HEADER_SPEECH_LANGUAGE as usize)).is_null());
        assert!((*arr.add(GENERIC_COUNT + sys::SYNTHESIZER_HEADER_COMPLETION_CAUSE as usize)).is_null());
        let fields = section_fields(&m.header.header_section);
        let text: Vec<String> = fields.iter().map(|(_, n, v)| format!("{n}: {v}")).collect();
        assert_eq!(
            text,
            [
                "Content-Type: text/plain",
                "Content-Length: 11",
                "Logging-Tag: tag",
                "Vendor-Specific-Parameters: a=1;b=2",
                "Kill-On-Barge-In: true",
                "Voice-Name: Rachel",
                "Prosody-Rate: fast",
                "Speech-Language: en-US",
            ]
        );
    }
}

#[test]
fn response_copies_the_request() {
    let req_pool = Pool::new("req");
    let resp_pool = Pool::new("resp");
    let req = speak_request(&req_pool);
    // SAFETY: req is a live request; resp_pool is live.
    let resp = unsafe { mrcp_response_create(req, resp_pool.as_ptr()) };
    assert!(!resp.is_null());
    // SAFETY: resp was just created.
    let r = unsafe { &*resp };
    assert_eq!(r.start_line.message_type, sys::MRCP_MESSAGE_TYPE_RESPONSE);
    assert_eq!(r.start_line.status_code, sys::MRCP_STATUS_CODE_SUCCESS);
    assert_eq!(r.start_line.request_state, sys::MRCP_REQUEST_STATE_COMPLETE);
    assert_eq!(r.start_line.request_id, 7);
    assert_eq!(r.start_line.version, sys::MRCP_VERSION_2);
    assert_eq!(r.start_line.method_id, sys::SYNTHESIZER_SPEAK as usize);
    assert_eq!(r.pool, resp_pool.as_ptr());
    // SAFETY: strings of the message.
    unsafe {
        assert_eq!(str_of(&r.start_line.method_name), "SPEAK");
        assert_eq!(str_of(&r.channel_id.session_id), "0123456789abcdef");
    }
    assert!(r.header.generic_header_accessor.data.is_null(), "headers start unallocated");
    assert!(r.header.resource_header_accessor.data.is_null());
    assert_eq!(r.header.header_section.arr_size, SECTION_SIZE);
}

#[test]
fn event_gets_name_and_header_text() {
    let pool = Pool::new("ev");
    let req = speak_request(&pool);
    // SAFETY: req is a live request in pool.
    let ev = unsafe { mrcp_event_create(req, sys::SYNTHESIZER_SPEAK_COMPLETE as usize, pool.as_ptr()) };
    assert!(!ev.is_null());
    // SAFETY: ev was just created; headers are prepared through our vtables
    // exactly as the inline helpers in UniMRCP do.
    unsafe {
        let e = &mut *ev;
        assert_eq!(e.start_line.message_type, sys::MRCP_MESSAGE_TYPE_EVENT);
        assert_eq!(str_of(&e.start_line.method_name), "SPEAK-COMPLETE");
        assert_eq!(e.start_line.method_id, sys::SYNTHESIZER_SPEAK_COMPLETE as usize);
        assert_eq!(e.start_line.request_id, 7);

        // property_add before prepare fails (and is reported).
        assert_eq!(mrcp_resource_header_property_add(ev, sys::SYNTHESIZER_HEADER_COMPLETION_CAUSE as usize), 0);

        let acc = &mut e.header.resource_header_accessor;
        let s = (*acc.vtable).allocate.unwrap()(acc, e.pool).cast::<sys::mrcp_synth_header_t>();
        assert_eq!((*s).completion_cause, sys::SYNTHESIZER_COMPLETION_CAUSE_UNKNOWN);
        assert_eq!((*s).voice_param.gender, sys::VOICE_GENDER_UNKNOWN);
        (*s).completion_cause = sys::SYNTHESIZER_COMPLETION_CAUSE_ERROR;
        assert_eq!(mrcp_resource_header_property_add(ev, sys::SYNTHESIZER_HEADER_COMPLETION_CAUSE as usize), 1);
        (*s).completion_reason = pool.apt_str("upstream 401");
        assert_eq!(mrcp_resource_header_property_add(ev, sys::SYNTHESIZER_HEADER_COMPLETION_REASON as usize), 1);

        let acc = &mut e.header.generic_header_accessor;
        let g = (*acc.vtable).allocate.unwrap()(acc, e.pool).cast::<sys::mrcp_generic_header_t>();
        (*g).active_request_id_list.ids[0] = 1;
        (*g).active_request_id_list.ids[1] = 2;
        (*g).active_request_id_list.count = 2;
        assert_eq!(mrcp_generic_header_property_add(ev, sys::GENERIC_HEADER_ACTIVE_REQUEST_ID_LIST as usize), 1);
        // Adding again replaces the field.
        (*s).completion_cause = sys::SYNTHESIZER_COMPLETION_CAUSE_NORMAL;
        assert_eq!(mrcp_resource_header_property_add(ev, sys::SYNTHESIZER_HEADER_COMPLETION_CAUSE as usize), 1);
        e.start_line.request_state = sys::MRCP_REQUEST_STATE_COMPLETE;

        let arr = e.header.header_section.arr;
        assert!(!(*arr.add(GENERIC_COUNT + 3)).is_null());
        assert!(!(*arr.add(0)).is_null());

        let rec = copy_out(ev, "t".into(), std::time::Instant::now());
        assert_eq!(rec.completion_cause, Some(0));
        assert_eq!(rec.completion_reason.as_deref(), Some("upstream 401"));
        assert_eq!(rec.active_request_ids, Some(vec![1, 2]));
        assert_eq!(rec.header("Completion-Cause"), Some("000 normal"));
        assert_eq!(rec.header("Active-Request-Id-List"), Some("1,2"));
        assert_eq!(rec.method_name, "SPEAK-COMPLETE");

        // The ring holds each field once (the replaced one was unlinked).
        let sentinel = (&e.header.header_section as *const sys::apt_header_section_t).cast::<sys::apt_header_field_t>();
        let mut n = 0;
        let mut f = e.header.header_section.ring.next;
        while !std::ptr::eq(f, sentinel) {
            n += 1;
            f = (*f).link.next;
            assert!(n < 10);
        }
        assert_eq!(n, 3);
    }
    assert!(orphan_violations_containing("before the header was prepared") >= 1);
}

#[test]
fn param_get_is_null_safe() {
    let pool = Pool::new("engine");
    static VT: sys::mrcp_engine_method_vtable_t =
        sys::mrcp_engine_method_vtable_t { destroy: None, open: None, close: None, create_channel: None };
    // SAFETY: all arguments are valid; the engine lives in pool.
    unsafe {
        let engine = mrcp_engine_create(0, std::ptr::null_mut(), &VT, pool.as_ptr());
        assert!(!engine.is_null());
        assert_eq!((*engine).pool, pool.as_ptr());
        assert!(mrcp_engine_param_get(std::ptr::null(), c"api_key".as_ptr()).is_null());
        assert!(mrcp_engine_param_get(engine, c"api_key".as_ptr()).is_null(), "no config");
        (*engine).config =
            pool.alloc_value(sys::mrcp_engine_config_t { max_channel_count: 0, params: std::ptr::null_mut() });
        assert!(mrcp_engine_param_get(engine, c"api_key".as_ptr()).is_null(), "no params");
        let table = table_create(&pool);
        table_set(&pool, table, "api_key", "secret");
        (*(*engine).config).params = table;
        assert_eq!(cstr(mrcp_engine_param_get(engine, c"API_KEY".as_ptr())), "secret");
        assert!(mrcp_engine_param_get(engine, c"voice_id".as_ptr()).is_null());
    }
}

unsafe extern "C" fn fake_read(_s: *mut sys::mpf_audio_stream_t, _f: *mut sys::mpf_frame_t) -> sys::apt_bool_t {
    1
}

#[test]
fn termination_needs_read_frame_and_exposes_the_codec() {
    let pool = Pool::new("term");
    // SAFETY: valid arguments; everything lives in pool.
    unsafe {
        let caps = mpf_stream_capabilities_create(sys::STREAM_DIRECTION_RECEIVE, pool.as_ptr());
        assert_eq!((*caps).direction, sys::STREAM_DIRECTION_RECEIVE);
        let arr = (*caps).codecs.attrib_arr;
        assert_eq!((*arr).elt_size as usize, size_of::<sys::mpf_codec_attribs_t>());
        assert_eq!((*arr).nelts, 0);
        let a = super::apr::apr_array_push(arr).cast::<sys::mpf_codec_attribs_t>();
        (*a).name = pool.apt_str("LPCM");
        (*a).sample_rates = (sys::MPF_SAMPLE_RATE_8000 | sys::MPF_SAMPLE_RATE_16000) as i32;

        let no_read = sys::mpf_audio_stream_vtable_t::default();
        assert!(mrcp_engine_audio_termination_create(std::ptr::null_mut(), &no_read, caps, pool.as_ptr()).is_null());

        let vt = sys::mpf_audio_stream_vtable_t { read_frame: Some(fake_read), ..Default::default() };
        let obj = 0x1234usize as *mut std::ffi::c_void;
        let term = mrcp_engine_audio_termination_create(obj, &vt, caps, pool.as_ptr());
        assert!(!term.is_null());
        let stream = stream_of(term).expect("our termination");
        assert_eq!((*stream).obj, obj);
        assert_eq!((*stream).direction, sys::STREAM_DIRECTION_RECEIVE);
        assert!(std::ptr::eq((*stream).capabilities, caps));

        static CH_VT: sys::mrcp_engine_channel_method_vtable_t =
            sys::mrcp_engine_channel_method_vtable_t { destroy: None, open: None, close: None, process_request: None };
        static EN_VT: sys::mrcp_engine_method_vtable_t =
            sys::mrcp_engine_method_vtable_t { destroy: None, open: None, close: None, create_channel: None };
        let engine = mrcp_engine_create(0, std::ptr::null_mut(), &EN_VT, pool.as_ptr());
        let ch = mrcp_engine_channel_create(engine, &CH_VT, obj, term, pool.as_ptr());
        assert!(!ch.is_null());
        assert_eq!((*ch).engine, engine);
        assert_eq!((*ch).method_obj, obj);
        assert!(mrcp_engine_source_stream_codec_get(ch).is_null(), "no codec before negotiation");
        let d = pool.alloc_value(sys::mpf_codec_descriptor_t { sampling_rate: 16000, ..Default::default() });
        (*stream).rx_descriptor = d;
        assert_eq!((*mrcp_engine_source_stream_codec_get(ch)).sampling_rate, 16000);
        assert!(mrcp_engine_source_stream_codec_get(std::ptr::null()).is_null());
    }
}

type VariadicLog = unsafe extern "C" fn(*const LogSource, *const c_char, c_int, c_uint, *const c_char, ...) -> c_int;

#[test]
fn apt_log_reads_the_variadic_string() {
    // Call apt_log the way C does: through a variadic prototype.
    // SAFETY: on x86_64 SysV the variadic call passes the sixth argument
    // where our fixed-parameter definition reads it (see apt_log).
    let log: VariadicLog = unsafe { std::mem::transmute(apt_log as *const ()) };
    let marker = format!("variadic log line {:?}", std::thread::current().id());
    let text = std::ffi::CString::new(marker.clone()).unwrap();
    // SAFETY: valid C strings and the server's default source.
    let rc =
        unsafe { log(&def_log_source, c"file.rs".as_ptr(), 12, sys::APT_PRIO_INFO, c"%s".as_ptr(), text.as_ptr()) };
    assert_eq!(rc, 1);
    // No Server runs in these unit tests, so the line is in the orphan log.
    let lines = super::context::orphan_logs();
    let line = lines.iter().find(|l| l.text == marker).expect("logged");
    assert_eq!(line.source, "default");
    assert_eq!(line.priority, sys::APT_PRIO_INFO);
    assert_eq!(line.file, "file.rs");
    assert_eq!(line.line, 12);
}
