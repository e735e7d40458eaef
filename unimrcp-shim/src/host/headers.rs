//! MRCP header handling: the generic and synthesizer header accessors
//! (allocate + initialise, as the plugin reaches them through the inline
//! `mrcp_*_header_prepare` helpers), the header section (`arr[id]` presence
//! slots and the field ring) and the MRCP text of each field, written from
//! RFC 6787's header names and value syntax.

use std::ffi::c_void;
use std::ptr::addr_of_mut;

use super::context::violation;
use super::pool;
use crate::sys;

/// Slots in a message's header section: generic ids first, then the
/// synthesizer ids offset by GENERIC_HEADER_COUNT.
pub const GENERIC_COUNT: usize = sys::GENERIC_HEADER_COUNT as usize;
pub const SYNTH_COUNT: usize = sys::SYNTHESIZER_HEADER_COUNT as usize;
pub const SECTION_SIZE: usize = GENERIC_COUNT + SYNTH_COUNT;

pub const GENERIC_NAMES: [&str; GENERIC_COUNT] = [
    "Active-Request-Id-List",
    "Proxy-Sync-Id",
    "Accept-Charset",
    "Content-Type",
    "Content-ID",
    "Content-Base",
    "Content-Encoding",
    "Content-Location",
    "Content-Length",
    "Cache-Control",
    "Logging-Tag",
    "Vendor-Specific-Parameters",
    "Accept",
    "Fetch-Timeout",
    "Set-Cookie",
    "Set-Cookie2",
];

pub const SYNTH_NAMES: [&str; SYNTH_COUNT] = [
    "Jump-Size",
    "Kill-On-Barge-In",
    "Speaker-Profile",
    "Completion-Cause",
    "Completion-Reason",
    "Voice-Gender",
    "Voice-Age",
    "Voice-Variant",
    "Voice-Name",
    "Prosody-Volume",
    "Prosody-Rate",
    "Speech-Marker",
    "Speech-Language",
    "Fetch-Hint",
    "Audio-Fetch-Hint",
    "Failed-URI",
    "Failed-URI-Cause",
    "Speak-Restart",
    "Speak-Length",
    "Load-Lexicon",
    "Lexicon-Search-Order",
];

pub const COMPLETION_CAUSE_NAMES: [&str; 8] = [
    "normal",
    "barge-in",
    "parse-failure",
    "uri-failure",
    "error",
    "language-unsupported",
    "lexicon-load-failure",
    "cancelled",
];

const GENDER_NAMES: [&str; 3] = ["male", "female", "neutral"];
const VOLUME_LABELS: [&str; 7] = ["silent", "x-soft", "soft", "medium", "loud", "x-loud", "default"];
pub const RATE_LABELS: [&str; 6] = ["x-slow", "slow", "medium", "fast", "x-fast", "default"];
const SPEECH_UNITS: [&str; 4] = ["second", "word", "sentence", "paragraph"];

/// A header vtable in a static (it holds raw pointers, hence the wrapper).
pub struct StaticVtable(pub sys::mrcp_header_vtable_t);
// SAFETY: the vtable is immutable and its pointers are to functions/NULL.
unsafe impl Sync for StaticVtable {}

pub static GENERIC_VTABLE: StaticVtable = StaticVtable(sys::mrcp_header_vtable_t {
    allocate: Some(generic_allocate),
    destroy: None,
    parse_field: None,
    generate_field: None,
    duplicate_field: None,
    field_table: std::ptr::null(),
    field_count: GENERIC_COUNT,
});

pub static SYNTH_VTABLE: StaticVtable = StaticVtable(sys::mrcp_header_vtable_t {
    allocate: Some(synth_allocate),
    destroy: None,
    parse_field: None,
    generate_field: None,
    duplicate_field: None,
    field_table: std::ptr::null(),
    field_count: SYNTH_COUNT,
});

/// Allocates a zeroed header of `size` bytes from `pool` into the accessor.
unsafe fn allocate_into(
    accessor: *mut sys::mrcp_header_accessor_t,
    pool: *mut sys::apr_pool_t,
    size: usize,
) -> *mut u8 {
    if accessor.is_null() {
        violation("header allocate with a NULL accessor");
        return std::ptr::null_mut();
    }
    let Some(data) = pool::alloc_from_raw(pool, size, true) else {
        violation(format!("header allocate from {}: not a live pool", pool::name_of(pool)));
        return std::ptr::null_mut();
    };
    // SAFETY: accessor checked non-NULL; it is a message's accessor.
    unsafe { (*accessor).data = data.cast() };
    data
}

