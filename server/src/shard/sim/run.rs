//! The steps of a shard simulation run (see the module header of `sim`).

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::task::LocalSpawnExt;
use hadron_engine::storage::sim::CrashMode;
use hadron_wire::{ErrorCode, Limits, Message};

use super::model::{self, BILLING, Event, STAGES};
use super::*;
use crate::shard::clock::Clock;
use crate::shard::group::MemberId;
use crate::shard::{Partition, Request};

impl Sim {
    pub(super) fn new(seed: u64) -> Sim {
        Sim {
            rng: SimRng::new(seed ^ 0x5AAD_51B0),
            storage: SimStorage::new(seed, QUIET),
            clock: SimClock::new(EPOCH_MS),
            settings: settings(),
            resources: MemResources::default(),
            model: Model::default(),
            clients: (0..CLIENTS).map(|_| Client::default()).collect(),
            next_conn: 0,
            tried_streams: BTreeSet::new(),
            trace: 0,
            coverage: Coverage::default(),
            debug: std::env::var_os("HADRON_SIM_DEBUG").is_some(),
        }
    }

    fn debug(&self, what: impl FnOnce() -> String) {
        if self.debug {
            eprintln!("[{} ms] {}", self.clock.now_ms() - EPOCH_MS, what());
        }
    }

    fn note(&mut self, value: u64) {
        self.trace = crate::shard::sim_support::fold_trace(self.trace, value);
    }

    /// Runs the seed; returns the trace digest and what it exercised.
    pub(super) fn run(mut self) -> (u64, Coverage) {
        for no in 0..LIVES {
            let mut life = self.open_life(no);
            if no + 1 == LIVES {
                self.final_drain(&mut life);
                break;
            }
            self.live(&mut life);
            self.end_life(life);
        }
        (self.trace, self.coverage)
    }

    /// Starts every shard on the disk as the last life left it, installs
    /// the persisted resources (the first life applies them), checks the
    /// logs, and connects a handler or two.
    pub(super) fn open_life(&mut self, no: u64) -> Life {
        let pool = LocalPool::new();
        self.clock.set_spawner(pool.spawner());
        let registry = Rc::new(RefCell::new(Vec::new()));
        let shards: Vec<Rc<SimShard>> = (0..SHARDS)
            .map(|id| {
                Rc::new(Shard::new(
                    id,
                    self.settings.clone(),
                    self.storage.clone(),
                    self.clock.clone(),
                    Box::new(SimMesh {
                        from: id,
                        shards: registry.clone(),
                    }),
                    Box::new(self.resources.clone()),
                ))
            })
            .collect();
        *registry.borrow_mut() = shards.iter().map(Rc::downgrade).collect();
        let mut life = Life {
            no,
            pool,
            shards,
            handlers: Vec::new(),
            outcomes: Rc::default(),
            running: Rc::default(),
        };
        let persisted = self.resources.0.borrow().clone();
        let topology = topology_of(&persisted);
        for shard in life.shards.clone() {
            let installed = life.pool.run_until(shard.install(topology.clone()));
            if let Err(e) = installed {
                panic!("life {no}: shard {} does not start: {e}", shard.id);
            }
            shard.clone().spawn_housekeeping();
        }
        if no == 0 {
            let yaml = resources_yaml(&BTreeSet::new());
            let reply = life
                .pool
                .run_until(life.shards[0].clone().apply(yaml, false));
            assert!(
                matches!(reply, Reply::Applied(_)),
                "the first apply: {reply:?}"
            );
        } else {
            self.check_restarted(&mut life, &persisted);
        }
        for _ in 0..self.rng.below(2) + 1 {
            self.connect(&mut life, STAGES.len());
        }
        self.connect_group(&mut life);
        self.settle(&mut life);
        life
    }

    /// After a restart: every shard installed exactly the resources
    /// applied, and every partition's log holds what the model says.
    fn check_restarted(&mut self, life: &mut Life, persisted: &[Resource]) {
        let no = life.no;
        let streams: BTreeSet<String> = persisted
            .iter()
            .filter_map(|r| match r {
                Resource::Stream(s) if s.name != STREAM => Some(s.name.clone()),
                _ => None,
            })
            .collect();
        assert!(
            self.model.extra_streams.is_subset(&streams) && streams.is_subset(&self.tried_streams),
            "life {no}: the restart installed streams {streams:?}; applied {:?}, tried {:?}",
            self.model.extra_streams,
            self.tried_streams
        );
        self.model.extra_streams = streams;
        for partition in 0..PARTITIONS {
            let p = self.partition(life, partition);
            if let Some(damage) = &p.log.recovery().damage {
                panic!("life {no}: a crash taken for damage in partition {partition}: {damage}");
            }
            let records = life.pool.run_until(read_back(&p));
            self.check_log(no, partition, &records);
            let stored = p.stored_offsets.borrow().get(GROUP).copied().unwrap_or(0);
            let first = self.model.group_unacked_first(partition);
            assert!(
                stored <= first,
                "life {no}: the group's stored offset on partition {partition} is {stored}, past offset {first}, which it never acked"
            );
            self.note(stored);
        }
    }

