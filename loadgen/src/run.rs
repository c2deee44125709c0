//! What every target shares: the worker loop that claims tickets, waits
//! for their due time, sends and records; the progress line; payloads that
//! carry their send time.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::Args;
use crate::schedule::{Plan, Recorder, Stop, Ticket, Tickets};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A batch a target could not get acknowledged even after its client's
/// own retries, for a reason that may pass (a cluster electing a leader, a
/// node restarting): the worker counts its events in `Shared::failed` and
/// goes on, where any other error halts the run.
#[derive(Debug)]
pub struct BatchFailed(pub String);

impl std::fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BatchFailed {}

/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

pub fn plan(args: &Args) -> Plan {
    Plan {
        warmup: Duration::from_secs_f64(args.warmup),
        stop: match (args.count, args.duration) {
            (Some(count), _) => Stop::Count(count),
            (None, Some(secs)) => Stop::Duration(Duration::from_secs_f64(secs)),
            // clap requires one of them; measure nothing rather than run
            // forever.
            (None, None) => Stop::Count(0),
        },
        rate: args.rate,
        batch: args.batch,
    }
}

/// State shared by the workers of one run.
#[derive(Debug)]
pub struct Shared {
    pub tickets: Tickets,
    /// Events acknowledged so far, warmup included (for progress).
    pub acked: AtomicU64,
    /// Events of batches that failed with `BatchFailed`, warmup included.
    pub failed: AtomicU64,
}

