//! Subscriptions and pipeline stage handlers: long-running tasks that hold
//! their own connection, register with `Subscribe` / `PipelineSubscribe`,
//! run the application's handler for each push, and answer it with
//! `Ack`/`Nack` or `StageAck`/`StageNack`.
//!
//! Each subscription or stage handler runs one runner per node (`nodes`):
//! with one server, one runner, whose first registration's error is
//! returned and which moves along the bootstrap list after failures; in a
//! cluster, one runner per node, pinned to it, because each partition's
//! deliveries are pushed by the node that leads it, and leaders move on
//! failover. The nodes are the bootstrap list's and those Metadata names,
//! asked again periodically, so one URL reaches the whole cluster. Every runner has
//! a dedicated connection, so a disconnect affects only it: it reconnects
//! with exponential backoff and registers again (a pinned runner with its
//! own node, also after a `NotLeader` answer); the server redelivers
//! whatever was not acknowledged. Each runner's handlers run concurrently,
//! at most `max_in_flight` at a time (the server sends no more than that
//! unacknowledged on one connection; a cluster may so run up to nodes x
//! `max_in_flight` at once, but only while leadership is split between
//! them), each in its own task, which also queues the answer: a panicking
//! handler is answered with a nack. Answers go back on the connection the
//! push came from, and answers queued together leave together (`Answers`):
//! stage acks as one `StageAcks`, subscription acks as one `Ack`.
//!
//! The connection's reader decodes each push straight into the `Delivery`
//! or `StageInput` its handler receives (`from_wire`), copying each field
//! once; an event that fails verification is nacked without running the
//! handler.
//!
//! Lifetime: each runner keeps going until `cancel`/`stop` is called or a
//! non-retryable error ends it (for example the stream was deleted); the
//! handle's `closed` waits for all of them. Dropping a `Subscription` or
//! `PipelineHandle` detaches it; the runners keep running in the
//! background.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::FutureExt as _;
use hadron_wire::{ErrorCode, Limits, Message};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::nodes::Runners;
use crate::client::unexpected;
use crate::conn::{Conn, Push, Reply};
use crate::endpoint::Endpoint;
use crate::event::with_event_encoder;
use crate::{Client, Error, Event, NewEvent};

mod nodes;

pub use self::nodes::NODES_REFRESH_INTERVAL;

/// Where a consumer group with no committed offset starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPoint {
    /// The oldest retained event.
    #[default]
    Beginning,
    /// Only events published after subscribing.
    Latest,
    /// The given offset (in every partition).
    Offset(u64),
}

/// How to subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Persist the group's committed offsets on the server, so the group
    /// resumes where it stopped.
    pub durable: bool,
    /// Where a group with no committed offset starts.
    pub start: StartPoint,
    /// Most deliveries handled at once (unacknowledged on the server).
    pub max_in_flight: u32,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            durable: true,
            start: StartPoint::Beginning,
            max_in_flight: 16,
        }
    }
}

/// One event delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream.
    pub stream: String,
    /// The event's partition.
    pub partition: u32,
    /// The event's offset.
    pub offset: u64,
    /// 1 on first delivery, +1 on each redelivery.
    pub attempt: u32,
    /// The server's id for this delivery (acknowledged by the client).
    pub delivery_id: u64,
    /// The subscription the delivery belongs to.
    pub subscription_id: u64,
    /// The event.
    pub event: Event,
}

/// What a pipeline stage handler gets: the execution's root event and the
/// outputs of the stage's dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageInput {
    /// The pipeline.
    pub pipeline: String,
    /// The stage being run.
    pub stage: String,
    /// The event that started the execution.
    pub root: Event,
    /// Output events of the stage's dependencies, by stage name.
    pub inputs: BTreeMap<String, Event>,
    /// Partition of the root event.
    pub partition: u32,
    /// Offset of the root event; `(partition, offset)` identifies the
    /// execution.
    pub offset: u64,
    /// 1 on first delivery, +1 on each retry.
    pub attempt: u32,
    /// The server's id for this delivery.
    pub delivery_id: u64,
}

