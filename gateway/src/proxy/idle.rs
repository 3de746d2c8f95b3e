//! Idle deadlines of keep-alive connections, kept by one clock per worker instead of a
//! timer each: a runtime timer entry is several hundred bytes (cache-padded), more than
//! the rest of an idle connection together. Waiting connections leave a slot (their
//! deadline and waker); the worker's sweep wakes the expired ones every
//! [`SWEEP_PERIOD`], so a deadline fires at most that late.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use super::slots::WakerSlots;

/// How often the worker looks for expired idle connections.
pub const SWEEP_PERIOD: Duration = Duration::from_millis(100);

/// One worker's idle deadlines.
#[derive(Debug, Default)]
pub struct IdleClock {
    waiting: WakerSlots<Instant>,
}

impl IdleClock {
    /// Resolves at `deadline` (or up to [`SWEEP_PERIOD`] later).
    pub fn until(&self, deadline: Instant) -> IdleDeadline<'_> {
        IdleDeadline {
            clock: self,
            deadline,
            slot: None,
        }
    }

    /// Wakes every wait whose deadline is at or before `now`.
    pub fn sweep(&self, now: Instant) {
        self.waiting.wake_where(|deadline| *deadline <= now);
    }

    /// Waits currently registered (for tests and metrics).
    pub fn waiting(&self) -> usize {
        self.waiting.parked()
    }
}

/// Future returned by [`IdleClock::until`]; frees its slot when dropped.
#[derive(Debug)]
pub struct IdleDeadline<'a> {
    clock: &'a IdleClock,
    deadline: Instant,
    slot: Option<usize>,
}

impl Future for IdleDeadline<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let waiting = &self.clock.waiting;
        match self.slot {
            // Woken by the sweep: the deadline passed.
            Some(slot) if waiting.was_woken(slot) => return Poll::Ready(()),
            None if Instant::now() >= self.deadline => return Poll::Ready(()),
            _ => {}
        }
        self.slot = Some(waiting.park(self.slot, self.deadline, cx.waker()));
        Poll::Pending
    }
}

impl Drop for IdleDeadline<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.clock.waiting.leave(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Wake, Waker},
    };

    use super::*;

    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll(deadline: &mut IdleDeadline<'_>, waker: &Waker) -> Poll<()> {
        Pin::new(deadline).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_deadline_fires_at_the_sweep_after_it_and_frees_its_slot() {
        let clock = IdleClock::default();
        let counter = Arc::new(Counting(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let start = Instant::now();
        let mut early = clock.until(start + Duration::from_secs(10));
        let mut late = clock.until(start + Duration::from_secs(20));
        assert!(poll(&mut early, &waker).is_pending());
        assert!(poll(&mut late, &waker).is_pending());
        assert_eq!(clock.waiting(), 2);
        clock.sweep(start + Duration::from_secs(5));
        assert_eq!(counter.0.load(Ordering::Relaxed), 0);
        clock.sweep(start + Duration::from_secs(10));
        assert_eq!(counter.0.load(Ordering::Relaxed), 1);
        assert!(poll(&mut early, &waker).is_ready());
        assert!(poll(&mut late, &waker).is_pending());
        drop(early);
        drop(late);
        assert_eq!(clock.waiting(), 0);
        // Slots are reused, not grown.
        let mut again = clock.until(start + Duration::from_secs(30));
        assert!(poll(&mut again, &waker).is_pending());
        assert_eq!(clock.waiting.capacity(), 2);
    }

    #[test]
    fn a_past_deadline_is_ready_at_once() {
        let clock = IdleClock::default();
        let waker = Waker::from(Arc::new(Counting(AtomicUsize::new(0))));
        let mut past = clock.until(Instant::now() - Duration::from_millis(1));
        assert!(poll(&mut past, &waker).is_ready());
        assert_eq!(clock.waiting(), 0);
    }
}
