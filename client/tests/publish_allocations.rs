//! Encoding a publish batch allocates a constant number of times, however
//! many events it holds: the cost per event is copying, not the allocator.
//! Counted with a global allocator that counts this thread's allocations.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions unwrap"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use hadron::{NewEvent, encode_publish_frames};
use hadron_wire::{Encoder, Limits};

struct Counting;

thread_local! {
    /// Allocations (and reallocations) made by this thread. A `const`
    /// `Cell<u64>` needs no allocation or destructor of its own.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

#[expect(
    unsafe_code,
    reason = "a global allocator must be implemented with unsafe code"
)]
// SAFETY: every method forwards its arguments unchanged to `System`, which
// implements the same contract; counting touches no allocator state.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with
        // `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `dealloc`; `new_size` is the caller's, checked by
        // the caller against `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made while encoding `events` into frames (building the
/// events is not counted; dropping them frees, which is not counted).
fn allocations_to_encode(encoder: &mut Encoder, events: Vec<NewEvent>) -> u64 {
    let mut n = 0u64;
    let before = ALLOCATIONS.with(Cell::get);
    let frames = encode_publish_frames(
        encoder,
        "events",
        "loadgen-0",
        1,
        Limits::DEFAULT.frame_bytes_max,
        events,
        |id| {
            n += 1;
            id.push_str("generated-");
            id.push(char::from(b'a' + (n % 26) as u8));
        },
    )
    .unwrap();
    let after = ALLOCATIONS.with(Cell::get);
    assert_eq!(frames.len(), 1);
    after - before
}

/// `count` events like loadgen's (ids given, no source, one subject, 100
/// bytes of data), or, with `mixed`, some without an id and some with
/// attributes.
fn batch(count: usize, mixed: bool) -> Vec<NewEvent> {
    (0..count)
        .map(|i| {
            let mut e = NewEvent::new("loadgen.test", vec![b'a'; 100]).with_subject("lg-7");
            if !mixed || i % 2 == 0 {
                e.id = format!("lg18a-7-{i}");
            }
            if mixed && i % 3 == 0 {
                e = e.with_attribute("tenant", "acme");
            }
            e
        })
        .collect()
}

#[test]
fn a_batch_costs_the_same_allocations_whatever_its_size() {
    for mixed in [false, true] {
        let mut encoder = Encoder::default();
        // Warm up: the thread's event encoder and the frame builder reach
        // their working sizes.
        allocations_to_encode(&mut encoder, batch(64, mixed));
        let small = allocations_to_encode(&mut encoder, batch(4, mixed));
        let large = allocations_to_encode(&mut encoder, batch(64, mixed));
        assert_eq!(small, large, "mixed: {mixed}");
        assert!(
            large <= 10,
            "{large} allocations for a batch (mixed: {mixed})"
        );
    }
}