    /// A partition's records against the model.
    fn check_log(&mut self, no: u64, partition: u32, records: &[(u64, Vec<u8>)]) {
        let mut seen = BTreeSet::new();
        for (offset, bytes) in records {
            let what = format!("life {no}: partition {partition} offset {offset}");
            let Some(event) = self.model.event_of(bytes) else {
                panic!("{what} holds bytes never published");
            };
            assert!(seen.insert(event), "{what}: event {event} is stored twice");
            self.model.learn((partition, *offset), event, &what);
            self.note(event as u64);
        }
        let end = records.last().map_or(0, |(o, _)| o + 1);
        for (&(p, offset), &event) in self.model.acked.range((partition, 0)..(partition + 1, 0)) {
            assert!(
                offset < end && records[offset as usize].1 == self.model.events[event].bytes,
                "life {no}: the acknowledged event {event} at partition {p} offset {offset} is lost or changed"
            );
        }
    }

    pub(super) fn partition(
        &self,
        life: &Life,
        partition: u32,
    ) -> Rc<Partition<SimStorage, SimClock>> {
        let owner = life.shards[0].owner(STREAM, partition);
        match life.shards[owner as usize].partition(STREAM, partition) {
            Ok(p) => p,
            Err(e) => panic!("life {}: {e}", life.no),
        }
    }

    /// A new handler connection on a random shard, attached on every
    /// partition to `stages` stages (all of them, or one at random).
    fn connect(&mut self, life: &mut Life, stages: usize) {
        let (on, handler) = self.open_conn(life);
        let shard = handler.shard;
        let chosen: Vec<usize> = if stages >= STAGES.len() {
            (0..STAGES.len()).collect()
        } else {
            vec![self.rng.below(STAGES.len() as u64) as usize]
        };
        for stage in chosen {
            for partition in 0..PARTITIONS {
                let req = Request::StageAttach {
                    pipeline: PIPELINE.into(),
                    partition,
                    stage: STAGES[stage].0.into(),
                    max_in_flight: self.rng.below(4) as u32 + 1,
                    member: MemberId {
                        shard,
                        conn: handler.conn,
                        subscription: stage as u64 + 1,
                    },
                };
                let (on, to) = (on.clone(), on.owner(STREAM, partition));
                spawn(life, async move {
                    Outcome::Answered("attach", on.call(to, req).await)
                });
            }
        }
        self.debug(|| format!("conn {} connects on shard {shard}", handler.conn));
        life.handlers.push(handler);
    }

    /// A connection on a random shard, registered there.
    fn open_conn(&mut self, life: &Life) -> (Rc<SimShard>, Handler) {
        self.next_conn += 1;
        let shard = self.rng.below(u64::from(SHARDS)) as u16;
        let handler = Handler {
            shard,
            conn: self.next_conn,
            outbox: Rc::new(Outbox::default()),
        };
        let on = life.shards[shard as usize].clone();
        on.register_conn(handler.conn, handler.outbox.clone());
        (on, handler)
    }

    /// A new consumer of the durable group, on every partition.
    fn connect_group(&mut self, life: &mut Life) {
        let (on, handler) = self.open_conn(life);
        for partition in 0..PARTITIONS {
            let req = Request::Attach {
                stream: STREAM.into(),
                partition,
                group: GROUP.into(),
                durable: true,
                start: hadron_wire::StartPoint::Beginning,
                max_in_flight: self.rng.below(8) as u32 + 1,
                member: MemberId {
                    shard: handler.shard,
                    conn: handler.conn,
                    subscription: GROUP_SUBSCRIPTION,
                },
            };
            let (on, to) = (on.clone(), on.owner(STREAM, partition));
            spawn(life, async move {
                Outcome::Answered("attach", on.call(to, req).await)
            });
        }
        self.debug(|| format!("conn {} joins the group", handler.conn));
        life.handlers.push(handler);
    }