impl Shared {
    pub fn new(start: Instant, plan: Plan) -> Arc<Shared> {
        Arc::new(Shared {
            tickets: Tickets::new(start, plan),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Nanoseconds from the run's start to `at` (0 before it).
    pub fn stamp(&self, at: Instant) -> u64 {
        nanos_between(self.tickets.start(), at)
    }
}

pub fn nanos_between(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_nanos()).unwrap_or(u64::MAX)
}

/// Sends one ticket's batch on one connection.
pub trait BatchSender: Send + 'static {
    /// Sends `ticket.events` events stamped with `stamp_ns` and returns
    /// when they were acknowledged.
    fn send(
        &mut self,
        ticket: &Ticket,
        stamp_ns: u64,
    ) -> impl Future<Output = Result<Instant, Error>> + Send;
}

/// Claims and sends tickets until the run ends; records ack latency of the
/// measured ones. A `BatchFailed` send is counted (the first one said on
/// stderr); any other failed send halts every worker.
pub async fn worker<S: BatchSender>(shared: Arc<Shared>, mut sender: S) -> Result<Recorder, Error> {
    let mut recorder = Recorder::new()?;
    loop {
        let claimed = Instant::now();
        let Some(ticket) = shared.tickets.claim(claimed) else {
            break;
        };
        if let Some(due) = ticket.due {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = latency_start(ticket.due, claimed, Instant::now());
        let acked = match sender.send(&ticket, shared.stamp(sent)).await {
            Ok(at) => at,
            Err(e) => {
                if let Some(failed) = e.downcast_ref::<BatchFailed>() {
                    let before = shared
                        .failed
                        .fetch_add(u64::from(ticket.events), Ordering::Relaxed);
                    if before == 0 {
                        eprintln!("loadgen: a batch failed, counted and going on: {failed}");
                    }
                    continue;
                }
                shared.tickets.halt();
                return Err(e);
            }
        };
        shared
            .acked
            .fetch_add(u64::from(ticket.events), Ordering::Relaxed);
        if ticket.measured {
            recorder.record(acked.saturating_duration_since(sent), ticket.events, acked);
        }
    }
    Ok(recorder)
}

/// When a batch's latency starts, for a batch `due` then (under a rate),
/// claimed by its worker at `claimed` and released by the timer at `woke`.
///
/// - A worker that claimed its batch late (`claimed >= due`) was held up by
///   the answer to its previous batch: latency runs from `due`, so a stall
///   counts for every batch it delays (coordinated omission corrected).
/// - A worker that claimed it early sat idle until the timer let it go:
///   latency runs from `woke`, but from no later than `TIMER_SLACK` past
///   `due`. Tokio's timer rounds a deadline up to its next millisecond
///   tick, so `woke` is up to about 1 ms past `due`; that slack is the load
///   generator's, and counting it made a 0.2 ms answer read as up to
///   1.2 ms at any fixed rate. A later wake (a busy runtime, a CPU the
///   server also wants) still counts.
/// - Without a rate the batch goes at once: from `woke`.
pub fn latency_start(due: Option<Instant>, claimed: Instant, woke: Instant) -> Instant {
    match due {
        Some(due) if claimed >= due => due,
        Some(due) => woke.min(due + TIMER_SLACK),
        None => woke,
    }
}

/// The most of a timer's lateness `latency_start` leaves out: tokio's
/// timer tick.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Runs the workers to the end and merges what they measured; the first
/// error wins.
pub async fn drive<S: BatchSender>(
    shared: &Arc<Shared>,
    senders: Vec<S>,
) -> Result<Recorder, Error> {
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|s| tokio::spawn(worker(Arc::clone(shared), s)))
        .collect();
    let mut total = Recorder::new()?;
    let mut first_error: Option<Error> = None;
    for task in tasks {
        match task.await {
            Ok(Ok(r)) => total.merge(&r),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("a worker task failed: {e}").into());
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// `size` data bytes; the first 8 carry the stamp when they fit.
pub fn payload(template: &[u8], stamp_ns: u64) -> Vec<u8> {
    let mut data = template.to_vec();
    if let Some(head) = data.get_mut(..8) {
        head.copy_from_slice(&stamp_ns.to_le_bytes());
    }
    data
}

/// The stamp in a payload made by `payload`.
pub fn stamp_of(data: &[u8]) -> Option<u64> {
    let head: [u8; 8] = data.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// A filler that does not compress to nothing.
pub fn template(size: u32) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The progress line on stderr (hidden when stderr is not a terminal).
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// `extra` adds scenario figures (deliveries, executions) to the line.
    pub fn start(
        shared: &Arc<Shared>,
        label: &str,
        extra: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    ) -> Progress {
        let plan = *shared.tickets.plan();
        let (len, by_time) = match plan.stop {
            Stop::Duration(d) => (
                u64::try_from((plan.warmup + d).as_millis()).unwrap_or(u64::MAX),
                true,
            ),
            Stop::Count(n) => (n, false),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let template = "{prefix} [{elapsed_precise}] {bar:30} {msg}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_owned());
        let shared = Arc::clone(shared);
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            let mut last = (Instant::now(), 0u64);
            // Acked events at the end of the warmup: a counted run's bar
            // shows measured events only.
            let mut base: Option<u64> = None;
            loop {
                tick.tick().await;
                let now = Instant::now();
                let acked = shared.acked.load(Ordering::Relaxed);
                let rate = (acked - last.1.min(acked)) as f64
                    / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, acked);
                let warmup = now < shared.tickets.warmup_end();
                let start = shared.tickets.start();
                if by_time {
                    b.set_position(
                        u64::try_from(now.saturating_duration_since(start).as_millis())
                            .unwrap_or(u64::MAX),
                    );
                } else if !warmup {
                    let base = *base.get_or_insert(acked);
                    b.set_position((acked - base).min(len));
                }
                let extra = extra.as_ref().map(|f| f()).unwrap_or_default();
                b.set_message(format!(
                    "{}{acked} acked, {rate:.0} events/s{extra}",
                    if warmup { "warmup: " } else { "" }
                ));
            }
        });
        Progress { bar, task }
    }

    pub fn note(&self, message: &str) {
        self.bar.set_message(message.to_owned());
    }

    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_starts_at_the_due_time_only_for_a_late_claim() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        // Claimed on time, released 700 us late by the timer: the timer's
        // slack is not the server's.
        assert_eq!(latency_start(Some(at(1000)), at(0), at(1700)), at(1700));
        // Released 3 ms late: past the timer's tick, the rest counts.
        assert_eq!(latency_start(Some(at(1000)), at(0), at(4000)), at(2000));
        // Claimed after its due time (the previous batch was slow): the
        // lateness counts.
        assert_eq!(latency_start(Some(at(1000)), at(5000), at(5001)), at(1000));
        assert_eq!(latency_start(Some(at(1000)), at(1000), at(1001)), at(1000));
        // No rate: from the send.
        assert_eq!(latency_start(None, at(0), at(3)), at(3));
    }

