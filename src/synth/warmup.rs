//! Cache warm-up: after engine open, a background thread synthesizes the
//! prompts of `cache_warmup_file` into the cache, one upstream request at a
//! time (so calls keep the plan's concurrency), skipping prompts already
//! cached. It has its own curl handles, which only it touches, and sends
//! its audio to no channel (`media::Discard`): only the cache keeps it.
//! Its requests are built by `plan`, as a SPEAK's are, so a warmed prompt
//! is a hit for the same text spoken by a call.
//!
//! File format: one prompt per line; blank lines and lines starting with
//! `#` are skipped. A line is either the text alone (engine voice and
//! model), or `voice_id<TAB>model_id<TAB>text` (an empty field means the
//! engine's). Each prompt is warmed at every rate of `cache_warmup_rates`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cache::{Cache, FlightEnd, Lookup, Probe, Tee};
use crate::config::{valid_voice_id, Config};
use crate::error::Failure;
use crate::media::{Discard, Waker};
use crate::plan;
use crate::tts::capacity::{retry, Capacity, Health, Next, Permit};
use crate::tts::{Network, Outcome, Provider, Transport};

/// One line of the warm-up file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    pub voice_id: Option<String>,
    pub model_id: Option<String>,
    pub text: String,
}

/// Parses the file's text; bad lines are reported by number, not fatal.
pub fn parse(text: &str) -> (Vec<Prompt>, Vec<String>) {
    let mut prompts = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let prompt = match fields.as_slice() {
            [text] => Prompt { voice_id: None, model_id: None, text: text.trim().to_owned() },
            [voice, model, text] => Prompt {
                voice_id: Some(voice.trim()).filter(|v| !v.is_empty()).map(str::to_owned),
                model_id: Some(model.trim()).filter(|m| !m.is_empty()).map(str::to_owned),
                text: text.trim().to_owned(),
            },
            _ => {
                problems.push(format!("line {}: expected text, or voice_id<TAB>model_id<TAB>text", n + 1));
                continue;
            }
        };
        if prompt.text.is_empty() || prompt.voice_id.as_deref().is_some_and(|v| !valid_voice_id(v)) {
            problems.push(format!("line {}: empty text or bad voice id", n + 1));
            continue;
        }
        prompts.push(prompt);
    }
    (prompts, problems)
}

pub struct Warmup {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: JoinHandle<()>,
}

impl Warmup {
    /// Starts warming `path` in the background.
    pub fn start(
        path: String,
        config: Arc<Config>,
        cache: Arc<Cache>,
        provider: Arc<dyn Provider>,
        capacity: Arc<Capacity>,
        net: Arc<Network>,
    ) -> Option<Warmup> {
        let waker = match Waker::new() {
            Ok(w) => Arc::new(w),
            Err(e) => {
                log::error!("cache warm-up: {e}");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, waker2) = (Arc::clone(&stop), Arc::clone(&waker));
        let thread = std::thread::Builder::new()
            .name("elevenlabs-warm".into())
            .spawn(move || run(&path, &config, &cache, &provider, &capacity, &net, &waker2, &stop2))
            .map_err(|e| log::error!("cache warm-up: cannot start its thread: {e}"))
            .ok()?;
        Some(Warmup { stop, waker, thread })
    }

    /// Aborts the current request and joins the thread (engine close).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        let _ = self.thread.join();
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    path: &str,
    config: &Config,
    cache: &Arc<Cache>,
    provider: &Arc<dyn Provider>,
    capacity: &Arc<Capacity>,
    net: &Network,
    waker: &Arc<Waker>,
    stop: &AtomicBool,
) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            log::error!("cache warm-up: cannot read '{path}': {e}");
            return;
        }
    };
    let (prompts, problems) = parse(&text);
    for p in &problems {
        log::warn!("cache warm-up: {path}: {p}");
    }
    let mut transport = match Transport::new(net) {
        Ok(t) => t,
        Err(e) => {
            log::error!("cache warm-up: cannot create curl handles: {e}");
            return;
        }
    };
    let started = Instant::now();
    let (mut made, mut present, mut failed) = (0, 0, 0);
    for prompt in &prompts {
        for &rate in &config.cache_warmup_rates {
            if stop.load(Ordering::Acquire) {
                log::info!("cache warm-up stopped");
                return;
            }
            match warm(&mut transport, prompt, rate, config, cache, provider, capacity, waker, stop) {
                Warmed::Made => made += 1,
                Warmed::Present => present += 1,
                Warmed::Failed(why) => {
                    failed += 1;
                    log::warn!("cache warm-up: {:?} at {rate} Hz: {why}", prompt.text);
                }
            }
        }
    }
    log::info!(
        "cache warm-up done in {:?}: {made} synthesized, {present} already cached, {failed} failed",
        started.elapsed()
    );
}

enum Warmed {
    Made,
    Present,
    Failed(String),
}