impl Delivery {
    /// The handler's view of a `Delivery` push, its event verified against
    /// `limits` and copied out of the frame.
    pub(crate) fn from_wire(
        d: &hadron_wire::Delivery<'_>,
        limits: &Limits,
    ) -> Result<Delivery, Error> {
        Ok(Delivery {
            stream: d.stream.to_owned(),
            partition: d.partition,
            offset: d.offset,
            attempt: d.attempt,
            delivery_id: d.delivery_id,
            subscription_id: d.subscription_id,
            event: Event::decode_with(d.event, limits)?,
        })
    }
}

impl StageInput {
    /// The output of dependency `stage`, if it is one.
    pub fn input(&self, stage: &str) -> Option<&Event> {
        self.inputs.get(stage)
    }

    /// The handler's view of a `StageDelivery` push, its root and input
    /// events verified against `limits` and copied out of the frame. An
    /// input named twice keeps the later event.
    pub(crate) fn from_wire(
        d: &hadron_wire::StageDelivery<'_>,
        limits: &Limits,
    ) -> Result<StageInput, Error> {
        let root = Event::decode_with(d.root, limits)?;
        let mut inputs = BTreeMap::new();
        for input in &d.inputs {
            inputs.insert(
                input.stage.to_owned(),
                Event::decode_with(input.event, limits)?,
            );
        }
        Ok(StageInput {
            pipeline: d.pipeline.to_owned(),
            stage: d.stage.to_owned(),
            root,
            inputs,
            partition: d.partition,
            offset: d.offset,
            attempt: d.attempt,
            delivery_id: d.delivery_id,
        })
    }
}

/// A running subscription. Dropping it detaches the runner (it keeps
/// running); call `cancel` or `stop` to end it.
///
/// With a bootstrap list of several nodes it covers one runner per node
/// (see `Client::subscribe`).
#[derive(Debug)]
pub struct Subscription {
    runners: Runners,
    subscription_id: u64,
    partitions: nodes::Assigned,
}

impl Subscription {
    /// The id the server gave the (first) subscription; with several
    /// nodes, the id the first node to accept gave (each node numbers its
    /// own subscriptions).
    pub fn id(&self) -> u64 {
        self.subscription_id
    }

    /// Partitions first assigned to this member, sorted; with several
    /// nodes, the union of each accepting node's first assignment (a node
    /// that accepts later adds its own).
    pub fn partitions(&self) -> Vec<u32> {
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the runners to stop; handlers already running finish.
    pub fn cancel(&self) {
        self.runners.cancel();
    }

    /// Waits until every runner ends: `Ok` after `cancel`, else the first
    /// error that ended one.
    pub async fn closed(self) -> Result<(), Error> {
        self.runners.closed().await
    }

    /// `cancel`, then `closed`.
    pub async fn stop(self) -> Result<(), Error> {
        self.cancel();
        self.closed().await
    }
}

/// A running pipeline stage handler. Dropping it detaches the runner (it
/// keeps running); call `cancel` or `stop` to end it. With a bootstrap
/// list of several nodes it covers one runner per node (see
/// `Client::pipeline`).
#[derive(Debug)]
pub struct PipelineHandle {
    runners: Runners,
}

impl PipelineHandle {
    /// Asks the runners to stop; handlers already running finish.
    pub fn cancel(&self) {
        self.runners.cancel();
    }

    /// Waits until every runner ends: `Ok` after `cancel`, else the first
    /// error that ended one.
    pub async fn closed(self) -> Result<(), Error> {
        self.runners.closed().await
    }

    /// `cancel`, then `closed`.
    pub async fn stop(self) -> Result<(), Error> {
        self.cancel();
        self.closed().await
    }
}

async fn join(task: JoinHandle<Result<(), Error>>) -> Result<(), Error> {
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(Error::Protocol("the runner task panicked".into())),
        Err(_) => Err(Error::Closed),
    }
}

/// The future `Client::pipeline` returns. The handler is registered and
/// started when `pipeline` is called (inside a tokio runtime), whether or
/// not this is awaited; awaiting it reports whether the server accepted
/// the registration.
pub struct PipelineStart {
    inner: Pin<Box<dyn Future<Output = Result<PipelineHandle, Error>> + Send>>,
}

