//! The dispatcher loop, one per consumer group and partition and one per
//! pipeline run, and the push of deliveries to members' connections (on
//! this shard or over the mesh).
//!
//! **One loop** ([`run_dispatcher`]) drives both: a group and a pipeline
//! run each implement [`Dispatched`] (a round that hands out and pushes
//! what it can, what it waits for when idle, whether it is closed), over
//! the dispatch core of `deliver`. After a round that handed something
//! out it runs another at once; after one that handed nothing out it
//! sleeps until something it could act on happens: its `wake` (attach,
//! detach, settlements, removal), an append to its source partition if
//! that could give it work, or its next due time (an exact ack deadline or
//! retry time: no polling tick). A group without members waits for its
//! `wake` alone, so an idle group costs no CPU. A group or a pipeline run
//! whose round held deliveries back for a member whose connection had no
//! room (its outbox full, see `group::room`) also waits for that
//! connection to write ([`Dispatched::drained`], kept by [`HeldBack`]).
//!
//! **Failures back off.** A round that fails (a read of the log refused,
//! an append of a pipeline record failed) is logged and retried after
//! 1 ms, doubling with every failure in a row up to [`BACKOFF_MAX`], and
//! back to 1 ms after a round that succeeds: a partition whose reads keep
//! failing costs one round and one warning a second, not a busy loop. The
//! back-off is not cut short by wakes or appends (they are what a busy
//! failing partition has plenty of); the round after it sees everything
//! that happened meanwhile.
//!
//! The loop reads time only through the target's clock and sleeps on the
//! shard's runtime, so the shard simulation drives it on its own clock.

use std::future::Future;
use std::pin::pin;

use hadron_engine::notify::Notify;

use super::deliver::IdleWait;
use super::*;