#[allow(clippy::too_many_arguments)]
fn warm(
    transport: &mut Transport,
    prompt: &Prompt,
    rate: u32,
    engine: &Config,
    cache: &Arc<Cache>,
    provider: &Arc<dyn Provider>,
    capacity: &Arc<Capacity>,
    waker: &Arc<Waker>,
    stop: &AtomicBool,
) -> Warmed {
    let mut config = engine.clone();
    if let Some(v) = &prompt.voice_id {
        config.voice_id = v.clone();
    }
    if let Some(m) = &prompt.model_id {
        config.model_id = m.clone();
    }
    let utterance =
        plan::Utterance { text: prompt.text.clone(), config: Arc::new(config), gain: 1.0, marks: Vec::new() };
    let plan = plan::Plan { steps: vec![plan::Step::Say(utterance.clone())], config: Arc::clone(&utterance.config) };
    let key = plan.cache_key(rate, provider.as_ref());
    let (flight, writer) = match cache.lookup(key, rate, None, waker) {
        Lookup::Hit(_) => return Warmed::Present,
        Lookup::Follow(flight) => {
            // A call is synthesizing it right now: it will be cached.
            flight.unfollow(waker);
            return Warmed::Present;
        }
        Lookup::Lead(flight, writer) => (flight, writer),
    };
    // The tier shared with other servers: another server may have warmed
    // it already (copied to the disk here), or be warming it now.
    let mut redis_lock = None;
    let mut writer = writer;
    if let Some(tier) = cache.redis() {
        match tier.probe(&key, rate, None, false) {
            Probe::Hit(audio) => {
                if let Some(mut w) = writer.take() {
                    w.write(&audio);
                    w.commit();
                }
                flight.append(&audio);
                cache.land(key, &flight, FlightEnd::Complete);
                return Warmed::Present;
            }
            Probe::Busy => {
                cache.land(key, &flight, FlightEnd::Abandoned);
                return Warmed::Present;
            }
            Probe::Lead(token) => redis_lock = Some(token),
            Probe::Unavailable => {}
        }
    }
    let mut tee = Tee { flight: Some(Arc::clone(&flight)), writer: writer.map(Box::new), skip: 0 };
    let mut result = Ok(());
    // Stitched as a SPEAK's parts are (player.rs), so that the entry sounds
    // as a call would have heard it.
    let mut ids: Vec<Option<String>> = Vec::new();
    for (_, mut request) in plan::requests(&utterance, rate) {
        plan::stitch(&mut request, &ids);
        // The warm-up spends the account's slots like a call does (it
        // waits its turn; it is not retried: the next engine open warms
        // what it missed).
        let pass = match capacity.route() {
            Ok(pass) => pass,
            Err(why) => {
                result = Err(why);
                break;
            }
        };
        let Some(permit) = wait_for_slot(capacity, waker, stop) else {
            result = Err(Failure::Internal("engine closing".to_owned()));
            break;
        };
        let mut transfer = match transport.start(provider, pass.base_url(), &request, Box::new(Discard), tee) {
            Ok(t) => t,
            Err((why, back, _)) => {
                tee = back;
                result = Err(why);
                break;
            }
        };
        let mut expired = None;
        while !transfer.step() {
            let now = Instant::now();
            if stop.load(Ordering::Acquire) {
                expired = Some(Failure::Internal("engine closing".to_owned()));
                break;
            }
            if let Some(why) = transfer.expired(now) {
                // As in player.rs: what has arrived counts before the clock.
                if transfer.step() {
                    break;
                }
                if transfer.expired(Instant::now()).is_some() {
                    expired = Some(why);
                    break;
                }
                continue;
            }
            let signalled = transfer.wait(waker.fd(), now);
            waker.woke(signalled);
        }
        let (outcome, stats, back, _) = transfer.finish();
        if let Some(max) = stats.max_concurrency {
            capacity.limiter.advertise(max);
        }
        match (&expired, &outcome) {
            (None, Outcome::Complete) => {
                pass.report(Health::Up, "");
                permit.succeeded();
            }
            (None, Outcome::Failed(why)) => {
                let (next, health) = retry::judge(stats.trouble.as_ref());
                pass.report(health, &why.to_string());
                if next == Next::Requeue {
                    permit.rejected();
                }
            }
            _ => {}
        }
        ids.push(stats.request_id);
        tee = back;
        match (expired, outcome) {
            (Some(why), _) | (None, Outcome::Failed(why)) => {
                result = Err(why);
                break;
            }
            (None, Outcome::Stale) => {
                result = Err(Failure::Internal("aborted".into()));
                break;
            }
            (None, Outcome::Complete) => {}
        }
    }
    let end = match &result {
        Ok(()) => {
            if let Some(writer) = tee.writer.take() {
                (*writer).commit();
            }
            FlightEnd::Complete
        }
        Err(why) => FlightEnd::Failed(why.clone()),
    };
    drop(tee);
    if let (Some(tier), Some(token)) = (cache.redis(), &redis_lock) {
        match end {
            FlightEnd::Complete => tier.store(&key, cache.entry_bytes(&key).as_deref(), token),
            _ => tier.unlock(&key, token),
        }
    }
    cache.land(key, &flight, end);
    match result {
        Ok(()) => Warmed::Made,
        Err(why) => Warmed::Failed(why.to_string()),
    }
}

/// The warm-up's turn in the engine's queue; None when the engine closes
/// first.
fn wait_for_slot(capacity: &Arc<Capacity>, waker: &Arc<Waker>, stop: &AtomicBool) -> Option<Permit> {
    let mut ticket = capacity.limiter.enqueue(Arc::clone(waker), false, None);
    loop {
        if let Some(permit) = ticket.take() {
            return Some(permit);
        }
        if stop.load(Ordering::Acquire) {
            return None;
        }
        waker.wait(Some(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_text_or_three_fields() {
        let (prompts, problems) = parse(
            "# menu prompts\nPlease hold.\n\nvoiceA\televen_multilingual_v2\tBonjour.\n\t\tDefault voice.\na\tb\n",
        );
        assert_eq!(
            prompts,
            vec![
                Prompt { voice_id: None, model_id: None, text: "Please hold.".into() },
                Prompt {
                    voice_id: Some("voiceA".into()),
                    model_id: Some("eleven_multilingual_v2".into()),
                    text: "Bonjour.".into()
                },
                Prompt { voice_id: None, model_id: None, text: "Default voice.".into() },
            ]
        );
        assert_eq!(problems, vec!["line 6: expected text, or voice_id<TAB>model_id<TAB>text".to_string()]);
    }
}