/// `vtable->allocate` of the generic header: every field empty/zero.
unsafe extern "C" fn generic_allocate(
    accessor: *mut sys::mrcp_header_accessor_t,
    pool: *mut sys::apr_pool_t,
) -> *mut c_void {
    // SAFETY: forwarded contract; a zeroed mrcp_generic_header_t is the
    // initialised state (empty strings, counts 0, no vendor params).
    unsafe { allocate_into(accessor, pool, std::mem::size_of::<sys::mrcp_generic_header_t>()) }.cast()
}

/// `vtable->allocate` of the synthesizer header, initialised as UniMRCP
/// does: enum-valued fields UNKNOWN, booleans FALSE, strings empty.
unsafe extern "C" fn synth_allocate(
    accessor: *mut sys::mrcp_header_accessor_t,
    pool: *mut sys::apr_pool_t,
) -> *mut c_void {
    // SAFETY: forwarded contract.
    let data = unsafe { allocate_into(accessor, pool, std::mem::size_of::<sys::mrcp_synth_header_t>()) };
    if data.is_null() {
        return std::ptr::null_mut();
    }
    let h = data.cast::<sys::mrcp_synth_header_t>();
    // SAFETY: h points to a fresh zeroed mrcp_synth_header_t.
    unsafe {
        (*h).jump_size.type_ = sys::SPEECH_LENGTH_TYPE_UNKNOWN;
        (*h).completion_cause = sys::SYNTHESIZER_COMPLETION_CAUSE_UNKNOWN;
        (*h).voice_param.gender = sys::VOICE_GENDER_UNKNOWN;
        (*h).prosody_param.volume.type_ = sys::PROSODY_VOLUME_TYPE_UNKNOWN;
        (*h).prosody_param.rate.type_ = sys::PROSODY_RATE_TYPE_UNKNOWN;
        (*h).speak_length.type_ = sys::SPEECH_LENGTH_TYPE_UNKNOWN;
    }
    data.cast()
}

/// Reads an apt_str_t (NULL buffer = empty).
///
/// # Safety
/// A non-NULL `buf` must point to `length` readable bytes.
pub unsafe fn str_of(s: &sys::apt_str_t) -> String {
    if s.buf.is_null() || s.length == 0 {
        return String::new();
    }
    // SAFETY: per the function contract.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(s.buf.cast::<u8>(), s.length) }).into_owned()
}

fn bool_text(b: sys::apt_bool_t) -> String {
    if b != 0 { "true" } else { "false" }.to_string()
}

unsafe fn speech_length_text(v: &sys::mrcp_speech_length_value_t) -> Option<String> {
    match v.type_ {
        // SAFETY: the type tag says which union member is valid.
        sys::SPEECH_LENGTH_TYPE_TEXT => Some(unsafe { str_of(&v.value.tag) }),
        sys::SPEECH_LENGTH_TYPE_NUMERIC_POSITIVE | sys::SPEECH_LENGTH_TYPE_NUMERIC_NEGATIVE => {
            // SAFETY: numeric member per the tag.
            let n = unsafe { v.value.numeric };
            let sign = if v.type_ == sys::SPEECH_LENGTH_TYPE_NUMERIC_POSITIVE { '+' } else { '-' };
            let unit = SPEECH_UNITS.get(n.unit as usize).copied().unwrap_or("?");
            Some(format!("{sign}{} {unit}", n.length))
        }
        _ => None,
    }
}

/// MRCP text of generic header field `id`.
///
/// # Safety
/// `h` must be an initialised generic header whose strings are valid.
pub unsafe fn generic_value(h: &sys::mrcp_generic_header_t, id: usize) -> Option<String> {
    // SAFETY (for every str_of below): fields of an initialised header.
    let text = unsafe {
        match id as u32 {
            sys::GENERIC_HEADER_ACTIVE_REQUEST_ID_LIST => {
                let list = &h.active_request_id_list;
                if list.count > list.ids.len() {
                    violation(format!("Active-Request-Id-List count {} > {}", list.count, list.ids.len()));
                }
                let ids: Vec<String> = list.ids.iter().take(list.count).map(u32::to_string).collect();
                ids.join(",")
            }
            sys::GENERIC_HEADER_PROXY_SYNC_ID => str_of(&h.proxy_sync_id),
            sys::GENERIC_HEADER_ACCEPT_CHARSET => str_of(&h.accept_charset),
            sys::GENERIC_HEADER_CONTENT_TYPE => str_of(&h.content_type),
            sys::GENERIC_HEADER_CONTENT_ID => str_of(&h.content_id),
            sys::GENERIC_HEADER_CONTENT_BASE => str_of(&h.content_base),
            sys::GENERIC_HEADER_CONTENT_ENCODING => str_of(&h.content_encoding),
            sys::GENERIC_HEADER_CONTENT_LOCATION => str_of(&h.content_location),
            sys::GENERIC_HEADER_CONTENT_LENGTH => h.content_length.to_string(),
            sys::GENERIC_HEADER_CACHE_CONTROL => str_of(&h.cache_control),
            sys::GENERIC_HEADER_LOGGING_TAG => str_of(&h.logging_tag),
            sys::GENERIC_HEADER_VENDOR_SPECIFIC_PARAMS => pairs_text(h.vendor_specific_params),
            sys::GENERIC_HEADER_ACCEPT => str_of(&h.accept),
            sys::GENERIC_HEADER_FETCH_TIMEOUT => h.fetch_timeout.to_string(),
            sys::GENERIC_HEADER_SET_COOKIE => str_of(&h.set_cookie),
            sys::GENERIC_HEADER_SET_COOKIE2 => str_of(&h.set_cookie2),
            _ => return None,
        }
    };
    Some(text)
}

