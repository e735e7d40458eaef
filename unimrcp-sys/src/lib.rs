//! Rust declarations of the part of the UniMRCP 1.8 plugin ABI that the
//! plugin (`unimrcp-elevenlabs`) and the test host (`unimrcp-shim`) use:
//! bindgen's output for the workspace's `include/unimrcp_elevenlabs_abi.h`,
//! from one run and one allow-list (build.rs). Nothing but generated code and its layout tests.
//!
//! # Which headers
//!
//! By default bindgen reads our own declarations in `unimrcp-shim/include/` (written from
//! UniMRCP's public API and the measured facts, not copied). With
//! `UNIMRCP_DIR` set it reads a real install's headers instead (APR's are
//! found through `APR_INCLUDE_DIR` or the usual install places), so the
//! plugin is built against exactly what the server it will be loaded into
//! was compiled with.
//!
//! The test host then sees the same declarations, and that is sound:
//!
//! * The host is a stand-in for libunimrcpserver. The real server is built
//!   from the real headers, so a host built from them plays the same role
//!   it plays with ours: it reads and writes the structures the plugin
//!   exchanges with it at the layouts the plugin was compiled with.
//! * What the host is for is checking the plugin's behaviour; that the
//!   plugin's layouts are the server's is checked here, not by comparing two
//!   bindgen runs: the `layout` tests below hold whatever declarations were
//!   used against the sizes, offsets and ids measured on a real UniMRCP
//!   1.8.0 x86_64 server (unimrcp-abi-facts.md §f, §g). With our headers they
//!   check our declarations; with `UNIMRCP_DIR` they check the install's.
//! * One set of Rust types means the plugin and the host cannot disagree
//!   on a layout by construction, in either mode.
//!
//! Code outside this crate names only what both header sets declare, so the
//! host needs no declarations of its own. The one name known to be ours
//! alone, `apt_header_ring_t` (real headers spell the header-field ring with
//! APR_RING_ENTRY/APR_RING_HEAD, under other struct names), is never named:
//! the host builds that ring through field access and `Default`. Likewise
//! `mpf_named_event_frame_t` (bit-fields in a real install, bytes in ours)
//! is only ever built with `Default`.
//!
//! This crate has no link directives. The functions it declares
//! (`apr_palloc`, `mrcp_engine_create`, ...) are left undefined in the
//! plugin's `.so` and resolved when it is loaded, from unimrcpserver or from
//! the test executable that exports the host's versions.
#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, unnecessary_transmutes, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/unimrcp_sys.rs"));

