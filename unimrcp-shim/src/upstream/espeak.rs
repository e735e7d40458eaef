//! A real, offline voice for the mock: eSpeak NG, loaded at run time.
//!
//! `libespeak-ng.so.1` is opened with `dlopen` the first time it is needed,
//! so nothing is needed to build or test the workspace; without it
//! [`available`] says why and [`super::Voice::Espeak`] falls back to the
//! test tones. The library is driven in `AUDIO_OUTPUT_SYNCHRONOUS` mode: one
//! `espeak_Synth` call runs the whole synthesis on the calling thread and
//! hands back audio (22050 Hz) and word events (character position and
//! time) through the callback. eSpeak NG keeps global state and is not
//! thread-safe, so every call runs under one process-wide lock.
//!
//! The word events become per-character start times ([`Speech::char_starts_ms`]),
//! the shape of ElevenLabs' `alignment`, and the audio is converted to the
//! requested rate with [`super::resample`].

use super::resample::resample;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_short, c_uint, c_void, CStr, CString};

/// The shared object loaded (the runtime package's soname).
pub const LIBRARY: &str = "libespeak-ng.so.1";
/// eSpeak NG voice used for every request.
const VOICE: &str = "en-us";
/// Samples quieter than this (out of 32767) count as the pause after a word.
const QUIET: u16 = 300;

/// One synthesized text.
#[derive(Clone, Debug, Default)]
pub struct Speech {
    /// Sample rate of `pcm`.
    pub rate: u32,
    /// Little-endian 16-bit mono PCM.
    pub pcm: Vec<u8>,
    /// For each character (Unicode scalar value) of the text, when it
    /// starts, in ms from the start of `pcm`. Non-decreasing.
    pub char_starts_ms: Vec<f64>,
    /// Length of `pcm` in ms (the end of the last character).
    pub audio_ms: f64,
}

/// Why eSpeak NG cannot be used, if it cannot: the library or its data is
/// missing. Loads and initializes it on first call.
pub fn available() -> Result<(), String> {
    ENGINE.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Speaks `text` with eSpeak NG at `rate` Hz.
pub fn speak(text: &str, rate: u32) -> Result<Speech, String> {
    let engine = ENGINE.as_ref().map_err(Clone::clone)?;
    let raw = engine.lock().synth(text)?;
    let chars = text.chars().count();
    let starts = char_starts(&raw, chars);
    let samples = resample(&raw.samples, raw.rate, rate);
    let pcm = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let audio_ms = samples.len() as f64 * 1000.0 / f64::from(rate);
    Ok(Speech { rate, pcm, char_starts_ms: starts.into_iter().map(|t| t.min(audio_ms)).collect(), audio_ms })
}

// --- The C API (speak_lib.h), as much as is used ---

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
const POS_CHARACTER: c_int = 1;
const CHARS_UTF8: c_uint = 1;
const EVENT_LIST_TERMINATED: c_int = 0;
const EVENT_WORD: c_int = 1;
const EVENT_END: c_int = 5;

/// `espeak_EVENT`.
#[repr(C)]
struct Event {
    kind: c_int,
    unique_identifier: c_uint,
    /// 1-based character position in the text.
    text_position: c_int,
    /// Characters in the word (`espeakEVENT_WORD`).
    length: c_int,
    /// ms from the start of the message's audio.
    audio_position: c_int,
    sample: c_int,
    user_data: *mut c_void,
    id: [u8; 8],
}

type Callback = unsafe extern "C" fn(*mut c_short, c_int, *mut Event) -> c_int;
type InitializeFn = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetSynthCallbackFn = unsafe extern "C" fn(Option<Callback>);
type SetVoiceByNameFn = unsafe extern "C" fn(*const c_char) -> c_int;
type SynthFn =
    unsafe extern "C" fn(*const c_void, usize, c_uint, c_int, c_uint, c_uint, *mut c_uint, *mut c_void) -> c_int;

struct Engine {
    synth: SynthFn,
    /// Rate of eSpeak's output (22050 Hz).
    rate: u32,
}

/// Loaded once; the library is never unloaded.
static ENGINE: Lazy<Result<Mutex<Engine>, String>> = Lazy::new(|| load().map(Mutex::new));

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until
    // the next dl* call on this thread.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".to_string()
    } else {
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

fn load() -> Result<Engine, String> {
    let name = CString::new(LIBRARY).expect("no NUL in the name");
    // SAFETY: plain dlopen of a system library by soname.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!("{LIBRARY} not loaded ({})", dl_error()));
    }
    let sym = |symbol: &str| -> Result<*mut c_void, String> {
        let c = CString::new(symbol).expect("no NUL in the name");
        // SAFETY: dlsym on the handle just opened.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() {
            Err(format!("{LIBRARY} has no {symbol} ({})", dl_error()))
        } else {
            Ok(p)
        }
    };
    // SAFETY: the symbols have these C signatures (speak_lib.h, API stable
    // since eSpeak 1.x).
    let (initialize, set_callback, set_voice, synth) = unsafe {
        (
            std::mem::transmute::<*mut c_void, InitializeFn>(sym("espeak_Initialize")?),
            std::mem::transmute::<*mut c_void, SetSynthCallbackFn>(sym("espeak_SetSynthCallback")?),
            std::mem::transmute::<*mut c_void, SetVoiceByNameFn>(sym("espeak_SetVoiceByName")?),
            std::mem::transmute::<*mut c_void, SynthFn>(sym("espeak_Synth")?),
        )
    };
    // SAFETY: called once (inside the Lazy), before any other call. The
    // default data path is used; DONT_EXIT keeps a missing data directory
    // from exiting the process.
    let rate = unsafe { initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, std::ptr::null(), INITIALIZE_DONT_EXIT) };
    if rate <= 0 {
        return Err(format!("{LIBRARY} failed to initialize (is espeak-ng-data installed?)"));
    }
    let voice = CString::new(VOICE).expect("no NUL in the name");
    // SAFETY: valid C strings and a callback with the right signature; a
    // voice that is missing leaves eSpeak's default voice in place.
    unsafe {
        set_voice(voice.as_ptr());
        set_callback(Some(callback));
    }
    Ok(Engine { synth, rate: rate as u32 })
}