impl core::fmt::Debug for PipelineStart {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PipelineStart").finish_non_exhaustive()
    }
}

impl Future for PipelineStart {
    type Output = Result<PipelineHandle, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// What a runner registers with on each (re)connect.
#[derive(Debug, Clone)]
enum Registration {
    Subscribe {
        stream: String,
        group: String,
        options: SubscribeOptions,
    },
    Pipeline {
        pipeline: String,
        stage: String,
        max_in_flight: u32,
    },
}

impl Registration {
    fn max_in_flight(&self) -> u32 {
        match self {
            Registration::Subscribe { options, .. } => options.max_in_flight,
            Registration::Pipeline { max_in_flight, .. } => *max_in_flight,
        }
        .max(1)
    }

    /// Sends the registration; returns the subscription id and partitions
    /// (pipelines have neither).
    async fn send(&self, conn: &Conn) -> Result<(u64, Vec<u32>), Error> {
        match self {
            Registration::Subscribe {
                stream,
                group,
                options,
            } => {
                let message = Message::Subscribe(hadron_wire::Subscribe {
                    stream,
                    group,
                    durable: options.durable,
                    start: match options.start {
                        StartPoint::Beginning => hadron_wire::StartPoint::Beginning,
                        StartPoint::Latest => hadron_wire::StartPoint::Latest,
                        StartPoint::Offset(o) => hadron_wire::StartPoint::Offset(o),
                    },
                    max_in_flight: options.max_in_flight.max(1),
                });
                match conn.request("subscribe", &message).await? {
                    Reply::SubscribeOk(ok) => Ok((ok.subscription_id, ok.partitions)),
                    other => Err(unexpected("SubscribeOk", &other)),
                }
            }
            Registration::Pipeline {
                pipeline,
                stage,
                max_in_flight,
            } => {
                let message = Message::PipelineSubscribe(hadron_wire::PipelineSubscribe {
                    pipeline,
                    stage,
                    max_in_flight: (*max_in_flight).max(1),
                });
                match conn.request("pipeline subscribe", &message).await? {
                    Reply::AckOk => Ok((0, Vec::new())),
                    other => Err(unexpected("AckOk", &other)),
                }
            }
        }
    }
}

/// Turns one push into the handler's answer; implemented for subscription
/// and stage handlers.
trait PushHandler: Send + Sync + 'static {
    /// Runs the handler for `push` and returns the answer to send.
    fn handle(self: Arc<Self>, push: Push)
    -> impl Future<Output = Option<Answer>> + Send + 'static;

    /// The answer when the handler task panicked.
    fn panicked(&self, delivery_id: u64) -> Answer;
}

/// The client's answer to one push.
#[derive(Debug)]
enum Answer {
    Ack(u64),
    Nack(u64, String),
    StageAck(u64, Vec<u8>),
    StageNack(u64, String),
}

/// Most answers in one `Ack` or `StageAcks` frame.
const ANSWERS_PER_FRAME_MAX: usize = 1024;
/// What a `StageAck` inside `StageAcks` takes besides its output, at most:
/// its table, vtable, vector prefix and padding, and its slot in the
/// vector.
const STAGE_ACK_OVERHEAD_BYTES: usize = 64;
/// What a frame takes besides its answers, at most.
const FRAME_OVERHEAD_BYTES: usize = 256;

/// The answers of one connection's handlers on their way to the server.
///
/// Handlers that finish together answer together: the handler task that
/// queues an answer into an empty queue yields once, so that the other
/// tasks ready to run queue theirs, then sends everything queued, stage
/// acks in one `StageAcks` frame and subscription acks in one `Ack` frame
/// (`send_queued`). The server makes the outputs of one frame durable in
/// one append and answers once. Every queued answer is sent by exactly one
/// task: the one that found the queue empty, which takes it all.
struct Answers {
    queue: Mutex<Vec<Answer>>,
    /// Largest frame the server accepts (the client's limit).
    frame_bytes_max: usize,
    /// Set when the server refused a `StageAcks` as unknown (it predates
    /// it): stage acks then go one per frame.
    stage_acks_refused: AtomicBool,
}

