//! The time seam: everything a shard's state machines read of the time
//! goes through a [`Clock`], so that a test can own it.
//!
//! A clock tells two times, for two different uses:
//!
//! - [`Clock::now_ms`], wall milliseconds since the Unix epoch: what is
//!   stored or compared with stored values (batch timestamps, the ages of
//!   the dedup window and of retention). It may jump, as a wall clock does.
//! - [`Clock::now`], a monotonic [`Duration`] since the clock's start: what
//!   deadlines are measured on (ack deadlines, retry times). It never goes
//!   back.
//!
//! and it sleeps ([`Clock::sleep`]) on the monotonic time.
//!
//! A [`Runtime`] is a clock that also runs tasks: what a whole shard needs
//! of its executor (spawning its dispatchers and housekeeping, and running
//! a parse off its thread). Partitions and groups need only the clock.
//!
//! Two implementations: [`SystemClock`] in production (`SystemTime`,
//! `Instant`, glommio's timer), and, in tests, [`sim::SimClock`], whose
//! time moves only when the test advances it and whose sleepers wake in
//! deadline order (ties in the order they went to sleep), so a run driven
//! by a seed is the same run every time.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A source of time. Clones tell the same time.
pub trait Clock: Clone + 'static {
    /// Wall milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Monotonic time since the clock's start.
    fn now(&self) -> Duration;
    /// Resolves once `wait` of monotonic time has passed.
    fn sleep(&self, wait: Duration) -> impl Future<Output = ()> + 'static;
}

/// A clock that also runs the shard's tasks.
pub trait Runtime: Clock {
    /// Runs `task` on this shard's executor, detached.
    fn spawn(&self, task: impl Future<Output = ()> + 'static);
    /// Runs `work` off the shard's thread (on a real executor) and
    /// resolves to its result.
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + 'static;
}

/// The real clock. Every `SystemClock` of the process shares one start, so
/// a deadline taken from one is comparable with the time of another. (Not
/// `Copy`, so that code written for it reads as code for any clock.)
#[derive(Debug, Clone, Default)]
pub struct SystemClock;

/// The process-wide start of [`SystemClock::now`].
fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn now(&self) -> Duration {
        process_start().elapsed()
    }

    fn sleep(&self, wait: Duration) -> impl Future<Output = ()> + 'static {
        glommio::timer::sleep(wait)
    }
}

impl Runtime for SystemClock {
    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        glommio::spawn_local(task).detach();
    }

    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + 'static {
        glommio::executor().spawn_blocking(work)
    }
}

#[cfg(test)]
pub mod sim {
    //! A simulated clock for deterministic tests.

    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use futures::executor::LocalSpawner;
    use futures::task::LocalSpawnExt;

    use super::{Clock, Runtime};

    /// A clock whose time moves only by [`SimClock::advance`]. Clones share
    /// the time and the sleepers.
    #[derive(Debug, Clone)]
    pub struct SimClock {
        inner: Rc<RefCell<Inner>>,
        /// Where [`Runtime::spawn`] puts tasks (the test's `LocalPool`).
        spawner: Rc<RefCell<Option<LocalSpawner>>>,
    }

    #[derive(Debug)]
    struct Inner {
        /// Monotonic time since the start.
        now: Duration,
        /// Wall milliseconds at the start.
        epoch_ms: u64,
        /// Sleepers by (deadline, registration number): the order they
        /// are woken in.
        sleepers: BTreeMap<(Duration, u64), Waker>,
        registrations: u64,
    }

    impl SimClock {
        /// A clock at monotonic zero whose wall time starts at `epoch_ms`.
        pub fn new(epoch_ms: u64) -> SimClock {
            SimClock {
                inner: Rc::new(RefCell::new(Inner {
                    now: Duration::ZERO,
                    epoch_ms,
                    sleepers: BTreeMap::new(),
                    registrations: 0,
                })),
                spawner: Rc::new(RefCell::new(None)),
            }
        }

        /// Makes [`Runtime::spawn`] run tasks on `spawner`'s pool.
        pub fn set_spawner(&self, spawner: LocalSpawner) {
            *self.spawner.borrow_mut() = Some(spawner);
        }

        /// Moves the time `by` forward, waking the sleepers now due in
        /// deadline order, ties in the order they went to sleep.
        pub fn advance(&self, by: Duration) {
            let due = {
                let mut inner = self.inner.borrow_mut();
                inner.now += by;
                let now = inner.now;
                let later = inner
                    .sleepers
                    .split_off(&(now.saturating_add(Duration::from_nanos(1)), 0));
                std::mem::replace(&mut inner.sleepers, later)
            };
            // Woken outside the borrow: a waker may poll at once.
            for (_, waker) in due {
                waker.wake();
            }
        }