    /// Runs the life's steps until they end or the disk crashes.
    fn live(&mut self, life: &mut Life) {
        if self.rng.below(2) == 0 {
            self.storage.crash_after_ops(self.rng.below(600) + 1);
        }
        let steps = self.rng.below(STEPS_MAX) + 1;
        for _ in 0..steps {
            match self.rng.below(100) {
                0..=29 => self.publish_new(life),
                30..=39 => self.publish_again(life),
                40..=44 => self.apply(life),
                45..=48 => self.reconnect(life),
                _ => {
                    let by = Duration::from_millis(self.rng.below(600) + 1);
                    self.clock.advance(by);
                }
            }
            self.settle(life);
            if self.storage.is_frozen() {
                return;
            }
        }
    }

    /// A client publishes a new batch to a random partition, through a
    /// random shard.
    fn publish_new(&mut self, life: &mut Life) {
        let client = self.rng.below(CLIENTS as u64) as usize;
        if self.clients[client].unanswered.is_some() {
            return self.publish_again(life);
        }
        let partition = self.rng.below(u64::from(PARTITIONS)) as u32;
        let batch: Vec<usize> = (0..self.rng.below(4) + 1)
            .map(|_| self.new_event(client))
            .collect();
        self.clients[client].unanswered = Some((partition, batch.clone()));
        self.publish(life, client, partition, batch);
    }

    /// A client publishes its unanswered batch again (same ids).
    fn publish_again(&mut self, life: &mut Life) {
        let client = self.rng.below(CLIENTS as u64) as usize;
        if let Some((partition, batch)) = self.clients[client].unanswered.clone() {
            self.publish(life, client, partition, batch);
        }
    }

    fn publish(&mut self, life: &mut Life, client: usize, partition: u32, batch: Vec<usize>) {
        let via = life.shards[self.rng.below(u64::from(SHARDS)) as usize].clone();
        let req = Request::Publish {
            stream: STREAM.into(),
            partition,
            events: batch
                .iter()
                .map(|&e| Bytes::from(self.model.events[e].bytes.clone()))
                .collect(),
        };
        let to = via.owner(STREAM, partition);
        spawn(life, async move {
            let reply = via.call(to, req).await;
            Outcome::Published {
                client,
                partition,
                batch,
                reply,
            }
        });
    }

    fn new_event(&mut self, client: usize) -> usize {
        let seq = self.clients[client].next_seq;
        self.clients[client].next_seq += 1;
        let trigger = self.rng.below(10) < 8;
        let doomed = trigger && self.rng.below(10) == 0;
        let data = [self.rng.next_u64().to_le_bytes(), [u8::from(doomed); 8]].concat();
        let bytes = hadron_wire::encode_event(&hadron_wire::EventRef {
            id: &seq.to_string(),
            source: &format!("client-{client}"),
            ty: if trigger {
                model::TRIGGER
            } else {
                "service.noticed"
            },
            data: &data,
            ..hadron_wire::EventRef::default()
        });
        let index = self.model.events.len();
        self.model.by_bytes.insert(bytes.clone(), index);
        self.model.events.push(Event {
            bytes,
            trigger,
            doomed,
        });
        index
    }

    /// An apply through a random shard: the current resources again, with
    /// one more stream, or an invalid document.
    fn apply(&mut self, life: &mut Life) {
        let via = life.shards[self.rng.below(u64::from(SHARDS)) as usize].clone();
        let (yaml, invalid, added) = match self.rng.below(3) {
            0 => (resources_yaml(&self.model.extra_streams), None, None),
            1 => {
                let name = format!("audit-{}", self.tried_streams.len());
                self.tried_streams.insert(name.clone());
                let mut streams = self.model.extra_streams.clone();
                streams.insert(name.clone());
                (resources_yaml(&streams), None, Some(name))
            }
            _ => {
                let (yaml, why) = INVALID_APPLIES[self.rng.below(3) as usize];
                (yaml.to_string(), Some(why), None)
            }
        };
        spawn(life, async move {
            let reply = via.call(0, Request::Apply { yaml, force: false }).await;
            Outcome::Applied {
                invalid,
                added,
                reply,
            }
        });
    }

    /// A handler's connection closes (its deliveries go back at once), and
    /// another connects.
    fn reconnect(&mut self, life: &mut Life) {
        if !life.handlers.is_empty() {
            let h = life
                .handlers
                .remove(self.rng.below(life.handlers.len() as u64) as usize);
            self.coverage.closes += 1;
            let shard = life.shards[h.shard as usize].clone();
            spawn(life, async move {
                shard.unregister_conn(h.conn).await;
                Outcome::Answered("close", Reply::Done)
            });
        }
        match self.rng.below(3) {
            0 => self.connect(life, STAGES.len()),
            1 => self.connect(life, 1),
            _ => self.connect_group(life),
        }
    }