impl Answers {
    fn new(frame_bytes_max: usize) -> Answers {
        Answers {
            queue: Mutex::new(Vec::new()),
            frame_bytes_max,
            stage_acks_refused: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Answer>> {
        // A poisoned lock only means another thread panicked while holding
        // it; every update of the queue is one call.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `answer`; `true` when the queue was empty, which makes the
    /// caller the one to send it (`send_queued`).
    fn push(&self, answer: Answer) -> bool {
        let mut queue = self.lock();
        queue.push(answer);
        queue.len() == 1
    }

    /// Sends everything queued, in as few frames as the limits allow, and
    /// waits for the answers. Failures are logged: the server redelivers
    /// what it did not take.
    async fn send_queued(&self, conn: &Conn) {
        let answers = {
            // The next burst is likely the size of this one: give the queue
            // that capacity at once instead of growing it answer by answer.
            let mut queue = self.lock();
            let capacity = queue.len();
            std::mem::replace(&mut *queue, Vec::with_capacity(capacity))
        };
        let mut acks = Vec::new();
        let mut stage_acks = Vec::new();
        let mut others = Vec::new();
        for answer in answers {
            match answer {
                Answer::Ack(id) => acks.push(id),
                Answer::StageAck(id, output) => stage_acks.push((id, output)),
                other => others.push(other),
            }
        }
        let mut sends: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
        for ids in acks.chunks(ANSWERS_PER_FRAME_MAX) {
            sends.push(Box::pin(async move {
                let message = Message::Ack(hadron_wire::Ack {
                    delivery_ids: ids.to_vec(),
                });
                if let Err(e) = ack_request(conn, &message).await {
                    tracing::warn!(deliveries = ids.len(), first = ids[0], error = %e, "could not acknowledge deliveries");
                }
            }));
        }
        for chunk in self.stage_ack_chunks(&stage_acks) {
            sends.push(Box::pin(self.send_stage_acks(conn, chunk)));
        }
        for answer in &others {
            sends.push(Box::pin(async move {
                let (id, message) = match answer {
                    Answer::Nack(id, message) => (
                        *id,
                        Message::Nack(hadron_wire::Nack {
                            delivery_id: *id,
                            message,
                        }),
                    ),
                    Answer::StageNack(id, message) => (
                        *id,
                        Message::StageNack(hadron_wire::StageNack {
                            delivery_id: *id,
                            message,
                        }),
                    ),
                    Answer::Ack(id) | Answer::StageAck(id, _) => {
                        tracing::error!(delivery_id = id, "an ack among the nacks; not sent");
                        return;
                    }
                };
                if let Err(e) = ack_request(conn, &message).await {
                    tracing::warn!(delivery_id = id, error = %e, "could not answer a delivery");
                }
            }));
        }
        futures::future::join_all(sends).await;
    }

    /// Splits `stage_acks` into runs that each fit one frame.
    fn stage_ack_chunks<'a>(&self, stage_acks: &'a [(u64, Vec<u8>)]) -> Vec<&'a [(u64, Vec<u8>)]> {
        let bytes_max = self.frame_bytes_max.saturating_sub(FRAME_OVERHEAD_BYTES);
        let mut chunks = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, (_, output)) in stage_acks.iter().enumerate() {
            let len = STAGE_ACK_OVERHEAD_BYTES + output.len();
            if i > start && (i - start >= ANSWERS_PER_FRAME_MAX || bytes + len > bytes_max) {
                chunks.push(&stage_acks[start..i]);
                start = i;
                bytes = 0;
            }
            bytes += len;
        }
        if start < stage_acks.len() {
            chunks.push(&stage_acks[start..]);
        }
        chunks
    }

