//! Idle deadlines of keep-alive connections, kept by one clock per worker instead of a
//! timer each: a runtime timer entry is several hundred bytes (cache-padded), more than
//! the rest of an idle connection together. Waiting connections leave a slot (their
//! deadline and waker); the worker's sweep wakes the expired ones every
//! [`SWEEP_PERIOD`], so a deadline fires at most that late.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// How often the worker looks for expired idle connections.
pub const SWEEP_PERIOD: Duration = Duration::from_millis(100);

/// One worker's idle deadlines.
#[derive(Debug, Default)]
pub struct IdleClock {
    slots: RefCell<Vec<Option<(Instant, Waker)>>>,
    free: RefCell<Vec<usize>>,
    waiting: Cell<usize>,
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
        if self.waiting.get() == 0 {
            return;
        }
        let mut slots = self.slots.borrow_mut();
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|(deadline, _)| *deadline <= now)
                && let Some((_, waker)) = slot.take()
            {
                waker.wake();
            }
        }
    }

    /// Waits currently registered (for tests and metrics).
    pub fn waiting(&self) -> usize {
        self.waiting.get()
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
        let clock = self.clock;
        let mut slots = clock.slots.borrow_mut();
        let slot = match self.slot {
            // Woken by the sweep (its entry taken), or polled for another reason.
            Some(slot) if slots[slot].is_none() => return Poll::Ready(()),
            Some(slot) => slot,
            None => {
                if Instant::now() >= self.deadline {
                    return Poll::Ready(());
                }
                clock.waiting.set(clock.waiting.get() + 1);
                clock.free.borrow_mut().pop().unwrap_or_else(|| {
                    slots.push(None);
                    slots.len() - 1
                })
            }
        };
        match &mut slots[slot] {
            Some((_, waker)) if waker.will_wake(cx.waker()) => {}
            entry => *entry = Some((self.deadline, cx.waker().clone())),
        }
        drop(slots);
        self.slot = Some(slot);
        Poll::Pending
    }
}

impl Drop for IdleDeadline<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.clock.slots.borrow_mut()[slot] = None;
            self.clock.free.borrow_mut().push(slot);
            self.clock.waiting.set(self.clock.waiting.get() - 1);
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
        task::Wake,
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
        assert_eq!(clock.slots.borrow().len(), 2);
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
