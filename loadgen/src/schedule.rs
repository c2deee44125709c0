//! When each batch is sent, and whether it counts.
//!
//! Workers (connections x in-flight) claim batch tickets from one shared
//! counter. With a target rate, ticket `g` is due at
//! `start + g * batch / rate` whoever claims it, so the offered load is
//! fixed by the schedule, not by how fast the server answers. A ticket
//! claimed after its due time (its worker was waiting for an answer) is
//! measured from that intended send time (completion - due), which
//! corrects coordinated omission: a stalled server makes every later batch
//! late, and the lateness is counted. A ticket claimed before it is due is
//! measured from when the timer released it, which is up to a millisecond
//! past due (`run::latency_start`). Without a rate, a ticket is sent when
//! claimed and latency is measured from the actual send.
//!
//! A ticket whose send time falls in the warmup is sent but not measured.
//! Measuring stops at `warmup + duration` (by send time) or after `count`
//! measured events; a final batch may be short so that exactly `count`
//! events are measured.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Longest latency a histogram tracks (larger values are clamped to it).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits kept by the latency histograms.
const LATENCY_SIGFIG: u8 = 3;

/// When measuring ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this long past the warmup (by send time).
    Duration(Duration),
    /// After this many measured events.
    Count(u64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub warmup: Duration,
    pub stop: Stop,
    /// Events per second over all workers; `None` is unbounded.
    pub rate: Option<f64>,
    /// Events per ticket (the last measured one may carry fewer).
    pub batch: u32,
}

/// The offset from the start at which batch `index` is due at `rate`
/// events per second with `batch` events per batch.
pub fn due_offset(index: u64, batch: u32, rate: f64) -> Duration {
    debug_assert!(rate > 0.0 && batch > 0);
    Duration::from_secs_f64(index as f64 * f64::from(batch) / rate)
}

/// One batch to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Global batch number, unique in the run.
    pub index: u64,
    /// Events in this batch.
    pub events: u32,
    /// Due time under a rate; `None` sends now.
    pub due: Option<Instant>,
    /// Counts towards the figures (sent after the warmup).
    pub measured: bool,
}

/// The shared ticket counter.
#[derive(Debug)]
pub struct Tickets {
    start: Instant,
    plan: Plan,
    next_batch: AtomicU64,
    measured_events: AtomicU64,
    halted: AtomicBool,
}

impl Tickets {
    pub fn new(start: Instant, plan: Plan) -> Tickets {
        assert!(plan.batch > 0);
        Tickets {
            start,
            plan,
            next_batch: AtomicU64::new(0),
            measured_events: AtomicU64::new(0),
            halted: AtomicBool::new(false),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The instant measuring begins.
    pub fn warmup_end(&self) -> Instant {
        self.start + self.plan.warmup
    }

    /// Stops handing out tickets (end of run, or a worker failed).
    pub fn halt(&self) {
        self.halted.store(true, Ordering::Relaxed);
    }

    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    /// The next batch to send, claimed at `now`; `None` once the run is
    /// over.
    pub fn claim(&self, now: Instant) -> Option<Ticket> {
        if self.halted() {
            return None;
        }
        let index = self.next_batch.fetch_add(1, Ordering::Relaxed);
        let due = self
            .plan
            .rate
            .map(|rate| self.start + due_offset(index, self.plan.batch, rate));
        let send_at = due.unwrap_or(now);
        let warmup_end = self.warmup_end();
        if send_at < warmup_end {
            return Some(Ticket {
                index,
                events: self.plan.batch,
                due,
                measured: false,
            });
        }
        let events = match self.plan.stop {
            Stop::Duration(d) => {
                if send_at >= warmup_end + d {
                    self.halt();
                    return None;
                }
                self.plan.batch
            }
            Stop::Count(count) => {
                let batch = u64::from(self.plan.batch);
                let claimed = self.measured_events.fetch_add(batch, Ordering::Relaxed);
                if claimed >= count {
                    self.halt();
                    return None;
                }
                // At most `batch`, so it fits a u32.
                u32::try_from((count - claimed).min(batch)).unwrap_or(self.plan.batch)
            }
        };
        Some(Ticket {
            index,
            events,
            due,
            measured: true,
        })
    }
}

/// A latency histogram in microseconds, 1 µs ..= `LATENCY_US_MAX`.
pub fn latency_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
}

/// What one worker (or consumer) measured.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub latency_us: Histogram<u64>,
    /// Measured events completed.
    pub events: u64,
    /// When the last measured event completed.
    pub last: Option<Instant>,
}

impl Recorder {
    pub fn new() -> Result<Recorder, hdrhistogram::CreationError> {
        Ok(Recorder {
            latency_us: latency_histogram()?,
            events: 0,
            last: None,
        })
    }