    /// Sends `chunk` as one `StageAcks`, or as one `StageAck` each when it
    /// holds one or the server does not know `StageAcks`.
    async fn send_stage_acks(&self, conn: &Conn, chunk: &[(u64, Vec<u8>)]) {
        if chunk.len() > 1 && !self.stage_acks_refused.load(Ordering::Relaxed) {
            let message = Message::StageAcks(hadron_wire::StageAcks {
                acks: chunk
                    .iter()
                    .map(|(id, output)| hadron_wire::StageAck {
                        delivery_id: *id,
                        output,
                    })
                    .collect(),
            });
            match ack_request(conn, &message).await {
                Ok(()) => return,
                // An older server: it does not know the body.
                Err(Error::Server {
                    code: ErrorCode::InvalidRequest,
                    ..
                }) => {
                    tracing::debug!("the server refused StageAcks; sending stage acks one by one");
                    self.stage_acks_refused.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(acks = chunk.len(), first = chunk[0].0, error = %e, "could not acknowledge stage deliveries");
                    return;
                }
            }
        }
        let singles = chunk.iter().map(|(id, output)| async move {
            let message = Message::StageAck(hadron_wire::StageAck {
                delivery_id: *id,
                output,
            });
            if let Err(e) = ack_request(conn, &message).await {
                tracing::warn!(delivery_id = id, error = %e, "could not answer a delivery");
            }
        });
        futures::future::join_all(singles).await;
    }
}

/// Sends an answer request; `AckOk` is success.
async fn ack_request(conn: &Conn, message: &Message<'_>) -> Result<(), Error> {
    match conn.request("ack", message).await? {
        Reply::AckOk => Ok(()),
        other => Err(unexpected("AckOk", &other)),
    }
}

struct DeliveryHandler<F> {
    handler: F,
}

impl<F, Fut, E> PushHandler for DeliveryHandler<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + 'static,
{
    async fn handle(self: Arc<Self>, push: Push) -> Option<Answer> {
        let (delivery_id, delivery) = match push {
            Push::Delivery {
                delivery_id,
                delivery: Ok(delivery),
            } => (delivery_id, delivery),
            Push::Delivery {
                delivery_id,
                delivery: Err(message),
            } => return Some(Answer::Nack(delivery_id, message)),
            Push::Stage { .. } => {
                tracing::warn!("stage delivery on a subscription connection; ignored");
                return None;
            }
        };
        // Display the error before the await point ends, so `E` need
        // not be Send.
        let result = (self.handler)(*delivery).await.map_err(|e| e.to_string());
        Some(match result {
            Ok(()) => Answer::Ack(delivery_id),
            Err(message) => Answer::Nack(delivery_id, message),
        })
    }

    fn panicked(&self, delivery_id: u64) -> Answer {
        Answer::Nack(delivery_id, "the handler panicked".into())
    }
}

struct StageHandler<F> {
    handler: F,
}

impl<F, Fut, E> PushHandler for StageHandler<F>
where
    F: Fn(StageInput) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<NewEvent, E>> + Send + 'static,
    E: Display + 'static,
{
    async fn handle(self: Arc<Self>, push: Push) -> Option<Answer> {
        let (delivery_id, input) = match push {
            Push::Stage {
                delivery_id,
                input: Ok(input),
            } => (delivery_id, input),
            Push::Stage {
                delivery_id,
                input: Err(message),
            } => return Some(Answer::StageNack(delivery_id, message)),
            Push::Delivery { .. } => {
                tracing::warn!("subscription delivery on a pipeline connection; ignored");
                return None;
            }
        };
        // What the output's defaults are made of, taken before the
        // handler owns the input.
        let defaults = OutputDefaults::new(&input);
        let result = (self.handler)(*input).await.map_err(|e| e.to_string());
        Some(match result {
            Ok(output) => Answer::StageAck(delivery_id, defaults.encode(&output)),
            Err(message) => Answer::StageNack(delivery_id, message),
        })
    }

    fn panicked(&self, delivery_id: u64) -> Answer {
        Answer::StageNack(delivery_id, "the stage handler panicked".into())
    }
}

/// A stage output's default id, `pipeline/stage/partition/offset`, and
/// source, `pipeline/stage`: deterministic, so a retried stage produces
/// the same id and its output is recognisably the same event. Both live in
/// one string (the source is a prefix of the id), built once per delivery.
struct OutputDefaults {
    /// The default id.
    id: String,
    /// Bytes of `id` that are the default source.
    source_len: usize,
}