    #[test]
    fn payload_carries_the_stamp() {
        let t = template(32);
        assert_eq!(t.len(), 32);
        let p = payload(&t, 0x0102_0304_0506_0708);
        assert_eq!(p.len(), 32);
        assert_eq!(stamp_of(&p), Some(0x0102_0304_0506_0708));
        assert_eq!(&p[8..], &t[8..]);
        // Too small for a stamp: left as it is.
        assert_eq!(payload(&template(4), 7), template(4));
        assert_eq!(stamp_of(&[1, 2, 3]), None);
    }

    #[test]
    fn plan_from_flags() {
        use crate::args::Cli;
        use clap::Parser;
        let cli = Cli::try_parse_from(
            "loadgen publish --count 50 --batch 5 --rate 100 --warmup 0.25".split_whitespace(),
        )
        .unwrap();
        let p = plan(cli.scenario.args());
        assert_eq!(p.stop, Stop::Count(50));
        assert_eq!(p.warmup, Duration::from_millis(250));
        assert_eq!((p.rate, p.batch), (Some(100.0), 5));
    }

    struct Instant0;

    impl BatchSender for Instant0 {
        async fn send(&mut self, _: &Ticket, _: u64) -> Result<Instant, Error> {
            Ok(Instant::now())
        }
    }

    #[tokio::test]
    async fn workers_measure_exactly_the_counted_events() {
        let shared = Shared::new(
            Instant::now(),
            Plan {
                warmup: Duration::ZERO,
                stop: Stop::Count(1001),
                rate: None,
                batch: 10,
            },
        );
        let r = drive(&shared, (0..4).map(|_| Instant0).collect())
            .await
            .unwrap();
        assert_eq!(r.events, 1001);
        assert_eq!(r.latency_us.len(), 1001);
        assert_eq!(shared.acked.load(Ordering::Relaxed), 1001);
    }

    /// Fails every third batch as `BatchFailed`, and batch `fatal` (if
    /// any) with another error.
    struct Flaky {
        fatal: Option<u64>,
    }

    impl BatchSender for Flaky {
        async fn send(&mut self, ticket: &Ticket, _: u64) -> Result<Instant, Error> {
            if Some(ticket.index) == self.fatal {
                return Err("refused".into());
            }
            if ticket.index.is_multiple_of(3) {
                return Err(BatchFailed(format!("batch {} timed out", ticket.index)).into());
            }
            Ok(Instant::now())
        }
    }

    fn count_plan(events: u64) -> Plan {
        Plan {
            warmup: Duration::ZERO,
            stop: Stop::Count(events),
            rate: None,
            batch: 10,
        }
    }

    #[tokio::test]
    async fn batches_failed_after_retries_are_counted_and_the_run_goes_on() {
        let shared = Shared::new(Instant::now(), count_plan(90));
        let r = drive(&shared, (0..2).map(|_| Flaky { fatal: None }).collect())
            .await
            .unwrap();
        // Batches 0, 3 and 6 of 0..9 failed.
        assert_eq!(shared.failed.load(Ordering::Relaxed), 30);
        assert_eq!(shared.acked.load(Ordering::Relaxed), 60);
        assert_eq!(r.events, 60);

        let shared = Shared::new(Instant::now(), count_plan(90));
        let e = drive(&shared, vec![Flaky { fatal: Some(4) }])
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "refused", "any other error halts the run");
    }

    #[tokio::test]
    async fn a_fixed_rate_run_keeps_its_schedule() {
        let start = Instant::now();
        let shared = Shared::new(
            start,
            Plan {
                warmup: Duration::ZERO,
                stop: Stop::Duration(Duration::from_millis(300)),
                rate: Some(200.0),
                batch: 2,
            },
        );
        let r = drive(&shared, (0..2).map(|_| Instant0).collect())
            .await
            .unwrap();
        // 300 ms at 100 batches/s of 2 events.
        assert_eq!(r.events, 60);
        assert!(start.elapsed() >= Duration::from_millis(290));
    }
}