/// The declarations bindgen read against the sizes, offsets and ids
/// measured on a real UniMRCP 1.8.0 x86_64 build (unimrcp-abi-facts.md §f,
/// §g): our headers by default, a real install's with UNIMRCP_DIR.
#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod layout {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn scalar_and_small_types() {
        assert_eq!(size_of::<apt_bool_t>(), 4);
        assert_eq!(size_of::<apr_size_t>(), 8);
        assert_eq!(size_of::<apt_str_t>(), 16);
        assert_eq!(size_of::<mrcp_request_id>(), 4);
        assert_eq!(size_of::<mrcp_method_id>(), 8);
        assert_eq!(size_of::<mrcp_status_code_e>(), 4);
        assert_eq!(size_of::<mrcp_plugin_version_t>(), 16);
        assert_eq!(size_of::<mrcp_engine_config_t>(), 16);
    }

    #[test]
    fn engine() {
        assert_eq!(size_of::<mrcp_engine_t>(), 104);
        assert_eq!(offset_of!(mrcp_engine_t, id), 0);
        assert_eq!(offset_of!(mrcp_engine_t, resource_id), 8);
        assert_eq!(offset_of!(mrcp_engine_t, obj), 16);
        assert_eq!(offset_of!(mrcp_engine_t, method_vtable), 24);
        assert_eq!(offset_of!(mrcp_engine_t, event_vtable), 32);
        assert_eq!(offset_of!(mrcp_engine_t, event_obj), 40);
        assert_eq!(offset_of!(mrcp_engine_t, codec_manager), 48);
        assert_eq!(offset_of!(mrcp_engine_t, dir_layout), 56);
        assert_eq!(offset_of!(mrcp_engine_t, config), 64);
        assert_eq!(offset_of!(mrcp_engine_t, cur_channel_count), 72);
        assert_eq!(offset_of!(mrcp_engine_t, is_open), 80);
        assert_eq!(offset_of!(mrcp_engine_t, pool), 88);
        assert_eq!(offset_of!(mrcp_engine_t, create_state_machine), 96);
        assert_eq!(size_of::<mrcp_engine_method_vtable_t>(), 32);
    }

    #[test]
    fn channel() {
        assert_eq!(size_of::<mrcp_engine_channel_t>(), 88);
        assert_eq!(offset_of!(mrcp_engine_channel_t, method_vtable), 0);
        assert_eq!(offset_of!(mrcp_engine_channel_t, method_obj), 8);
        assert_eq!(offset_of!(mrcp_engine_channel_t, event_vtable), 16);
        assert_eq!(offset_of!(mrcp_engine_channel_t, event_obj), 24);
        assert_eq!(offset_of!(mrcp_engine_channel_t, termination), 32);
        assert_eq!(offset_of!(mrcp_engine_channel_t, engine), 40);
        assert_eq!(offset_of!(mrcp_engine_channel_t, id), 48);
        assert_eq!(offset_of!(mrcp_engine_channel_t, mrcp_version), 64);
        assert_eq!(offset_of!(mrcp_engine_channel_t, is_open), 68);
        assert_eq!(offset_of!(mrcp_engine_channel_t, pool), 72);
        assert_eq!(offset_of!(mrcp_engine_channel_t, attribs), 80);
        assert_eq!(size_of::<mrcp_engine_channel_method_vtable_t>(), 32);
    }

    #[test]
    fn message() {
        assert_eq!(size_of::<mrcp_message_t>(), 184);
        assert_eq!(size_of::<mrcp_start_line_t>(), 56);
        assert_eq!(offset_of!(mrcp_message_t, start_line), 0);
        assert_eq!(offset_of!(mrcp_start_line_t, message_type), 0);
        assert_eq!(offset_of!(mrcp_start_line_t, version), 4);
        assert_eq!(offset_of!(mrcp_start_line_t, length), 8);
        assert_eq!(offset_of!(mrcp_start_line_t, request_id), 16);
        assert_eq!(offset_of!(mrcp_start_line_t, method_name), 24);
        assert_eq!(offset_of!(mrcp_start_line_t, method_id), 40);
        assert_eq!(offset_of!(mrcp_start_line_t, status_code), 48);
        assert_eq!(offset_of!(mrcp_start_line_t, request_state), 52);
        assert_eq!(offset_of!(mrcp_message_t, channel_id), 56);
        assert_eq!(offset_of!(mrcp_message_t, header), 88);
        let header = offset_of!(mrcp_message_t, header);
        assert_eq!(header + offset_of!(mrcp_message_header_t, generic_header_accessor), 88);
        assert_eq!(header + offset_of!(mrcp_message_header_t, resource_header_accessor), 104);
        let section = header + offset_of!(mrcp_message_header_t, header_section);
        assert_eq!(section, 120);
        assert_eq!(section + offset_of!(apt_header_section_t, arr), 136);
        assert_eq!(section + offset_of!(apt_header_section_t, arr_size), 144);
        assert_eq!(offset_of!(mrcp_message_t, body), 152);
        assert_eq!(offset_of!(mrcp_message_t, resource), 168);
        assert_eq!(offset_of!(mrcp_message_t, pool), 176);
    }

    #[test]
    fn media() {
        assert_eq!(size_of::<mpf_frame_t>(), 32);
        assert_eq!(offset_of!(mpf_frame_t, type_), 0);
        assert_eq!(offset_of!(mpf_frame_t, marker), 4);
        assert_eq!(offset_of!(mpf_frame_t, codec_frame), 8);
        assert_eq!(offset_of!(mpf_frame_t, codec_frame) + offset_of!(mpf_codec_frame_t, size), 16);
        assert_eq!(offset_of!(mpf_frame_t, event_frame), 24);
        assert_eq!(size_of::<mpf_audio_stream_t>(), 72);
        assert_eq!(offset_of!(mpf_audio_stream_t, obj), 0);
        assert_eq!(offset_of!(mpf_audio_stream_t, vtable), 8);
        assert_eq!(offset_of!(mpf_audio_stream_t, termination), 16);
        assert_eq!(offset_of!(mpf_audio_stream_t, capabilities), 24);
        assert_eq!(offset_of!(mpf_audio_stream_t, direction), 32);
        assert_eq!(offset_of!(mpf_audio_stream_t, rx_descriptor), 40);
        assert_eq!(offset_of!(mpf_audio_stream_t, rx_event_descriptor), 48);
        assert_eq!(offset_of!(mpf_audio_stream_t, tx_descriptor), 56);
        assert_eq!(offset_of!(mpf_audio_stream_t, tx_event_descriptor), 64);
        assert_eq!(size_of::<mpf_audio_stream_vtable_t>(), 64);
        assert_eq!(size_of::<mpf_codec_descriptor_t>(), 56);
        assert_eq!(offset_of!(mpf_codec_descriptor_t, payload_type), 0);
        assert_eq!(offset_of!(mpf_codec_descriptor_t, name), 8);
        assert_eq!(offset_of!(mpf_codec_descriptor_t, sampling_rate), 24);
        assert_eq!(offset_of!(mpf_codec_descriptor_t, rtp_sampling_rate), 26);
        assert_eq!(offset_of!(mpf_codec_descriptor_t, channel_count), 28);
        assert_eq!(offset_of!(mpf_codec_descriptor_t, frame_duration), 30);
        assert_eq!(offset_of!(mpf_codec_descriptor_t, format_params), 32);
        assert_eq!(offset_of!(mpf_codec_descriptor_t, match_formats), 40);
        assert_eq!(offset_of!(mpf_codec_descriptor_t, enabled), 48);
        assert_eq!(size_of::<mpf_stream_capabilities_t>(), 24);
        assert_eq!(offset_of!(mpf_stream_capabilities_t, codecs), 8);
        assert_eq!(size_of::<mpf_codec_attribs_t>(), 32);
        assert_eq!(offset_of!(mpf_codec_attribs_t, bits_per_sample), 16);
        assert_eq!(offset_of!(mpf_codec_attribs_t, sample_rates), 20);
        assert_eq!(offset_of!(mpf_codec_attribs_t, frame_duration), 24);
    }

    #[test]
    fn headers() {
        assert_eq!(size_of::<mrcp_generic_header_t>(), 248);
        assert_eq!(offset_of!(mrcp_generic_header_t, content_type), 64);
        assert_eq!(offset_of!(mrcp_generic_header_t, content_length), 144);
        assert_eq!(size_of::<mrcp_synth_header_t>(), 280);
        assert_eq!(offset_of!(mrcp_synth_header_t, completion_cause), 48);
        assert_eq!(offset_of!(mrcp_synth_header_t, completion_reason), 56);
        assert_eq!(offset_of!(mrcp_synth_header_t, voice_param), 72);
        assert_eq!(offset_of!(mrcp_synth_header_t, voice_param) + offset_of!(mrcp_voice_param_t, name), 96);
        assert_eq!(offset_of!(mrcp_synth_header_t, prosody_param), 112);
        assert_eq!(offset_of!(mrcp_synth_header_t, speech_marker), 128);
        assert_eq!(offset_of!(mrcp_synth_header_t, speech_language), 144);
        assert_eq!(offset_of!(mrcp_synth_header_t, lexicon_search_order), 264);
    }

    #[test]
    fn ids_and_codes() {
        assert_eq!(SYNTHESIZER_SPEAK, 2);
        assert_eq!(SYNTHESIZER_STOP, 3);
        assert_eq!(SYNTHESIZER_BARGE_IN_OCCURRED, 6);
        assert_eq!(SYNTHESIZER_DEFINE_LEXICON, 8);
        assert_eq!(SYNTHESIZER_SPEAK_COMPLETE, 1);
        assert_eq!(SYNTHESIZER_HEADER_COMPLETION_CAUSE, 3);
        assert_eq!(SYNTHESIZER_HEADER_SPEECH_LANGUAGE, 12);
        assert_eq!(SYNTHESIZER_HEADER_COUNT, 21);
        assert_eq!(GENERIC_HEADER_CONTENT_TYPE, 3);
        assert_eq!(GENERIC_HEADER_VENDOR_SPECIFIC_PARAMS, 11);
        assert_eq!(GENERIC_HEADER_COUNT, 16);
        assert_eq!(MRCP_STATUS_CODE_METHOD_FAILED, 407);
        assert_eq!(MRCP_REQUEST_STATE_INPROGRESS, 1);
        assert_eq!(SYNTHESIZER_COMPLETION_CAUSE_ERROR, 4);
        assert_eq!(MPF_SAMPLE_RATE_16000, 2);
        assert_eq!(MEDIA_FRAME_TYPE_AUDIO, 1);
    }
}