impl OutputDefaults {
    fn new(input: &StageInput) -> OutputDefaults {
        /// `/`, a u32's and a u64's digits, `/`.
        const POSITION_BYTES_MAX: usize = 1 + 10 + 1 + 20;
        let mut id = String::with_capacity(
            input.pipeline.len() + 1 + input.stage.len() + POSITION_BYTES_MAX,
        );
        id.push_str(&input.pipeline);
        id.push('/');
        id.push_str(&input.stage);
        let source_len = id.len();
        // Writing to a String cannot fail.
        let _ = write!(id, "/{}/{}", input.partition, input.offset);
        OutputDefaults { id, source_len }
    }

    /// The wire encoding of `output`, its empty id and source replaced by
    /// the defaults (the handler's `NewEvent` is not changed).
    fn encode(&self, output: &NewEvent) -> Vec<u8> {
        let id = if output.id.is_empty() {
            self.id.as_str()
        } else {
            output.id.as_str()
        };
        let source = if output.source.is_empty() {
            &self.id[..self.source_len]
        } else {
            output.source.as_str()
        };
        let mut out = Vec::with_capacity(output.encoded_bytes_hint(id.len(), source.len()));
        with_event_encoder(|encoder| output.encode_as(encoder, id, source, &mut out));
        out
    }
}