/// The first wait after a failed round; doubles per failure in a row.
const BACKOFF_MIN: Duration = Duration::from_millis(1);
/// The longest wait between failing rounds.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The wait before the next round after failed ones: [`BACKOFF_MIN`],
/// doubling per failure in a row, at most [`BACKOFF_MAX`].
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A round failed: how long to wait before the next one.
    fn failed(&mut self) -> Duration {
        let wait = BACKOFF_MIN
            .saturating_mul(1 << self.failures.min(20))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// A round succeeded.
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What one dispatcher loop drives: a consumer group on a partition, or a
/// pipeline run. Implemented by strong references, which the loop holds
/// only for one turn (it keeps [`Dispatched::Weak`] ones in between, so a
/// removed group or replaced run is dropped).
pub(super) trait Dispatched: Sized {
    /// What a round needs besides the target (the shard, to mint ids and
    /// push).
    type Ctx;
    /// The references kept between turns.
    type Weak;
    /// The target, unless it is gone.
    fn upgrade(weak: &Self::Weak) -> Option<Self>;
    /// Whether it was removed or replaced: the loop ends.
    fn closed(&self) -> bool;
    /// Signalled by attach, detach, settlements and removal.
    fn wake(&self) -> &Notify;
    /// Signalled by appends to the source partition.
    fn appended(&self) -> &Notify;
    /// The monotonic time of the clock its deadlines are on.
    fn now(&self) -> Duration;
    /// What to wait for after a round that handed nothing out.
    fn idle_wait(&self) -> IdleWait;
    /// One round: hands out what it can and pushes it. Whether it handed
    /// anything out.
    fn round(&self, ctx: &Self::Ctx) -> impl Future<Output = Result<bool, Error>>;
    /// Logs a failed round.
    fn warn(&self, message: &str);
    /// Resolves when a connection the last round held deliveries back from
    /// (its outbox full) wrote since; never, when there is none.
    fn drained(&self) -> impl Future<Output = ()> {
        futures::future::pending()
    }
}

/// The dispatcher loop of `target` (see the module header): rounds until
/// the target is gone or closed or `stopping` is set, sleeping on `clock`.
pub(super) async fn run_dispatcher<D: Dispatched>(
    ctx: &D::Ctx,
    clock: &impl Clock,
    stopping: &Cell<bool>,
    target: D::Weak,
) {
    let mut backoff = Backoff::default();
    loop {
        let Some(d) = D::upgrade(&target) else { return };
        if d.closed() || stopping.get() {
            return;
        }
        let wake_gen = d.wake().generation();
        let data_gen = d.appended().generation();
        match d.round(ctx).await {
            Ok(true) => {
                backoff.reset();
                continue;
            }
            Ok(false) => backoff.reset(),
            Err(e) => {
                d.warn(&e.to_string());
                drop(d);
                clock.sleep(backoff.failed()).await;
                continue;
            }
        }
        idle(&d, clock, wake_gen, data_gen).await;
    }
}

/// Sleeps until `d` could act (see [`Dispatched::idle_wait`]), or its
/// `wake` or (when it asks) `appended` changed since the generations read
/// before its round.
async fn idle<D: Dispatched>(d: &D, clock: &impl Clock, wake_gen: u64, data_gen: u64) {
    let idle = d.idle_wait();
    let appended = pin!(async {
        if idle.appends {
            d.appended().changed_since(data_gen).await;
        } else {
            futures::future::pending::<()>().await;
        }
    });
    let due = pin!(async {
        match idle.until {
            // At least 1 ms, so that a time due during the round costs one
            // more round, not a busy loop.
            Some(t) => {
                clock
                    .sleep(t.saturating_sub(d.now()).max(BACKOFF_MIN))
                    .await
            }
            None => futures::future::pending::<()>().await,
        }
    });
    let woke = pin!(d.wake().changed_since(wake_gen));
    let drained = pin!(d.drained());
    let woken = select(select(woke, appended), drained);
    let _ = select(woken, due).await;
}

/// A group's dispatcher drives the group and its partition.
struct GroupDispatch<S: Storage, R: Runtime> {
    g: Rc<GroupPartition<R>>,
    p: Rc<Partition<S, R>>,
    held_back: HeldBack,
}

/// A pipeline run's dispatcher drives the run.
struct PipelineDispatch<S: Storage, R: Runtime> {
    run: Rc<PipelineRun<S, R>>,
    held_back: HeldBack,
}

/// The outboxes the last round held deliveries back from, with their
/// written generation when the round read their room: what
/// [`Dispatched::drained`] waits on.
#[derive(Default)]
struct HeldBack(RefCell<Vec<(Rc<Outbox>, u64)>>);

impl HeldBack {
    /// Keeps the outboxes `room` was asked about of the members the round
    /// left `blocked`.
    fn keep<S: Storage, R: Runtime>(&self, room: OutboxRoom<'_, S, R>, blocked: &[MemberId]) {
        *self.0.borrow_mut() = (room.asked.into_inner().into_iter())
            .filter(|(member, _, _)| blocked.contains(member))
            .map(|(_, outbox, generation)| (outbox, generation))
            .collect();
    }

    /// Resolves when one of them wrote since; never, when there is none.
    fn drained(&self) -> impl Future<Output = ()> + use<> {
        let held_back = self.0.borrow().clone();
        async move {
            if held_back.is_empty() {
                return futures::future::pending().await;
            }
            let writes = held_back
                .iter()
                .map(|(outbox, generation)| Box::pin(outbox.written_since(*generation)));
            futures::future::select_all(writes).await;
        }
    }
}

/// The room of this shard's connections for one round: what each
/// member's outbox can take below `outboxBytesMax` (unknown for a member
/// on another shard; nothing for a connection gone). Keeps the outboxes it
/// was asked about, with their written generation, so that the dispatcher
/// can wait for a blocked one to write.
struct OutboxRoom<'a, S: Storage, R: Runtime> {
    shard: &'a Shard<S, R>,
    asked: RefCell<Vec<(MemberId, Rc<Outbox>, u64)>>,
}

impl<'a, S: Storage, R: Runtime> OutboxRoom<'a, S, R> {
    fn new(shard: &'a Shard<S, R>) -> Self {
        OutboxRoom {
            shard,
            asked: RefCell::default(),
        }
    }
}

