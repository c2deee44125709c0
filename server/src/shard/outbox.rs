//! A connection's outgoing bytes: whole frames (answers and pushed
//! deliveries) encoded straight into one buffer that the connection's
//! writer takes in one piece.
//!
//! Encoding goes through one `hadron_wire::Encoder` per shard thread
//! ([`with_encoder`]), whose builder keeps its capacity, so a steady stream
//! of frames costs no allocation: neither a builder nor a `Vec` per frame
//! nor a channel node. The writer swaps its (written, cleared) buffer with
//! the outbox's, so neither side allocates in the steady state either.
//!
//! Invariants:
//! - `frames` holds whole frames only, in the order they were queued: a
//!   frame the encoder refuses leaves it unchanged.
//! - Once the writer gave up (`dead`), frames are dropped, not kept: nobody
//!   would write them.
//! - After `close`, the writer writes what is queued and ends.
//! - `queued_total - written_total` is what the connection costs in answer
//!   bytes: queued, or taken by the writer and not yet written. The reader
//!   stops reading requests while it is above `outboxBytesMax`, and a
//!   request counts as in flight until `written_total` passed its answer.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use hadron_engine::notify::Notify;
use hadron_wire::{EncodeError, Encoder, ErrorReply, Message};

use super::error::Error;

/// Capacity a writer's buffer keeps after it was written; a larger one
/// (left by a large fetch answer) goes back to the allocator.
pub const RETAIN_BYTES_MAX: usize = 256 << 10;

thread_local! {
    /// This shard's frame encoder. Encoding never awaits, so it is held
    /// only while one frame is built.
    static ENCODER: Cell<Option<Encoder>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's `Encoder`. The encoder is taken out of its
/// slot rather than borrowed, so a nested call gets a fresh encoder
/// instead of a panic.
pub fn with_encoder<R>(f: impl FnOnce(&mut Encoder) -> R) -> R {
    let mut encoder = ENCODER
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    let result = f(&mut encoder);
    let _ = ENCODER.try_with(|slot| slot.set(Some(encoder)));
    result
}

/// Encodes `message` as a new frame of exactly its size (for frames that
/// cross to another shard).
pub fn encode(request_id: u64, message: &Message<'_>) -> Result<Vec<u8>, EncodeError> {
    with_encoder(|encoder| encoder.encode(request_id, message))
}

/// The frames waiting for one connection's writer.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: RefCell<Vec<u8>>,
    /// Notified when `frames` stops being empty, and on close.
    ready: Notify,
    closed: Cell<bool>,
    dead: Cell<bool>,
    /// Bytes ever queued.
    queued_total: Cell<u64>,
    /// Bytes ever written (or dropped once dead).
    written_total: Cell<u64>,
    /// Notified when `written_total` moves.
    written: Notify,
    /// Where each answered request's answer ends, in queue order; a mark
    /// leaves once written. At most `requestsInFlightMax` long.
    answer_marks: RefCell<VecDeque<u64>>,
}

impl Outbox {
    /// Queues `message` as a frame with `request_id`. A message the
    /// encoder refuses (too large) is answered with an `Internal` error
    /// frame for the same request id instead, so a request is never left
    /// without an answer.
    pub fn send(&self, request_id: u64, message: &Message<'_>) {
        if let Err(e) = self.try_send(request_id, message) {
            self.fail(
                request_id,
                &Error::Internal(format!("cannot encode the answer: {e}")),
            );
        }
    }

    /// Queues `message` as a frame with `request_id`, or says why it
    /// cannot be encoded (nothing is queued then).
    pub fn try_send(&self, request_id: u64, message: &Message<'_>) -> Result<(), EncodeError> {
        if self.dead.get() {
            return Ok(());
        }
        let was_empty = {
            let mut frames = self.frames.borrow_mut();
            let was_empty = frames.is_empty();
            let before = frames.len();
            with_encoder(|encoder| encoder.encode_into(request_id, message, &mut *frames))?;
            self.queued(frames.len() - before);
            was_empty
        };
        if was_empty {
            self.ready.notify_all();
        }
        Ok(())
    }

    /// Queues the `Error` frame of `e`: its code and its message. Every
    /// error a client reads is written here.
    pub fn fail(&self, request_id: u64, e: &Error) {
        let (code, message) = (e.code(), e.to_string());
        super::metrics::refused(code);
        let message = message.as_str();
        let reply = Message::Error(ErrorReply {
            code,
            message,
            leader: e.leader_hint(),
        });
        // An error message that does not fit a frame is cut rather than
        // lost.
        if self.try_send(request_id, &reply).is_err() {
            let reply = Message::Error(ErrorReply {
                code,
                message: &message[..message.floor_char_boundary(1024)],
                leader: e.leader_hint(),
            });
            let _ = self.try_send(request_id, &reply);
        }
    }

    /// Queues a frame encoded elsewhere (on another shard).
    pub fn send_frame(&self, frame: &[u8]) {
        if self.dead.get() {
            return;
        }
        let was_empty = {
            let mut frames = self.frames.borrow_mut();
            let was_empty = frames.is_empty();
            frames.extend_from_slice(frame);
            self.queued(frame.len());
            was_empty
        };
        if was_empty {
            self.ready.notify_all();
        }
    }

    fn queued(&self, bytes: usize) {
        super::metrics::frame_sent(bytes);
        self.queued_total
            .set(self.queued_total.get() + bytes as u64);
    }