    /// Runs the executor until it stalls, taking outcomes in and letting
    /// handlers answer, until nothing more happens.
    fn settle(&mut self, life: &mut Life) {
        for _ in 0..64 {
            life.pool.run_until_stalled();
            let outcomes = std::mem::take(&mut *life.outcomes.borrow_mut());
            let took = !outcomes.is_empty();
            for outcome in outcomes {
                self.take(life, outcome);
            }
            let delivered = self.answer_deliveries(life);
            if !took && !delivered {
                return;
            }
        }
    }

    fn take(&mut self, life: &mut Life, outcome: Outcome) {
        let frozen = self.storage.is_frozen();
        let no = life.no;
        match outcome {
            Outcome::Published {
                client,
                partition,
                batch,
                reply,
            } => self.published(no, client, partition, batch, reply),
            Outcome::GroupAcked { root, id, reply } => match reply {
                Reply::Done => {
                    self.coverage.group_acks += 1;
                    self.model.group_acked.insert(root);
                    self.note(root.1);
                }
                other => self.debug(|| format!("group ack of {id} not taken: {other:?}")),
            },
            Outcome::StageAcked {
                root,
                stage,
                owner,
                reply,
            } => match reply {
                Reply::Unsettled(unsettled) if unsettled.is_empty() => {
                    self.coverage.outputs += 1;
                    self.model.completed.entry((root, stage)).or_insert(no);
                    let next = life.shards[owner as usize].next_id.get();
                    self.model
                        .completed_at_id
                        .entry((root, stage))
                        .or_insert(next);
                    self.note(root.1 << 3 | stage as u64);
                }
                other => self.debug(|| format!("stage ack not taken: {other:?}")),
            },
            Outcome::Applied {
                invalid,
                added,
                reply,
            } => self.applied(no, frozen, invalid, added, reply),
            Outcome::Answered(what, reply) => {
                if !frozen && what == "attach" {
                    assert!(matches!(reply, Reply::Done), "life {no}: {what}: {reply:?}");
                }
            }
        }
    }

    fn published(
        &mut self,
        no: u64,
        client: usize,
        partition: u32,
        batch: Vec<usize>,
        reply: Reply,
    ) {
        let published = match reply {
            Reply::Published(p) => p,
            other => {
                assert!(
                    self.storage.is_frozen(),
                    "life {no}: a publish failed with the disk up: {other:?}"
                );
                return;
            }
        };
        assert_eq!(published.results.len(), batch.len(), "life {no}: answers");
        for (&event, &(offset, duplicate)) in batch.iter().zip(&published.results) {
            let what = format!("life {no}: publish of event {event}");
            self.model.learn((partition, offset), event, &what);
            self.model.acked.insert((partition, offset), event);
            if duplicate {
                self.coverage.duplicates += 1;
            } else {
                self.coverage.stored += 1;
            }
            self.note(offset);
        }
        // Sometimes the answer is "lost": the client sends it again.
        if self.rng.below(8) != 0 {
            self.clients[client].unanswered = None;
        }
    }

    fn applied(
        &mut self,
        no: u64,
        frozen: bool,
        invalid: Option<&'static str>,
        added: Option<String>,
        reply: Reply,
    ) {
        match (invalid, reply) {
            (Some(_), Reply::Failed(e)) if e.code() == ErrorCode::InvalidConfig => {
                self.coverage.refused_applies += 1;
            }
            (Some(why), other) => panic!("life {no}: an apply of {why} answered {other:?}"),
            (None, Reply::Applied(_)) => {
                self.coverage.applies += 1;
                if let Some(name) = added {
                    self.model.extra_streams.insert(name);
                }
            }
            (None, other) => assert!(
                frozen,
                "life {no}: a valid apply failed with the disk up: {other:?}"
            ),
        }
    }