        /// The earliest deadline a sleeper waits for.
        pub fn next_deadline(&self) -> Option<Duration> {
            self.inner.borrow().sleepers.keys().next().map(|k| k.0)
        }
    }

    impl Clock for SimClock {
        fn now_ms(&self) -> u64 {
            let inner = self.inner.borrow();
            inner.epoch_ms + inner.now.as_millis() as u64
        }

        fn now(&self) -> Duration {
            self.inner.borrow().now
        }

        fn sleep(&self, wait: Duration) -> impl Future<Output = ()> + 'static {
            Sleep {
                clock: self.clone(),
                deadline: self.now().saturating_add(wait),
                registration: None,
            }
        }
    }

    impl Runtime for SimClock {
        /// Spawns on the pool set by [`SimClock::set_spawner`]; a task
        /// spawned after the pool is gone (or before one was set) is
        /// dropped, as a real executor's would be at shutdown.
        fn spawn(&self, task: impl Future<Output = ()> + 'static) {
            if let Some(spawner) = self.spawner.borrow().as_ref() {
                let _ = spawner.spawn_local(task);
            }
        }

        /// Runs `work` at once: the simulation has one thread.
        fn blocking<T: Send + 'static>(
            &self,
            work: impl FnOnce() -> T + Send + 'static,
        ) -> impl Future<Output = T> + 'static {
            std::future::ready(work())
        }
    }

    /// A [`SimClock`] sleep.
    struct Sleep {
        clock: SimClock,
        deadline: Duration,
        /// Its key among the sleepers, once registered.
        registration: Option<(Duration, u64)>,
    }

    impl Future for Sleep {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let this = &mut *self;
            let mut inner = this.clock.inner.borrow_mut();
            if inner.now >= this.deadline {
                if let Some(key) = this.registration.take() {
                    inner.sleepers.remove(&key);
                }
                return Poll::Ready(());
            }
            let key = match this.registration {
                Some(key) => key,
                None => {
                    inner.registrations += 1;
                    let key = (this.deadline, inner.registrations);
                    this.registration = Some(key);
                    key
                }
            };
            inner.sleepers.insert(key, cx.waker().clone());
            Poll::Pending
        }
    }

    impl Drop for Sleep {
        fn drop(&mut self) {
            if let Some(key) = self.registration.take() {
                self.clock.inner.borrow_mut().sleepers.remove(&key);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use std::cell::RefCell;
        use std::rc::Rc;

        use futures::executor::LocalPool;
        use futures::task::LocalSpawnExt;

        use super::*;

        /// Sleepers wake when the time reaches their deadline, not before,
        /// in deadline order, ties in the order they went to sleep; the
        /// wall time moves with the monotonic time.
        #[test]
        fn sim_clock_wakes_sleepers_in_deadline_then_registration_order() {
            let clock = SimClock::new(1_000_000);
            let mut pool = LocalPool::new();
            let woke = Rc::new(RefCell::new(Vec::new()));
            for (name, ms) in [("c", 30), ("a", 10), ("b1", 20), ("b2", 20), ("z", 0)] {
                let (clock, woke) = (clock.clone(), woke.clone());
                pool.spawner()
                    .spawn_local(async move {
                        clock.sleep(Duration::from_millis(ms)).await;
                        woke.borrow_mut().push((name, clock.now().as_millis()));
                    })
                    .unwrap();
            }
            pool.run_until_stalled();
            assert_eq!(*woke.borrow(), [("z", 0)], "a zero sleep is due at once");
            assert_eq!(clock.next_deadline(), Some(Duration::from_millis(10)));
            clock.advance(Duration::from_millis(9));
            pool.run_until_stalled();
            assert_eq!(woke.borrow().len(), 1, "nothing is due before 10 ms");
            clock.advance(Duration::from_millis(11));
            pool.run_until_stalled();
            assert_eq!(
                *woke.borrow(),
                [("z", 0), ("a", 20), ("b1", 20), ("b2", 20)]
            );
            assert_eq!(clock.now_ms(), 1_000_020);
            clock.advance(Duration::from_secs(1));
            pool.run_until_stalled();
            assert_eq!(woke.borrow().last(), Some(&("c", 1_020)));
            assert_eq!(clock.next_deadline(), None);
        }

        /// A sleep dropped before its deadline leaves no sleeper behind.
        #[test]
        fn a_dropped_sim_sleep_is_forgotten() {
            let clock = SimClock::new(0);
            let mut pool = LocalPool::new();
            let sleep = clock.sleep(Duration::from_secs(5));
            let handle = pool.spawner().spawn_local_with_handle(sleep).unwrap();
            pool.run_until_stalled();
            assert_eq!(clock.next_deadline(), Some(Duration::from_secs(5)));
            drop(handle);
            pool.run_until_stalled();
            assert_eq!(clock.next_deadline(), None);
        }
    }
}
