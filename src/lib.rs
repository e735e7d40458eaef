//! unimrcp-elevenlabs: a UniMRCP 1.8 synthesizer plugin that speaks with
//! ElevenLabs voices.
//!
//! Layers, each depending only on those listed before it (README
//! "Architecture"):
//!
//! * `mrcp`: the protocol's vocabulary, a decoded request, a reply.
//! * `ffi`: the only code that names UniMRCP's C types; vtables of guarded
//!   trampolines over the `ffi::Engine` / `ffi::Channel` traits.
//! * `media`: the audio buffer, the worker ↔ `read_frame` link, sinks.
//! * `redis_conn`: a Redis connection with short timeouts (several servers
//!   sharing one account), its URL shown without the password.
//! * `config`, `text`: engine params and header resolution; SPEAK bodies
//!   (plain text, SSML) and long-text splitting.
//! * `error`, `events`: typed failures and their MRCP answer; what
//!   happened, for the summary line and observers.
//! * `cache`: keys, entries on disk, single flight, the janitor.
//! * `tts`: the `Provider` seam, ElevenLabs, the curl transport.
//! * `plan`: a SPEAK as requests, pauses and marks.
//! * `synth`: the per-channel worker thread, and the cache warm-up.
//! * `metrics`: the engine's counters and histograms (an events observer),
//!   the `/metrics` endpoint and the textfile writer.
//! * `channel`, `engine`, `figures`: the session logic, the engine object,
//!   and what a scrape reads from the engine's objects.
//!
//! Only the four plugin entry points are exported (the server loads
//! plugins RTLD_GLOBAL). `unsafe` lives in `ffi`.

mod cache;
mod channel;
mod config;
mod engine;
mod error;
mod events;
mod ffi;
mod figures;
mod media;
mod metrics;
mod mrcp;
mod plan;
mod redis_conn;
mod synth;
mod text;
mod tts;

// Unit tests link the stand-in server library so the plugin's references to
// server functions resolve.
#[cfg(test)]
extern crate unimrcp_shim;

declare_plugin!(engine::Engine, engine::Engine::new);