    /// Every handler takes the frames its connection was sent and answers
    /// each delivery. Returns whether there were any.
    fn answer_deliveries(&mut self, life: &mut Life) -> bool {
        let mut any = false;
        for h in 0..life.handlers.len() {
            let mut frames = Vec::new();
            if life.handlers[h].outbox.take(&mut frames).now_or_never() != Some(true) {
                continue;
            }
            life.handlers[h].outbox.wrote(frames.len());
            any = true;
            let mut at = 0;
            while at < frames.len() {
                let len = u32::from_le_bytes(
                    frames[at..at + 4]
                        .try_into()
                        .expect("a frame starts with its length"),
                ) as usize;
                let body = &frames[at + 4..at + 4 + len];
                at += 4 + len;
                let frame = hadron_wire::decode(body, &Limits::DEFAULT).unwrap_or_else(|e| {
                    panic!("life {}: a frame that does not decode: {e}", life.no)
                });
                match frame.message {
                    Message::StageDelivery(d) => {
                        let (event, stage) = self.model.check_delivery(&d, life.no);
                        self.coverage.deliveries += 1;
                        self.note(d.delivery_id);
                        let root = (d.partition, d.offset);
                        self.answer(life, h, d.delivery_id, root, event, stage);
                    }
                    Message::Delivery(d) => self.group_delivery(life, h, &d),
                    other => panic!("life {}: a handler got {}", life.no, other.name()),
                }
            }
        }
        any
    }

    /// A handler answers a delivery: doomed billing is refused; otherwise
    /// an output, or (before the last life) a nack or nothing.
    fn answer(
        &mut self,
        life: &mut Life,
        h: usize,
        id: u64,
        root: model::Root,
        event: usize,
        stage: usize,
    ) {
        let last = life.no + 1 == LIVES;
        let doomed = self.model.events[event].doomed && stage == BILLING;
        let roll = self.rng.below(10);
        let (shard, conn) = (life.handlers[h].shard, life.handlers[h].conn);
        let on = life.shards[shard as usize].clone();
        let owner = (id >> 48) as u16;
        if doomed || (!last && stage != BILLING && roll == 0) {
            self.coverage.nacks += 1;
            let req = Request::StageNack {
                id,
                message: format!("refused stage {} of event {event}", STAGES[stage].0),
                shard,
                conn,
            };
            spawn(life, async move {
                Outcome::Answered("nack", on.call(owner, req).await)
            });
        } else if !last && stage != BILLING && roll == 1 {
            self.coverage.held += 1;
        } else {
            let inputs = self.model.expected_inputs(event, stage);
            let output = model::handler_output(&self.model.events[event].bytes, stage, &inputs);
            let req = Request::StageAcks {
                acks: vec![(id, Bytes::from(output))],
                shard,
                conn,
            };
            spawn(life, async move {
                let reply = on.call(owner, req).await;
                Outcome::StageAcked {
                    root,
                    stage,
                    owner,
                    reply,
                }
            });
        }
    }

    /// A group delivery against the model, and the consumer's answer.
    fn group_delivery(&mut self, life: &mut Life, h: usize, d: &hadron_wire::Delivery<'_>) {
        let what = format!(
            "life {}: group delivery {} of partition {} offset {}",
            life.no, d.delivery_id, d.partition, d.offset
        );
        assert_eq!(d.stream, STREAM, "{what}");
        assert_eq!(d.subscription_id, GROUP_SUBSCRIPTION, "{what}");
        let Some(event) = self.model.event_of(d.event) else {
            panic!("{what}: an event nobody published");
        };
        self.model.learn((d.partition, d.offset), event, &what);
        self.coverage.group_deliveries += 1;
        self.note(d.delivery_id);
        self.answer_group(life, h, d.delivery_id, (d.partition, d.offset));
    }

    /// A group consumer answers a delivery: an ack, or (before the last
    /// life) a nack or nothing.
    fn answer_group(&mut self, life: &mut Life, h: usize, id: u64, root: model::Root) {
        let last = life.no + 1 == LIVES;
        let roll = if last { 9 } else { self.rng.below(20) };
        let (shard, conn) = (life.handlers[h].shard, life.handlers[h].conn);
        let on = life.shards[shard as usize].clone();
        let owner = (id >> 48) as u16;
        match roll {
            0 | 1 => {
                let req = Request::Nack {
                    id,
                    message: "not now".into(),
                    shard,
                    conn,
                };
                spawn(life, async move {
                    Outcome::Answered("nack", on.call(owner, req).await)
                });
            }
            2 | 3 => self.coverage.held += 1,
            _ => {
                let req = Request::Ack {
                    ids: vec![id],
                    shard,
                    conn,
                };
                spawn(life, async move {
                    let reply = on.call(owner, req).await;
                    Outcome::GroupAcked { root, id, reply }
                });
            }
        }
    }