/// What one synthesis produced at eSpeak's own rate.
#[derive(Debug, Default)]
struct Raw {
    rate: u32,
    samples: Vec<i16>,
    words: Vec<Word>,
    /// Ends of clauses (`espeakEVENT_END`), in ms.
    clause_ends_ms: Vec<f64>,
}

#[derive(Clone, Copy, Debug)]
struct Word {
    /// 0-based character index.
    first: usize,
    len: usize,
    start_ms: f64,
}

thread_local! {
    /// Filled by [`callback`] during one `espeak_Synth` on this thread.
    static COLLECTED: RefCell<Raw> = RefCell::new(Raw::default());
}

/// The synth callback: appends audio and events to [`COLLECTED`]. Must not
/// panic (it is called from C), hence `try_borrow_mut` and no indexing.
unsafe extern "C" fn callback(wav: *mut c_short, samples: c_int, events: *mut Event) -> c_int {
    COLLECTED.with(|c| {
        let Ok(mut raw) = c.try_borrow_mut() else { return };
        if !wav.is_null() && samples > 0 {
            // SAFETY: eSpeak passes `samples` valid samples at `wav`.
            raw.samples.extend_from_slice(unsafe { std::slice::from_raw_parts(wav, samples as usize) });
        }
        let mut ev = events;
        // SAFETY: the event list is terminated by LIST_TERMINATED.
        while !ev.is_null() && unsafe { (*ev).kind } != EVENT_LIST_TERMINATED {
            let e = unsafe { &*ev };
            match e.kind {
                EVENT_WORD if e.length > 0 && e.text_position > 0 => raw.words.push(Word {
                    first: (e.text_position - 1) as usize,
                    len: e.length as usize,
                    start_ms: f64::from(e.audio_position),
                }),
                EVENT_END => raw.clause_ends_ms.push(f64::from(e.audio_position)),
                _ => {}
            }
            ev = unsafe { ev.add(1) };
        }
    });
    0
}