/// "name=value;name=value" of an apt_pair_t array.
unsafe fn pairs_text(arr: *const sys::apt_pair_arr_t) -> String {
    if arr.is_null() {
        return String::new();
    }
    // SAFETY: a non-NULL vendor params pointer is an array of apt_pair_t.
    let a = unsafe { &*arr };
    if a.elts.is_null() || a.nelts <= 0 {
        return String::new();
    }
    // SAFETY: elts holds nelts pairs.
    let pairs = unsafe { std::slice::from_raw_parts(a.elts.cast::<sys::apt_pair_t>(), a.nelts as usize) };
    // SAFETY: pair strings are valid apt_str_t.
    let items: Vec<String> =
        pairs.iter().map(|p| unsafe { format!("{}={}", str_of(&p.name), str_of(&p.value)) }).collect();
    items.join(";")
}

/// MRCP text of synthesizer header field `id`.
///
/// # Safety
/// `h` must be an initialised synthesizer header whose strings are valid.
pub unsafe fn synth_value(h: &sys::mrcp_synth_header_t, id: usize) -> Option<String> {
    // SAFETY (for every union read and str_of below): the type tags say
    // which member is valid; strings of an initialised header are valid.
    let text = unsafe {
        match id as u32 {
            sys::SYNTHESIZER_HEADER_JUMP_SIZE => speech_length_text(&h.jump_size)?,
            sys::SYNTHESIZER_HEADER_KILL_ON_BARGE_IN => bool_text(h.kill_on_barge_in),
            sys::SYNTHESIZER_HEADER_SPEAKER_PROFILE => str_of(&h.speaker_profile),
            sys::SYNTHESIZER_HEADER_COMPLETION_CAUSE => {
                let cause = h.completion_cause;
                match COMPLETION_CAUSE_NAMES.get(cause as usize) {
                    Some(name) => format!("{cause:03} {name}"),
                    None => {
                        violation(format!("Completion-Cause {cause} added but it is not a valid cause"));
                        format!("{cause:03} unknown")
                    }
                }
            }
            sys::SYNTHESIZER_HEADER_COMPLETION_REASON => str_of(&h.completion_reason),
            sys::SYNTHESIZER_HEADER_VOICE_GENDER => GENDER_NAMES.get(h.voice_param.gender as usize)?.to_string(),
            sys::SYNTHESIZER_HEADER_VOICE_AGE => h.voice_param.age.to_string(),
            sys::SYNTHESIZER_HEADER_VOICE_VARIANT => h.voice_param.variant.to_string(),
            sys::SYNTHESIZER_HEADER_VOICE_NAME => str_of(&h.voice_param.name),
            sys::SYNTHESIZER_HEADER_PROSODY_VOLUME => {
                let v = &h.prosody_param.volume;
                match v.type_ {
                    sys::PROSODY_VOLUME_TYPE_LABEL => VOLUME_LABELS.get(v.value.label as usize)?.to_string(),
                    sys::PROSODY_VOLUME_TYPE_NUMERIC => format!("{:.2}", v.value.numeric),
                    sys::PROSODY_VOLUME_TYPE_RELATIVE_CHANGE => format!("{:.2}", v.value.relative),
                    _ => return None,
                }
            }
            sys::SYNTHESIZER_HEADER_PROSODY_RATE => {
                let r = &h.prosody_param.rate;
                match r.type_ {
                    sys::PROSODY_RATE_TYPE_LABEL => RATE_LABELS.get(r.value.label as usize)?.to_string(),
                    sys::PROSODY_RATE_TYPE_RELATIVE_CHANGE => format!("{:.2}", r.value.relative),
                    _ => return None,
                }
            }
            sys::SYNTHESIZER_HEADER_SPEECH_MARKER => str_of(&h.speech_marker),
            sys::SYNTHESIZER_HEADER_SPEECH_LANGUAGE => str_of(&h.speech_language),
            sys::SYNTHESIZER_HEADER_FETCH_HINT => str_of(&h.fetch_hint),
            sys::SYNTHESIZER_HEADER_AUDIO_FETCH_HINT => str_of(&h.audio_fetch_hint),
            sys::SYNTHESIZER_HEADER_FAILED_URI => str_of(&h.failed_uri),
            sys::SYNTHESIZER_HEADER_FAILED_URI_CAUSE => str_of(&h.failed_uri_cause),
            sys::SYNTHESIZER_HEADER_SPEAK_RESTART => bool_text(h.speak_restart),
            sys::SYNTHESIZER_HEADER_SPEAK_LENGTH => speech_length_text(&h.speak_length)?,
            sys::SYNTHESIZER_HEADER_LOAD_LEXICON => bool_text(h.load_lexicon),
            sys::SYNTHESIZER_HEADER_LEXICON_SEARCH_ORDER => str_of(&h.lexicon_search_order),
            _ => return None,
        }
    };
    Some(text)
}