    /// Ends a life: the crash under way, one now, or a clean stop.
    fn end_life(&mut self, mut life: Life) {
        self.storage.disarm_crash();
        let mode = if self.rng.below(2) == 0 {
            CrashMode::Torn
        } else {
            CrashMode::DropUnsynced
        };
        let frozen = self.storage.is_frozen();
        let crash = frozen || self.rng.below(2) == 0;
        self.debug(|| format!("life {} ends: frozen {frozen}, crash {crash}", life.no));
        if !crash {
            for shard in life.shards.clone() {
                shard.stopping.set(true);
                life.pool.run_until(shard.flush_all());
            }
        }
        // The process ends: every task and connection with it.
        drop(life);
        if frozen {
            self.storage.restart(mode);
        } else if crash {
            self.storage.crash(mode);
        }
        if crash {
            self.coverage.crashes += 1;
        }
        self.model.completed_at_id.clear();
        self.note(u64::from(crash));
    }

    /// The last life: every delivery is answered (doomed billing refused)
    /// and the clock moves until every execution finished or failed; then
    /// the runs are checked against the model.
    fn final_drain(&mut self, life: &mut Life) {
        self.connect(life, STAGES.len());
        self.connect_group(life);
        for _ in 0..DRAIN_ROUNDS_MAX {
            self.settle(life);
            if life.running.get() == 0 && self.drained(life) {
                return self.check_final(life);
            }
            self.clock.advance(Duration::from_millis(200));
        }
        panic!("the executions did not finish in {DRAIN_ROUNDS_MAX} rounds");
    }

    /// Whether every run scanned its whole partition and has nothing
    /// unfinished.
    fn drained(&self, life: &Life) -> bool {
        (0..PARTITIONS).all(|partition| {
            let status = self.run_status(life, partition);
            let end = self.partition(life, partition).log.visible_offset();
            let group_done = (0..end).all(|o| self.model.group_acked.contains(&(partition, o)));
            status.cursor >= end && status.unfinished.is_empty() && group_done
        })
    }

    fn run_status(&self, life: &Life, partition: u32) -> crate::shard::pipeline::RunStatus {
        let owner = life.shards[0].owner(STREAM, partition);
        let runs = life.shards[owner as usize].runs.borrow();
        match runs.get(&(PIPELINE.to_string(), partition)) {
            Some(run) => run.status(),
            None => panic!("no run of {PIPELINE} on partition {partition}"),
        }
    }

    /// Every triggering event's execution completed, but the doomed ones,
    /// which failed at billing.
    fn check_final(&mut self, life: &mut Life) {
        for partition in 0..PARTITIONS {
            let records = life
                .pool
                .run_until(read_back(&self.partition(life, partition)));
            self.check_log(life.no, partition, &records);
            let status = self.run_status(life, partition);
            let failed: BTreeSet<u64> = status.failed_executions.iter().map(|f| f.offset).collect();
            for f in &status.failed_executions {
                assert_eq!(
                    f.stage, STAGES[BILLING].0,
                    "partition {partition} offset {}: failed at {} ({})",
                    f.offset, f.stage, f.error
                );
            }
            for (offset, bytes) in &records {
                let Some(event) = self.model.event_of(bytes) else {
                    continue;
                };
                let e = &self.model.events[event];
                if !e.trigger {
                    continue;
                }
                assert_eq!(
                    failed.contains(offset),
                    e.doomed,
                    "partition {partition} offset {offset}: event {event} (doomed: {}) failed: {}",
                    e.doomed,
                    failed.contains(offset)
                );
                if e.doomed {
                    self.coverage.failed_executions += 1;
                } else {
                    self.coverage.completed_executions += 1;
                }
            }
        }
    }
}

/// Spawns a request on the life's executor; its outcome is taken in once
/// the executor stalls.
fn spawn(life: &Life, action: impl Future<Output = Outcome> + 'static) {
    let (outcomes, running) = (life.outcomes.clone(), life.running.clone());
    running.set(running.get() + 1);
    life.pool
        .spawner()
        .spawn_local(async move {
            let outcome = action.await;
            outcomes.borrow_mut().push(outcome);
            running.set(running.get() - 1);
        })
        .expect("the pool takes tasks");
}

/// Every record of a partition: (offset, bytes).
async fn read_back(p: &Partition<SimStorage, SimClock>) -> Vec<(u64, Vec<u8>)> {
    let records = crate::shard::sim_support::read_back(p).await;
    records
        .into_iter()
        .map(|(o, _, bytes)| (o, bytes))
        .collect()
}