    /// Records `events` events that completed at `done`, `latency` after
    /// they were (due to be) sent. Each event counts once in the histogram.
    pub fn record(&mut self, latency: Duration, events: u32, done: Instant) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us
            .saturating_record_n(us.clamp(1, LATENCY_US_MAX), u64::from(events));
        self.events += u64::from(events);
        self.last = self.last.max(Some(done));
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Histograms with equal bounds always add; clamp-on-record keeps
        // values within them.
        let _ = self.latency_us.add(&other.latency_us);
        self.events += other.events;
        self.last = self.last.max(other.last);
    }

    /// Seconds from `from` to the last measured completion (at least 1 µs).
    pub fn window_secs(&self, from: Instant) -> f64 {
        self.last
            .map_or(0.0, |last| {
                last.saturating_duration_since(from).as_secs_f64()
            })
            .max(1e-6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn due_offsets_follow_the_rate() {
        assert_eq!(due_offset(0, 10, 1000.0), Duration::ZERO);
        assert_eq!(due_offset(1, 10, 1000.0), ms(10));
        assert_eq!(due_offset(100, 10, 1000.0), Duration::from_secs(1));
        assert_eq!(due_offset(3, 1, 4.0), ms(750));
        // A long run keeps microsecond precision.
        let d = due_offset(86_400_000_000, 1, 1_000_000.0);
        assert!(d.abs_diff(Duration::from_secs(86_400)) < Duration::from_micros(1));
    }

    #[test]
    fn scheduled_tickets_are_due_on_time_and_split_at_the_warmup() {
        let start = Instant::now();
        let plan = Plan {
            warmup: ms(100),
            stop: Stop::Duration(ms(200)),
            rate: Some(100.0), // one batch of 2 every 20 ms
            batch: 2,
        };
        let t = Tickets::new(start, plan);
        let mut tickets = Vec::new();
        // Claimed all at once: due times come from the schedule, not the
        // claim time.
        while let Some(ticket) = t.claim(start) {
            tickets.push(ticket);
        }
        assert_eq!(tickets.len(), 15, "300 ms at 50 batches/s");
        for (i, ticket) in tickets.iter().enumerate() {
            assert_eq!(ticket.index, i as u64);
            assert_eq!(ticket.due, Some(start + ms(20 * i as u64)));
            assert_eq!(ticket.measured, i >= 5, "ticket {i}");
            assert_eq!(ticket.events, 2);
        }
        assert!(t.halted());
        assert_eq!(t.claim(start), None);
    }

    #[test]
    fn unbounded_tickets_use_the_claim_time() {
        let start = Instant::now();
        let t = Tickets::new(
            start,
            Plan {
                warmup: ms(10),
                stop: Stop::Duration(ms(10)),
                rate: None,
                batch: 1,
            },
        );
        let a = t.claim(start + ms(5)).unwrap();
        assert_eq!((a.due, a.measured), (None, false));
        let b = t.claim(start + ms(15)).unwrap();
        assert_eq!((b.due, b.measured), (None, true));
        assert_eq!(t.claim(start + ms(20)), None);
    }

    #[test]
    fn counted_runs_measure_exactly_count_events() {
        let start = Instant::now();
        let t = Tickets::new(
            start,
            Plan {
                warmup: ms(10),
                stop: Stop::Count(10),
                rate: None,
                batch: 4,
            },
        );
        assert!(!t.claim(start).unwrap().measured, "warmup");
        let measured: Vec<u32> = std::iter::from_fn(|| t.claim(start + ms(10)))
            .map(|ticket| {
                assert!(ticket.measured);
                ticket.events
            })
            .collect();
        assert_eq!(measured, vec![4, 4, 2]);
    }

    #[test]
    fn recorder_weights_events_and_merges() {
        let start = Instant::now();
        let mut a = Recorder::new().unwrap();
        a.record(Duration::from_micros(100), 3, start + ms(1));
        let mut b = Recorder::new().unwrap();
        b.record(Duration::from_micros(1000), 1, start + ms(5));
        b.record(Duration::ZERO, 1, start + ms(2));
        a.merge(&b);
        assert_eq!(a.events, 5);
        assert_eq!(a.latency_us.len(), 5);
        assert_eq!(a.latency_us.min(), 1, "zero is recorded as 1 µs");
        assert_eq!(a.latency_us.value_at_quantile(0.5), 100);
        assert!(a.latency_us.equivalent(a.latency_us.max(), 1000));
        assert_eq!(a.last, Some(start + ms(5)));
        assert!((a.window_secs(start) - 0.005).abs() < 1e-9);
    }
}