impl Client {
    /// Subscribes to `stream` as a member of consumer `group` and runs
    /// `handler` for each delivered event: `Ok(())` acknowledges it, `Err(e)`
    /// nacks it with `e.to_string()` (the server redelivers it later).
    ///
    /// Returns once the server has accepted the subscription; from then on
    /// the subscription runs in a background task, reconnecting and
    /// resubscribing after disconnects, until cancelled. Up to
    /// `options.max_in_flight` handlers run concurrently, so events of one
    /// partition may be handled out of order unless `max_in_flight` is 1.
    ///
    /// In a cluster, the subscription is registered on every node, each
    /// by its own runner that stays with that node (reconnecting and
    /// resubscribing there, also after `NotLeader`), so that each
    /// partition's leader, wherever it moves, pushes to this member. The
    /// nodes are those of the bootstrap list and those the cluster's
    /// Metadata names (asked once registered, every
    /// [`NODES_REFRESH_INTERVAL`](crate::NODES_REFRESH_INTERVAL) and after
    /// a failure), so one node's URL is enough: a node added later gets a
    /// runner, a node removed loses it. This returns once the first node
    /// accepted (a node that is down keeps
    /// being retried in the background; while none answers, it waits), and
    /// fails only when every node refused, with the first refusal, naming
    /// its node. `max_in_flight` holds per node: while leadership is split
    /// across nodes, up to nodes x `max_in_flight` handlers may run at
    /// once. `Subscription::id` is the first accepting node's id and
    /// `Subscription::partitions` the union of the nodes' assignments.
    ///
    /// ```no_run
    /// # async fn example(client: hadron::Client) -> Result<(), hadron::Error> {
    /// let subscription = client
    ///     .subscribe("events", "billing", Default::default(), |d: hadron::Delivery| async move {
    ///         println!("{} at {}/{}", d.event.ty, d.partition, d.offset);
    ///         Ok::<(), std::io::Error>(())
    ///     })
    ///     .await?;
    /// subscription.closed().await?; // runs until cancelled
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe<F, Fut, E>(
        &self,
        stream: &str,
        group: &str,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<Subscription, Error>
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + 'static,
    {
        let registration = Registration::Subscribe {
            stream: stream.to_owned(),
            group: group.to_owned(),
            options,
        };
        let handler = Arc::new(DeliveryHandler { handler });
        let partitions = nodes::Assigned::default();
        let (mut runners, readys) = nodes::start(self, &registration, &handler, &partitions);
        let subscription_id = runners.ready(readys).await?;
        Ok(Subscription {
            runners,
            subscription_id,
            partitions,
        })
    }

    /// Registers `handler` for `stage` of `pipeline` and runs it for each
    /// stage delivery: `Ok(event)` completes the stage with that output
    /// event (an empty id defaults to `pipeline/stage/partition/offset`, an
    /// empty source to `pipeline/stage`), `Err(e)` fails this attempt with
    /// `e.to_string()` (the server retries with backoff).
    ///
    /// The handler starts running as soon as this is called inside a tokio
    /// runtime; awaiting the returned future waits until the server
    /// accepted the registration and gives a handle to stop it. Handlers
    /// run concurrently, at most 50 at a time (the default `maxParallel`).
    ///
    /// In a cluster, the handler is registered on every node (those of
    /// the bootstrap list and those the cluster's Metadata names, asked
    /// again every [`NODES_REFRESH_INTERVAL`](crate::NODES_REFRESH_INTERVAL);
    /// one node's URL is enough), each by its own runner that stays with
    /// that node (reconnecting and registering again there, also after
    /// `NotLeader`), so that whichever node leads the pipeline's
    /// partitions, after a failover or a rebalance, has it attached; each
    /// delivery is answered on the connection it came from. The start resolves once
    /// the first node accepted (a node that is down keeps being retried in
    /// the background; while none answers, it waits) and fails only when
    /// every node refused, with the first refusal, naming its node. The
    /// limit on handlers holds per node: while leadership is split across
    /// nodes, up to nodes x the limit may run at once.
    ///
    /// ```no_run
    /// async fn deploy_handler(input: hadron::StageInput) -> Result<hadron::NewEvent, std::io::Error> {
    ///     Ok(hadron::NewEvent::new("service.deployed", input.root.data.clone()))
    /// }
    ///
    /// # async fn example(client: hadron::Client) -> Result<(), hadron::Error> {
    /// client.pipeline("service-creation", "deploy-service", deploy_handler).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pipeline<F, Fut, E>(&self, pipeline: &str, stage: &str, handler: F) -> PipelineStart
    where
        F: Fn(StageInput) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<NewEvent, E>> + Send + 'static,
        E: Display + 'static,
    {
        self.pipeline_with(pipeline, stage, PIPELINE_IN_FLIGHT_DEFAULT, handler)
    }

    /// `pipeline` with an explicit limit on concurrently running handlers
    /// (per node with a bootstrap list of several; see `pipeline`).
    pub fn pipeline_with<F, Fut, E>(
        &self,
        pipeline: &str,
        stage: &str,
        max_in_flight: u32,
        handler: F,
    ) -> PipelineStart
    where
        F: Fn(StageInput) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<NewEvent, E>> + Send + 'static,
        E: Display + 'static,
    {
        let registration = Registration::Pipeline {
            pipeline: pipeline.to_owned(),
            stage: stage.to_owned(),
            max_in_flight,
        };
        let handler = Arc::new(StageHandler { handler });
        let client = self.clone();
        let begin = move || {
            let (mut runners, readys) = nodes::start(
                &client,
                &registration,
                &handler,
                &nodes::Assigned::default(),
            );
            async move {
                runners.ready(readys).await?;
                Ok(PipelineHandle { runners })
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Start now, so that the handler runs even if the caller never
            // awaits the result.
            let started = begin();
            PipelineStart {
                inner: Box::pin(started),
            }
        } else {
            // Outside a runtime: start on first poll (which happens inside
            // one, or never).
            PipelineStart {
                inner: Box::pin(async move {
                    if tokio::runtime::Handle::try_current().is_err() {
                        return Err(Error::NoRuntime);
                    }
                    begin().await
                }),
            }
        }
    }
}

/// Handlers run at once per stage handler, by default (the seed's
/// `maxParallel`).
const PIPELINE_IN_FLIGHT_DEFAULT: u32 = 50;

/// Resolves when `cancel` becomes true; never if its sender is dropped
/// (a dropped handle detaches the runner).
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The runner: connect, register, handle pushes; on disconnect, back off
/// and do it again. `node`, when set, pins it to that node (see `nodes`);
/// unpinned, each failure moves it to the next bootstrap node. The first
/// accepted registration's id goes to `ready` and its partitions to
/// `shared.assigned`; each failed registration and broken connection
/// notifies `shared.rediscover`. Unpinned, a failed first registration goes to `ready` and
/// ends the runner; pinned, only a non-retryable one ends it (with that
/// error, naming the node), and a retryable one (`NotLeader`, a node that
/// is down) is retried.
async fn run<H: PushHandler>(
    client: Client,
    registration: Registration,
    handler: Arc<H>,
    node: Option<Endpoint>,
    mut cancel: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<u64, Error>>,
    shared: nodes::Shared,
) -> Result<(), Error> {
    let options = client.options().clone();
    let in_flight_max = registration.max_in_flight();
    // The server sends at most `max_in_flight` unacknowledged pushes; the
    // slack absorbs redeliveries racing with acks.
    let push_capacity = usize::try_from(in_flight_max)
        .unwrap_or(usize::MAX)
        .saturating_add(16);
    let in_flight = Arc::new(Semaphore::new(usize::try_from(in_flight_max).unwrap_or(1)));
    let mut ready = Some(ready);
    let mut failures: u32 = 0;
    loop {
        let (push_tx, mut pushes) = mpsc::channel(push_capacity);
        // Unpinned, with a bootstrap list, each failure moves on to the
        // next node (a cluster's node that died, or leads nothing).
        let endpoint = match node.as_ref() {
            Some(pinned) => pinned,
            None => client.bootstrap_endpoint(failures),
        };
        let attempt = async {
            let conn = Conn::open(endpoint, &options, Some(push_tx)).await?;
            let registered = registration.send(&conn).await?;
            Ok::<_, Error>((conn, registered))
        };
        let outcome = tokio::select! {
            () = cancelled(&mut cancel) => return Ok(()),
            outcome = attempt => outcome,
        };
        let conn = match outcome {
            Ok((conn, (subscription_id, partitions))) => {
                failures = 0;
                tracing::debug!(?registration, node = %endpoint, "registered");
                if let Some(ready) = ready.take() {
                    nodes::assign(&shared.assigned, &partitions);
                    let _ = ready.send(Ok(subscription_id));
                }
                conn
            }
            Err(e) => {
                let e = match node {
                    Some(_) => nodes::at_node(e, endpoint),
                    None => e,
                };
                if node.is_none()
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(Err(e));
                    return Err(Error::Closed);
                }
                if !e.is_retryable() {
                    tracing::error!(?registration, error = %e, "registration refused; stopping");
                    return Err(e);
                }
                shared.rediscover.notify_one();
                failures = failures.saturating_add(1);
                let pause = options.backoff(failures);
                tracing::warn!(?registration, node = %endpoint, error = %e, ?pause, "reconnecting");
                tokio::select! {
                    () = cancelled(&mut cancel) => return Ok(()),
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        // Handle pushes until the connection ends (the push channel closes
        // when its task ends) or the runner is cancelled.
        let answers = Arc::new(Answers::new(options.limits().frame_bytes_max));
        loop {
            let push = tokio::select! {
                () = cancelled(&mut cancel) => return Ok(()),
                push = pushes.recv() => push,
            };
            let Some(push) = push else {
                break;
            };
            let permit = tokio::select! {
                () = cancelled(&mut cancel) => return Ok(()),
                permit = Arc::clone(&in_flight).acquire_owned() => permit.map_err(|_| Error::Closed)?,
            };
            let delivery_id = push.delivery_id();
            let handler = Arc::clone(&handler);
            let conn = Arc::clone(&conn);
            let answers = Arc::clone(&answers);
            // One task per delivery runs the handler and queues its answer.
            // A panic is caught here, as the task's boundary would catch
            // it, and answered with a nack. The handler's future is made
            // inside the task, so that it and the answer's future share
            // the task's space instead of taking a slot each.
            tokio::spawn(async move {
                let handled = AssertUnwindSafe(Arc::clone(&handler).handle(push))
                    .catch_unwind()
                    .await;
                let answer = match handled {
                    Ok(answer) => answer,
                    Err(_) => Some(handler.panicked(delivery_id)),
                };
                drop(permit);
                if let Some(answer) = answer
                    && answers.push(answer)
                {
                    // Let the handlers that finished with this one queue
                    // their answers, then send them all.
                    tokio::task::yield_now().await;
                    answers.send_queued(&conn).await;
                }
            });
        }
        shared.rediscover.notify_one();
        failures = failures.saturating_add(1);
        let pause = options.backoff(failures);
        tracing::warn!(?registration, node = %endpoint, ?pause, "connection lost; reconnecting");
        tokio::select! {
            () = cancelled(&mut cancel) => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}