    /// Answer bytes queued or being written.
    pub fn pending_bytes(&self) -> u64 {
        self.queued_total.get() - self.written_total.get()
    }

    /// The writer wrote `bytes` it took.
    pub fn wrote(&self, bytes: usize) {
        let written = self.written_total.get() + bytes as u64;
        self.written_total.set(written);
        let mut marks = self.answer_marks.borrow_mut();
        while marks.front().is_some_and(|&mark| mark <= written) {
            marks.pop_front();
        }
        drop(marks);
        self.written.notify_all();
    }

    /// An answer to a request was just queued: the request stays in flight
    /// (see [`Outbox::unwritten_answers`]) until the writer wrote it.
    pub fn answered(&self) {
        if !self.dead.get() {
            self.answer_marks
                .borrow_mut()
                .push_back(self.queued_total.get());
        }
    }

    /// Answers queued or being written, not yet written.
    pub fn unwritten_answers(&self) -> usize {
        self.answer_marks.borrow().len()
    }

    /// The generation of the written notification, for
    /// [`Outbox::written_since`].
    pub fn written_generation(&self) -> u64 {
        self.written.generation()
    }

    /// Waits until something was written since `generation`.
    pub async fn written_since(&self, generation: u64) {
        self.written.changed_since(generation).await;
    }

    /// No more frames will be queued: the writer ends after writing what
    /// is.
    pub fn close(&self) {
        self.closed.set(true);
        self.ready.notify_all();
    }

    /// Waits until there is something to write, then swaps it into
    /// `batch` (which must be empty). `false` when the outbox is closed and
    /// everything queued was taken.
    pub async fn take(&self, batch: &mut Vec<u8>) -> bool {
        debug_assert!(batch.is_empty());
        loop {
            let generation = self.ready.generation();
            {
                let mut frames = self.frames.borrow_mut();
                if !frames.is_empty() {
                    std::mem::swap(&mut *frames, batch);
                    return true;
                }
            }
            if self.closed.get() {
                return false;
            }
            self.ready.changed_since(generation).await;
        }
    }

    /// The writer failed: drop what is queued and whatever comes later.
    pub fn kill(&self) {
        self.dead.set(true);
        *self.frames.borrow_mut() = Vec::new();
        // Nothing will be written: nobody waits for it.
        self.written_total.set(self.queued_total.get());
        self.answer_marks.borrow_mut().clear();
        self.written.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hadron_wire::{ErrorCode, Limits, split_frame};

    /// The request ids of the whole frames in `bytes`, which must hold
    /// nothing else.
    fn request_ids(mut bytes: &[u8]) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Some((body, total)) = split_frame(bytes, &Limits::DEFAULT).unwrap() {
            ids.push(
                hadron_wire::decode(body, &Limits::DEFAULT)
                    .unwrap()
                    .request_id,
            );
            bytes = &bytes[total..];
        }
        assert!(bytes.is_empty(), "{} bytes of a partial frame", bytes.len());
        ids
    }

    #[test]
    fn frames_leave_whole_in_order_and_the_buffers_are_swapped() {
        let outbox = Outbox::default();
        outbox.send(3, &Message::AckOk);
        outbox.send_frame(&encode(9, &Message::Status).unwrap());
        outbox.fail(4, &Error::UnknownDelivery { delivery: 5 });
        let mut batch = Vec::new();
        assert!(futures::executor::block_on(outbox.take(&mut batch)));
        assert_eq!(request_ids(&batch), vec![3, 9, 4]);
        let mut rest = &batch[..];
        let mut messages = Vec::new();
        while let Some((body, total)) = split_frame(rest, &Limits::DEFAULT).unwrap() {
            messages.push(
                hadron_wire::decode(body, &Limits::DEFAULT)
                    .unwrap()
                    .message
                    .name(),
            );
            rest = &rest[total..];
        }
        assert_eq!(messages, vec!["AckOk", "Status", "Error"]);
        assert!(outbox.frames.borrow().is_empty());

        batch.clear();
        outbox.send(5, &Message::AckOk);
        outbox.close();
        assert!(futures::executor::block_on(outbox.take(&mut batch)));
        assert_eq!(request_ids(&batch), vec![5]);
        batch.clear();
        assert!(
            !futures::executor::block_on(outbox.take(&mut batch)),
            "closed and empty"
        );
    }

    #[test]
    fn a_dead_outbox_keeps_nothing() {
        let outbox = Outbox::default();
        outbox.send(1, &Message::AckOk);
        outbox.kill();
        outbox.send(2, &Message::AckOk);
        outbox.send_frame(&encode(3, &Message::AckOk).unwrap());
        assert!(outbox.frames.borrow().is_empty());
    }

    #[test]
    fn an_answer_too_large_becomes_an_error_for_the_same_request() {
        let outbox = Outbox::default();
        let json = "x".repeat(Limits::DEFAULT.frame_bytes_max + 1);
        outbox.send(7, &Message::StatusOk(hadron_wire::StatusOk { json: &json }));
        let frames = outbox.frames.borrow();
        let (body, total) = split_frame(&frames, &Limits::DEFAULT).unwrap().unwrap();
        assert_eq!(total, frames.len());
        let frame = hadron_wire::decode(body, &Limits::DEFAULT).unwrap();
        assert_eq!(frame.request_id, 7);
        let Message::Error(e) = frame.message else {
            panic!("{}", frame.message.name())
        };
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.contains("cannot encode"), "{}", e.message);
    }
}
