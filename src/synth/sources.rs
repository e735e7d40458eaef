//! Audio that does not come from a transfer of our own: a cache entry, or
//! a synthesis of the same prompt another channel is running (a flight).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Job, Worker, STOPPED};
use crate::cache::{Flight, FlightEnd};
use crate::error::Failure;
use crate::media::{Playback, Push};
use crate::tts::Stats;

/// How long a local feed sleeps when the buffer is full or the flight it
/// follows has nothing new (a wake-up from either cuts it short).
pub(super) const FEED_WAIT: Duration = Duration::from_millis(20);

/// Longest sleep of a worker waiting for room it asked for
/// (`Link::want_space`): `read_frame` wakes it as soon as the room is
/// there, so this is only a backstop, not a polling period. It is longer
/// than the longest wait for a refill of the spill (32 KiB at 8 kHz play in
/// 2 s, spill.rs): at 1 s, every SPEAK that spilled woke once for nothing
/// while its buffer played down (bench [10]).
pub(super) const ROOM_WAIT: Duration = Duration::from_secs(3);

/// Audio that does not come from a transfer of our own, with how far it
/// has been pushed into the buffer.
pub(super) enum Source {
    /// A cache entry, read whole (and checked) before the first byte plays.
    Memory(Vec<u8>, usize),
    /// A synthesis of the same prompt another channel is running.
    Flight(Arc<Flight>, usize),
}

enum Pulled {
    Progress,
    /// Nothing to do now; `room_wanted` > 0 when the buffer is full.
    More {
        room_wanted: usize,
    },
    Done,
    Failed(Failure),
    Abandoned,
}

/// How a local feed ended, with the bytes it pushed.
pub(super) enum Fed {
    Done(usize),
    Failed(Failure, usize),
    Interrupted(usize),
    Abandoned(usize),
}

impl Fed {
    fn bytes(&self) -> usize {
        match self {
            Fed::Done(n) | Fed::Failed(_, n) | Fed::Interrupted(n) | Fed::Abandoned(n) => *n,
        }
    }
}

/// Pushes at most this much per lock of the buffer (bounded hold).
const FEED_CHUNK: usize = 16 * 1024;

impl Source {
    fn offset(&self) -> usize {
        match self {
            Source::Memory(_, off) | Source::Flight(_, off) => *off,
        }
    }

    fn pull(&mut self, playback: &mut Playback, generation: u64) -> Pulled {
        let room = playback.free().min(FEED_CHUNK);
        // Hysteresis: once the buffer is full, the worker sleeps until a
        // useful chunk fits (at most half the SPEAK's buffer, so the rest
        // plays meanwhile), not until the next frame was taken.
        let useful = FEED_CHUNK.min(playback.limit() / 2).max(1);
        match self {
            Source::Memory(audio, off) => {
                if *off >= audio.len() {
                    return Pulled::Done;
                }
                let wanted = useful.min(audio.len() - *off);
                if room < wanted {
                    return Pulled::More { room_wanted: wanted };
                }
                let n = room.min(audio.len() - *off);
                if playback.push(generation, &audio[*off..*off + n]) != Push::Stored {
                    return Pulled::More { room_wanted: 0 }; // stopped: the loop sees it
                }
                *off += n;
                Pulled::Progress
            }
            Source::Flight(flight, off) => {
                if room < useful {
                    return Pulled::More { room_wanted: useful };
                }
                let mut stored = true;
                let (n, end) =
                    flight.take(*off, room, |bytes| stored = playback.push(generation, bytes) == Push::Stored);
                if !stored {
                    return Pulled::More { room_wanted: 0 };
                }
                *off += n;
                match end {
                    Some(FlightEnd::Complete) => Pulled::Done,
                    Some(FlightEnd::Failed(reason)) => Pulled::Failed(reason),
                    Some(FlightEnd::Abandoned) => Pulled::Abandoned,
                    None if n > 0 => Pulled::Progress,
                    None => Pulled::More { room_wanted: 0 },
                }
            }
        }
    }
}

impl Worker {
    /// The end of a local feed, as for an upstream transfer.
    pub(super) fn fed(&mut self, job: Box<Job>, fed: Fed, source: &'static str, first_byte: Option<Duration>) {
        let stats = Stats {
            audio_bytes: fed.bytes() as u64,
            time_to_first_byte: first_byte,
            http_status: 0,
            source,
            ..Stats::default()
        };
        match fed {
            Fed::Done(_) => self.finish_buffering(job, stats),
            Fed::Failed(reason, _) => self.fail(&job, reason, stats),
            Fed::Interrupted(_) | Fed::Abandoned(_) => {
                let label = if self.exit.is_some() { "004 error (shutdown)" } else { STOPPED };
                self.summary(&job, &stats, label);
            }
        }
    }

    /// Pushes audio from a local source (a cache entry, or a flight another
    /// channel is downloading) into the buffer as the media thread makes
    /// room, serving commands meanwhile.
    /// Returns how it ended and when the first byte went into the buffer.
    pub(super) fn feed(&mut self, job: &Job, mut source: Source) -> (Fed, Option<Instant>) {
        let generation = job.speak.generation;
        let mut first: Option<Instant> = None;
        let fed = loop {
            if self.serve_commands(job) {
                break Fed::Interrupted(source.offset());
            }
            let step = {
                let mut playback = self.shared.link.playback.lock();
                source.pull(&mut playback, generation)
            };
            match step {
                Pulled::More { room_wanted } => {
                    if room_wanted > 0 {
                        // read_frame wakes us once that much fits.
                        self.shared.link.want_space.store(room_wanted, Ordering::Release);
                        self.shared.link.waker.wait(Some(ROOM_WAIT));
                    } else {
                        // The flight wakes its followers when it has more.
                        self.shared.link.waker.wait(Some(FEED_WAIT));
                    }
                }
                Pulled::Progress => {
                    first.get_or_insert_with(Instant::now);
                }
                Pulled::Done => {
                    if source.offset() > 0 {
                        first.get_or_insert_with(Instant::now);
                    }
                    break Fed::Done(source.offset());
                }
                Pulled::Failed(reason) => break Fed::Failed(reason, source.offset()),
                Pulled::Abandoned => break Fed::Abandoned(source.offset()),
            }
        };
        if let Source::Flight(flight, _) = &source {
            flight.unfollow(&self.shared.link.waker);
        }
        (fed, first)
    }
}
