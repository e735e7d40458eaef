use std::sync::atomic::Ordering;

use super::{Job, Worker};
use crate::events::{Event, SpeakEnded};
use crate::tts::Stats;

impl Worker {
    /// Reports the SPEAK's end (the summary line operators grep for, and
    /// any observer's figures).
    pub(super) fn summary(&self, job: &Job, stats: &Stats, cause: &str) {
        let channel = self.id();
        let first_stored = self.shared.link.playback.lock().first_stored(job.speak.generation);
        job.observers.emit(Event::SpeakEnded(SpeakEnded {
            channel: &channel,
            request_id: job.speak.request_id,
            chars: job.plan.chars(),
            voice_id: &job.config.voice_id,
            model_id: &job.config.model_id,
            sample_rate: job.sample_rate,
            source: stats.source,
            time_to_first_byte: stats.time_to_first_byte,
            audio_bytes: stats.audio_bytes,
            http_status: stats.http_status,
            underruns: self.shared.link.underruns.swap(0, Ordering::Relaxed),
            wakeups: self.shared.link.waker.wakeups().saturating_sub(self.wakeups_at),
            upstream_request_id: stats.request_id.as_deref(),
            characters_billed: stats.characters,
            region: stats.region.as_deref(),
            tries: stats.tries,
            queue_wait: stats.queue_wait,
            cause,
            first_audio: first_stored.map(|t| t.saturating_duration_since(job.speak.received)),
            duration: job.speak.received.elapsed(),
        }));
    }
}