impl Engine {
    fn synth(&mut self, text: &str) -> Result<Raw, String> {
        // eSpeak reads up to a NUL; an embedded one would cut the text.
        let c = CString::new(text.replace('\0', " ")).expect("NULs replaced");
        COLLECTED.with(|r| *r.borrow_mut() = Raw { rate: self.rate, ..Raw::default() });
        // SAFETY: a NUL-terminated UTF-8 text; synchronous mode returns
        // only when the whole text has been synthesized (on this thread,
        // through `callback`). `&mut self` under the lock serializes calls.
        let status = unsafe {
            (self.synth)(
                c.as_ptr().cast(),
                c.as_bytes_with_nul().len(),
                0,
                POS_CHARACTER,
                0,
                CHARS_UTF8,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let raw = COLLECTED.with(|r| std::mem::take(&mut *r.borrow_mut()));
        if status != 0 {
            return Err(format!("espeak_Synth failed ({status})"));
        }
        Ok(raw)
    }
}

/// Start of every character, in ms, from the word events.
///
/// A word event gives the start of the word's first character. A word's
/// characters share the word's *sounding* span evenly: from its start to
/// the last loud sample before the next word or clause end (the pause
/// after a comma or full stop is not part of the word). Characters
/// between words (spaces, punctuation) start where the previous word
/// stops sounding; characters before the first word start at 0.
fn char_starts(raw: &Raw, chars: usize) -> Vec<f64> {
    let total_ms = raw.samples.len() as f64 * 1000.0 / f64::from(raw.rate.max(1));
    let mut starts: Vec<Option<f64>> = vec![None; chars];
    // Where the characters after each word start (the word's sounding end),
    // keyed by the word's last character.
    let mut after: Vec<Option<f64>> = vec![None; chars];
    for (k, w) in raw.words.iter().enumerate() {
        if w.first >= chars {
            continue;
        }
        let next_event = raw
            .words
            .iter()
            .skip(k + 1)
            .map(|n| n.start_ms)
            .chain(raw.clause_ends_ms.iter().copied())
            .filter(|&t| t > w.start_ms)
            .fold(total_ms, f64::min);
        let end = sounding_end(&raw.samples, raw.rate, w.start_ms, next_event);
        let len = w.len.min(chars - w.first);
        for j in 0..len {
            let slot = &mut starts[w.first + j];
            if slot.is_none() {
                *slot = Some(w.start_ms + (end - w.start_ms) * j as f64 / len as f64);
            }
        }
        after[w.first + len - 1].get_or_insert(end);
    }
    let mut out = Vec::with_capacity(chars);
    let mut last = 0.0f64;
    let mut gap_start = 0.0f64;
    for i in 0..chars {
        let t = starts[i].unwrap_or(gap_start).max(last).min(total_ms);
        out.push(t);
        last = t;
        if let Some(end) = after[i] {
            gap_start = end;
        } else if starts[i].is_none() {
            gap_start = t;
        }
    }
    out
}

/// The end, in ms, of the last sample louder than [`QUIET`] in
/// `[from_ms, to_ms)`; `from_ms` if there is none.
fn sounding_end(samples: &[i16], rate: u32, from_ms: f64, to_ms: f64) -> f64 {
    let per_ms = f64::from(rate) / 1000.0;
    let from = ((from_ms * per_ms) as usize).min(samples.len());
    let to = ((to_ms * per_ms).ceil() as usize).clamp(from, samples.len());
    samples[from..to].iter().rposition(|s| s.unsigned_abs() > QUIET).map_or(from_ms, |i| (from + i + 1) as f64 / per_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(words: &[(usize, usize, f64)], ends: &[f64], loud_ms: &[(f64, f64)], total_ms: f64) -> Raw {
        let rate = 1000;
        let mut samples = vec![0i16; total_ms as usize];
        for &(a, b) in loud_ms {
            samples[a as usize..b as usize].fill(5000);
        }
        Raw {
            rate,
            samples,
            words: words.iter().map(|&(first, len, start_ms)| Word { first, len, start_ms }).collect(),
            clause_ends_ms: ends.to_vec(),
        }
    }

    #[test]
    fn characters_share_their_words_sounding_span() {
        // "Hi, yo." : "Hi" sounds 0..200 then pauses to 500; "yo" 500..700.
        let r = raw(&[(0, 2, 0.0), (4, 2, 500.0)], &[500.0, 800.0], &[(0.0, 200.0), (500.0, 700.0)], 800.0);
        let s = char_starts(&r, 7);
        assert_eq!(s, [0.0, 100.0, 200.0, 200.0, 500.0, 600.0, 700.0]);
        // Leading characters before any word start at 0; a text with no
        // words at all is all zeros.
        let r = raw(&[(2, 1, 100.0)], &[], &[(100.0, 300.0)], 300.0);
        assert_eq!(char_starts(&r, 4), [0.0, 0.0, 100.0, 300.0]);
        assert_eq!(char_starts(&raw(&[], &[], &[], 0.0), 3), [0.0, 0.0, 0.0]);
        // Events past the text (or out of order) never make times go back.
        let r = raw(&[(0, 3, 300.0), (1, 1, 100.0), (9, 2, 0.0)], &[], &[(0.0, 400.0)], 400.0);
        let s = char_starts(&r, 3);
        assert!(s.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
    }

    /// Runs the real library; skipped (with a message) when it is absent.
    #[test]
    fn espeak_speaks_with_word_alignment() {
        if let Err(why) = available() {
            eprintln!("SKIPPED espeak_speaks_with_word_alignment: {why}; `apt-get install espeak-ng` to run it");
            return;
        }
        let text = "Hello there, general Kenobi.";
        let general = text.find("general").unwrap();
        let kenobi = text.find("Kenobi").unwrap();
        for rate in [8000u32, 16000, 44100] {
            let s = speak(text, rate).unwrap();
            assert_eq!(s.rate, rate);
            assert_eq!(s.pcm.len() % 2, 0);
            assert!((1000.0..5000.0).contains(&s.audio_ms), "{rate}: {} ms", s.audio_ms);
            assert!((s.pcm.len() as f64 / 2.0 / f64::from(rate) * 1000.0 - s.audio_ms).abs() < 1e-6);
            assert_eq!(s.char_starts_ms.len(), text.chars().count());
            assert!(s.char_starts_ms.windows(2).all(|w| w[0] <= w[1]));
            assert!(s.char_starts_ms.iter().all(|&t| (0.0..=s.audio_ms).contains(&t)));
            let (g, k) = (s.char_starts_ms[general], s.char_starts_ms[kenobi]);
            assert!(300.0 < g && g + 200.0 < k && k + 200.0 < s.audio_ms, "{rate}: general {g}, Kenobi {k}");
            // Speech, not a tone or silence: loud, and varying loudness
            // (words and the pause after the comma).
            let samples: Vec<i16> = s.pcm.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
            let peak = samples.iter().map(|v| v.unsigned_abs()).max().unwrap();
            assert!(peak > 3000, "{rate}: peak {peak}");
            let frame = rate as usize / 50;
            let rms: Vec<f64> = samples
                .chunks_exact(frame)
                .map(|f| (f.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / frame as f64).sqrt())
                .collect();
            let loudest = rms.iter().copied().fold(0.0, f64::max);
            assert!(rms.iter().any(|&r| r < loudest / 20.0), "{rate}: no quiet 20 ms frame");
            // The word after the comma starts after a quieter stretch.
            let at = |ms: f64| ((ms / 20.0) as usize).min(rms.len() - 1);
            let before_general = rms[at(g) - 3..at(g)].iter().copied().fold(f64::MAX, f64::min);
            assert!(before_general < loudest / 10.0, "{rate}: no pause before 'general'");
        }
        // Non-ASCII text: positions count characters, not bytes.
        let s = speak("Grüße aus Köln.", 16000).unwrap();
        assert_eq!(s.char_starts_ms.len(), 15);
        assert!(s.char_starts_ms[6] > 100.0 && s.char_starts_ms[10] > s.char_starts_ms[6]);
    }

    #[test]
    fn espeak_is_serialized_across_threads() {
        if available().is_err() {
            eprintln!("SKIPPED espeak_is_serialized_across_threads: {LIBRARY} is not installed");
            return;
        }
        let texts = ["One two three.", "Four five six seven.", "Eight."];
        let handles: Vec<_> =
            (0..6).map(|i| std::thread::spawn(move || (i, speak(texts[i % 3], 8000).unwrap()))).collect();
        for h in handles {
            let (i, s) = h.join().unwrap();
            assert_eq!(s.char_starts_ms.len(), texts[i % 3].chars().count());
            assert!(s.audio_ms > 300.0, "{i}: {} ms", s.audio_ms);
        }
    }
}