impl<S: Storage, R: Runtime> group::ConnRoom for OutboxRoom<'_, S, R> {
    fn free_bytes(&self, member: MemberId) -> u64 {
        if member.shard != self.shard.id {
            return u64::MAX;
        }
        let Some(outbox) = self.shard.conns.borrow().get(&member.conn).cloned() else {
            return 0;
        };
        let generation = outbox.written_generation();
        let max = self.shard.settings.config.outbox_bytes_max as u64;
        let free = delivery_room(outbox.pending_bytes(), max);
        self.asked.borrow_mut().push((member, outbox, generation));
        free
    }
}

/// A connection's outbox takes deliveries again only once what is queued
/// fell to this percentage of `outboxBytesMax`.
///
/// A request (an ack among them) is admitted only while its answer fits
/// the outbox (`conn::admit`), and a round runs at every write of a
/// connection it held deliveries back from: topping the outbox up to the
/// limit at every write kept the answers out, so a stage handler that
/// sent its acks without waiting for each answer had them read only after
/// their deliveries' ack timeouts, over and over (one execution out of 200
/// failed after 10 attempts in the limits test). Between this mark and the
/// limit, each write lets requests in.
const OUTBOX_REFILL_PERCENT: u64 = 50;
const _: () = assert!(OUTBOX_REFILL_PERCENT < 100);

/// The bytes of deliveries an outbox holding `pending` bytes can take,
/// with a limit of `max`: nothing above [`OUTBOX_REFILL_PERCENT`] of it.
fn delivery_room(pending: u64, max: u64) -> u64 {
    if pending.saturating_mul(100) > max.saturating_mul(OUTBOX_REFILL_PERCENT) {
        return 0;
    }
    max - pending
}

impl<S: Storage + Clone + 'static, R: Runtime> Dispatched for GroupDispatch<S, R> {
    type Ctx = Rc<Shard<S, R>>;
    type Weak = (Weak<GroupPartition<R>>, Weak<Partition<S, R>>);

    fn upgrade((g, p): &Self::Weak) -> Option<Self> {
        Some(GroupDispatch {
            g: g.upgrade()?,
            p: p.upgrade()?,
            held_back: HeldBack::default(),
        })
    }

    fn closed(&self) -> bool {
        self.g.closed.get()
    }

    fn wake(&self) -> &Notify {
        &self.g.wake
    }

    fn appended(&self) -> &Notify {
        &self.p.appended
    }

    fn now(&self) -> Duration {
        self.g.clock().now()
    }

    fn idle_wait(&self) -> IdleWait {
        self.g.idle_wait()
    }

    async fn round(&self, shard: &Rc<Shard<S, R>>) -> Result<bool, Error> {
        let room = OutboxRoom::new(shard);
        let out = self.g.round(&self.p, &|| shard.unique_id(), &room).await?;
        self.held_back.keep(room, &self.g.room_blocked());
        let handed = !out.is_empty();
        shard.send_deliveries(&self.p, out).await;
        Ok(handed)
    }

    fn warn(&self, message: &str) {
        let (g, p) = (&self.g, &self.p);
        tracing::warn!(group = %g.group, stream = %p.stream, partition = p.partition, "dispatch failed: {message}");
    }

    fn drained(&self) -> impl Future<Output = ()> {
        self.held_back.drained()
    }
}