/// Empties a header section and gives it SECTION_SIZE presence slots.
///
/// # Safety
/// `section` must be valid for writes; `pool` a live pool.
pub unsafe fn section_init(section: *mut sys::apt_header_section_t, pool: *mut sys::apr_pool_t) -> bool {
    let Some(arr) = pool::alloc_from_raw(pool, SECTION_SIZE * std::mem::size_of::<usize>(), true) else {
        return false;
    };
    // The ring is empty when both links point at its own head; the field's
    // link is its first member, so the head doubles as the sentinel element.
    let sentinel = section.cast::<sys::apt_header_field_t>();
    // SAFETY: per the function contract.
    unsafe {
        (*section).ring.next = sentinel;
        (*section).ring.prev = sentinel;
        (*section).arr = arr.cast();
        (*section).arr_size = SECTION_SIZE;
    }
    true
}

/// Adds (or replaces) the field with section id `id`: sets `arr[id]` and
/// appends it to the ring.
///
/// # Safety
/// `section` must be an initialised section of a message whose pool is `pool`.
pub unsafe fn section_set(
    section: *mut sys::apt_header_section_t,
    pool: *mut sys::apr_pool_t,
    id: usize,
    name: &str,
    value: &str,
) -> bool {
    // SAFETY: per the function contract.
    let s = unsafe { &mut *section };
    if s.arr.is_null() || id >= s.arr_size {
        return false;
    }
    let (Some(name_buf), Some(value_buf)) =
        (pool::dup_into_raw(pool, name.as_bytes()), pool::dup_into_raw(pool, value.as_bytes()))
    else {
        return false;
    };
    let field = sys::apt_header_field_t {
        // Linked into the ring below; the ring type is left unnamed
        // (real headers name it differently).
        link: Default::default(),
        name: sys::apt_str_t { buf: name_buf, length: name.len() },
        value: sys::apt_str_t { buf: value_buf, length: value.len() },
        id,
    };
    let Some(field) = pool::value_into_raw(pool, field) else {
        return false;
    };
    let sentinel = section.cast::<sys::apt_header_field_t>();
    // SAFETY: arr has arr_size slots; ring members are fields of this
    // message (or the sentinel, whose `link` is the ring head itself, so
    // only link fields are touched through it).
    unsafe {
        let slot = s.arr.add(id);
        let old = *slot;
        if !old.is_null() {
            let (prev, next) = ((*old).link.prev, (*old).link.next);
            *addr_of_mut!((*prev).link.next) = next;
            *addr_of_mut!((*next).link.prev) = prev;
        }
        let last = s.ring.prev;
        (*field).link.next = sentinel;
        (*field).link.prev = last;
        *addr_of_mut!((*last).link.next) = field;
        s.ring.prev = field;
        *slot = field;
    }
    true
}

/// The (name, value) of every present field, in id order.
///
/// # Safety
/// `section` must be a valid, initialised header section.
pub unsafe fn section_fields(section: &sys::apt_header_section_t) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    if section.arr.is_null() {
        return out;
    }
    for id in 0..section.arr_size {
        // SAFETY: arr has arr_size slots; present fields are valid.
        unsafe {
            let f = *section.arr.add(id);
            if !f.is_null() {
                out.push((id, str_of(&(*f).name), str_of(&(*f).value)));
            }
        }
    }
    out
}
