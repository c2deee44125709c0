//! A single-threaded "something changed" signal for tasks on one core, used
//! by the log for group commit and by the server for its dispatchers.
//!
//! A waiter takes the current generation, checks its condition, and if it
//! must wait, awaits [`Notify::changed_since`] with that generation. Because a
//! core runs one task at a time and nothing can change between the check and
//! the await, no wakeup is lost.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// The signal.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Resolves once [`notify_all`](Notify::notify_all) ran after `generation`
    /// was read.
    pub fn changed_since(&self, generation: u64) -> Changed<'_> {
        Changed {
            notify: self,
            generation,
        }
    }
}

/// The future of [`Notify::changed_since`].
#[derive(Debug)]
pub struct Changed<'a> {
    notify: &'a Notify,
    generation: u64,
}

impl Future for Changed<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let mut wakers = self.notify.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