impl<S: Storage + Clone + 'static, R: Runtime> Dispatched for PipelineDispatch<S, R> {
    type Ctx = Rc<Shard<S, R>>;
    type Weak = Weak<PipelineRun<S, R>>;

    fn upgrade(run: &Self::Weak) -> Option<Self> {
        Some(PipelineDispatch {
            run: run.upgrade()?,
            held_back: HeldBack::default(),
        })
    }

    fn closed(&self) -> bool {
        self.run.closed.get()
    }

    fn wake(&self) -> &Notify {
        &self.run.wake
    }

    fn appended(&self) -> &Notify {
        &self.run.source.appended
    }

    fn now(&self) -> Duration {
        self.run.source.clock().now()
    }

    fn idle_wait(&self) -> IdleWait {
        self.run.idle_wait()
    }

    /// Also starts a checkpoint of the outputs log when it has grown
    /// enough (in its own task: dispatch goes on meanwhile).
    async fn round(&self, shard: &Rc<Shard<S, R>>) -> Result<bool, Error> {
        if self.run.claim_checkpoint() {
            let run = self.run.clone();
            shard.runtime.spawn(async move {
                if let Err(e) = run.checkpoint().await {
                    tracing::warn!(pipeline = %run.plan.name, partition = run.source.partition, "checkpoint failed: {e}");
                }
            });
        }
        let room = OutboxRoom::new(shard);
        let out = self.run.round(&|| shard.unique_id(), &room).await?;
        self.held_back.keep(room, &self.run.room_blocked());
        for d in &out {
            shard.push(d.member, &self.run.delivery_message(d)).await;
        }
        Ok(!out.is_empty())
    }

    fn warn(&self, message: &str) {
        let run = &self.run;
        tracing::warn!(pipeline = %run.plan.name, partition = run.source.partition, "dispatch failed: {message}");
    }

    fn drained(&self) -> impl Future<Output = ()> {
        self.held_back.drained()
    }
}

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// A group's dispatcher: hands out deliveries until the group closes.
    pub(super) async fn dispatch(
        self: Rc<Self>,
        group: Weak<GroupPartition<R>>,
        partition: Weak<Partition<S, R>>,
    ) {
        let target = (group, partition);
        run_dispatcher::<GroupDispatch<S, R>>(&self, &self.runtime, &self.stopping, target).await;
    }

    /// A pipeline run's dispatcher: hands out stage deliveries until the
    /// run closes.
    pub(super) async fn dispatch_pipeline(self: Rc<Self>, run: Weak<PipelineRun<S, R>>) {
        run_dispatcher::<PipelineDispatch<S, R>>(&self, &self.runtime, &self.stopping, run).await;
    }

    /// Sends a push to a member's connection, on whichever shard it is: a
    /// local connection gets it encoded straight into its outbox.
    pub(super) async fn push(&self, member: MemberId, message: &hadron_wire::Message<'_>) {
        if member.shard == self.id {
            if let Some(outbox) = self.congestion_checked(member.conn)
                && let Err(e) = outbox.try_send(0, message)
            {
                tracing::error!("cannot encode a {}: {e}", message.name());
            }
            return;
        }
        let frame = match outbox::encode(0, message) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!("cannot encode a {}: {e}", message.name());
                return;
            }
        };
        let msg = MeshMsg::Push {
            conn: member.conn,
            frame,
        };
        let _ = self.mesh.send_to(member.shard, msg).await;
    }

    /// The outbox of connection `conn` of this shard, unless its answers
    /// and deliveries not yet written are above `outboxBytesMax`: a
    /// connection that does not read receives no more deliveries until it
    /// drains. A delivery pushed to a full outbox is dropped; it stays in
    /// flight with its member and goes out again after its ack timeout
    /// (counted as a redelivery), so a slow reader costs only its own
    /// budget, never the server's memory.
    pub(super) fn congestion_checked(&self, conn: u64) -> Option<Rc<Outbox>> {
        let outbox = self.conns.borrow().get(&conn).cloned()?;
        if outbox.pending_bytes() > self.settings.config.outbox_bytes_max as u64 {
            let dropped = self.dropped_deliveries.get() + 1;
            self.dropped_deliveries.set(dropped);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    shard = self.id,
                    "{dropped} deliveries held back so far: a connection does not read and its outbox is above outboxBytesMax; they go out again after their ack timeout"
                );
            }
            return None;
        }
        Some(outbox)
    }

    pub(super) async fn send_deliveries(&self, p: &Partition<S, R>, out: Vec<Outgoing>) {
        for d in out {
            let message = hadron_wire::Message::Delivery(hadron_wire::Delivery {
                subscription_id: d.member.subscription,
                delivery_id: d.delivery_id,
                stream: &p.stream,
                partition: p.partition,
                offset: d.offset,
                attempt: d.attempt,
                event: &d.event,
            });
            self.push(d.member, &message).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;

    use super::*;
    use crate::shard::clock::sim::SimClock;

    /// A target whose rounds return what the test queued (then
    /// `Ok(false)`), and record when they ran.
    struct Fake {
        clock: SimClock,
        wake: Notify,
        appended: Notify,
        closed: Cell<bool>,
        idle: Cell<IdleWait>,
        results: RefCell<VecDeque<Result<bool, Error>>>,
        /// Milliseconds of the clock at each round.
        rounds: RefCell<Vec<u128>>,
        /// Stands for the writes of a connection the rounds held
        /// deliveries back from, when `holding_back` is set.
        written: Notify,
        holding_back: Cell<bool>,
        /// `written`'s generation when the last round ran.
        written_gen: Cell<u64>,
    }

    impl Dispatched for Rc<Fake> {
        type Ctx = ();
        type Weak = Weak<Fake>;

        fn upgrade(weak: &Self::Weak) -> Option<Self> {
            weak.upgrade()
        }

        fn closed(&self) -> bool {
            self.closed.get()
        }

        fn wake(&self) -> &Notify {
            &self.wake
        }

        fn appended(&self) -> &Notify {
            &self.appended
        }

        fn now(&self) -> Duration {
            self.clock.now()
        }

        fn idle_wait(&self) -> IdleWait {
            self.idle.get()
        }

        async fn round(&self, _: &()) -> Result<bool, Error> {
            self.written_gen.set(self.written.generation());
            self.rounds.borrow_mut().push(self.clock.now().as_millis());
            self.results.borrow_mut().pop_front().unwrap_or(Ok(false))
        }

        fn warn(&self, _: &str) {}

        async fn drained(&self) {
            if !self.holding_back.get() {
                return futures::future::pending().await;
            }
            self.written.changed_since(self.written_gen.get()).await;
        }
    }

    /// A fake waiting for `idle`, its loop spawned on `pool` (which sets
    /// the returned flag when the loop ends).
    fn start(pool: &LocalPool, idle: IdleWait) -> (Rc<Fake>, Rc<Cell<bool>>) {
        let clock = SimClock::new(0);
        let fake = Rc::new(Fake {
            clock: clock.clone(),
            wake: Notify::default(),
            appended: Notify::default(),
            closed: Cell::new(false),
            idle: Cell::new(idle),
            results: RefCell::default(),
            rounds: RefCell::default(),
            written: Notify::default(),
            holding_back: Cell::new(false),
            written_gen: Cell::new(0),
        });
        let (weak, ended) = (Rc::downgrade(&fake), Rc::new(Cell::new(false)));
        let done = ended.clone();
        let task = async move {
            let stopping = Cell::new(false);
            run_dispatcher::<Rc<Fake>>(&(), &clock, &stopping, weak).await;
            done.set(true);
        };
        pool.spawner().spawn_local(task).unwrap();
        (fake, ended)
    }

    /// Runs `pool` and moves the time to each sleeper's deadline until no
    /// sleeper is left.
    fn run_timers(pool: &mut LocalPool, clock: &SimClock) {
        for _ in 0..100 {
            pool.run_until_stalled();
            let Some(t) = clock.next_deadline() else {
                return;
            };
            clock.advance(t.saturating_sub(clock.now()));
        }
        panic!("the loop never went idle");
    }

    fn failure() -> Result<bool, Error> {
        Err(Error::Internal("read failed".into()))
    }

    const NOTHING: IdleWait = IdleWait {
        appends: false,
        until: None,
    };

    /// Failed rounds are retried after 1, 2, 4 ... ms, at most 1 s apart,
    /// and wakes and appends do not cut a back-off short; a round that
    /// succeeds resets it to 1 ms.
    #[test]
    fn failing_rounds_back_off_exponentially_and_a_success_resets_it() {
        let mut pool = LocalPool::new();
        let (fake, ended) = start(&pool, NOTHING);
        fake.results.borrow_mut().extend((0..12).map(|_| failure()));
        run_timers(&mut pool, &fake.clock);
        assert_eq!(
            *fake.rounds.borrow(),
            [0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 2023, 3023],
            "the 13th round succeeded"
        );
        fake.results.borrow_mut().extend([failure(), failure()]);
        fake.wake.notify_all();
        pool.run_until_stalled();
        assert_eq!(fake.rounds.borrow().len(), 14);
        fake.wake.notify_all();
        fake.appended.notify_all();
        pool.run_until_stalled();
        assert_eq!(fake.rounds.borrow().len(), 14, "backing off");
        run_timers(&mut pool, &fake.clock);
        assert_eq!(fake.rounds.borrow()[13..], [3023, 3024, 3026]);
        fake.closed.set(true);
        fake.wake.notify_all();
        pool.run_until_stalled();
        assert!(ended.get(), "a closed target ends its loop");
    }

    /// An idle loop sleeps until its due time (exactly, no tick), wakes for
    /// an append only when it asked for appends, always for `wake`, and
    /// runs rounds back to back while they hand something out.
    #[test]
    fn an_idle_loop_wakes_only_for_what_it_waits_for() {
        let mut pool = LocalPool::new();
        let due = IdleWait {
            appends: false,
            until: Some(Duration::from_millis(50)),
        };
        let (fake, ended) = start(&pool, due);
        let clock = fake.clock.clone();
        pool.run_until_stalled();
        assert_eq!(*fake.rounds.borrow(), [0]);
        assert_eq!(clock.next_deadline(), Some(Duration::from_millis(50)));
        fake.appended.notify_all();
        clock.advance(Duration::from_millis(49));
        pool.run_until_stalled();
        assert_eq!(*fake.rounds.borrow(), [0], "appends were not asked for");
        fake.idle.set(IdleWait {
            appends: true,
            until: None,
        });
        clock.advance(Duration::from_millis(1));
        pool.run_until_stalled();
        assert_eq!(*fake.rounds.borrow(), [0, 50]);
        assert_eq!(clock.next_deadline(), None, "nothing due: no timer");
        fake.results.borrow_mut().extend([Ok(true), Ok(true)]);
        fake.appended.notify_all();
        pool.run_until_stalled();
        assert_eq!(*fake.rounds.borrow(), [0, 50, 50, 50, 50]);
        fake.idle.set(NOTHING);
        fake.wake.notify_all();
        pool.run_until_stalled();
        assert_eq!(fake.rounds.borrow().len(), 6);
        fake.appended.notify_all();
        pool.run_until_stalled();
        assert_eq!(fake.rounds.borrow().len(), 6, "no appends asked for now");
        assert!(!ended.get());
    }

    /// A loop whose round held deliveries back for a full connection
    /// runs its next round when that connection writes, with no timer; a
    /// write it was not waiting for wakes nothing.
    #[test]
    fn an_idle_loop_wakes_when_a_held_back_connection_writes() {
        let mut pool = LocalPool::new();
        let (fake, ended) = start(&pool, NOTHING);
        pool.run_until_stalled();
        assert_eq!(fake.rounds.borrow().len(), 1);
        fake.written.notify_all();
        pool.run_until_stalled();
        assert_eq!(fake.rounds.borrow().len(), 1, "nothing was held back");
        fake.holding_back.set(true);
        fake.wake.notify_all();
        pool.run_until_stalled();
        assert_eq!(fake.rounds.borrow().len(), 2);
        assert_eq!(fake.clock.next_deadline(), None, "no timer");
        fake.written.notify_all();
        pool.run_until_stalled();
        assert_eq!(fake.rounds.borrow().len(), 3, "the write woke it");
        assert!(!ended.get());
    }

    /// An outbox takes deliveries up to its limit once it is at most half
    /// full, and none above that, so that answers get in between.
    #[test]
    fn an_outbox_takes_deliveries_again_only_once_half_drained() {
        const MAX: u64 = 1 << 20;
        assert_eq!(delivery_room(0, MAX), MAX);
        assert_eq!(delivery_room(MAX / 2, MAX), MAX / 2);
        assert_eq!(delivery_room(MAX / 2 + 1, MAX), 0);
        assert_eq!(delivery_room(MAX, MAX), 0);
        assert_eq!(
            delivery_room(MAX + (60 << 10), MAX),
            0,
            "overshot by a frame"
        );
    }

    #[test]
    fn backoff_doubles_from_1_ms_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..13).map(|_| b.failed().as_millis()).collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000, 1000]
        );
        b.reset();
        assert_eq!(b.failed(), BACKOFF_MIN);
    }
}
