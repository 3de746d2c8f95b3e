//! The worker-local drain signal: set once at shutdown, it wakes every connection that
//! is idle between requests so it can close, while busy ones finish their request.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

/// Worker-local shutdown signal with any number of waiters.
#[derive(Debug, Default)]
pub struct Drain {
    draining: Cell<bool>,
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Drain {
    /// Starts draining and wakes every waiter.
    pub fn start(&self) {
        self.draining.set(true);
        for waker in self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
        {
            waker.wake();
        }
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Resolves once draining starts.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            drain: self,
            slot: None,
        }
    }
}

/// Future returned by [`Drain::wait`]; frees its slot when dropped.
pub struct DrainWait<'a> {
    drain: &'a Drain,
    slot: Option<usize>,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.draining.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.drain.waiters.borrow_mut();
        let slot = match self.slot {
            Some(slot) => slot,
            None => self.drain.free.borrow_mut().pop().unwrap_or_else(|| {
                waiters.push(None);
                waiters.len() - 1
            }),
        };
        waiters[slot] = Some(cx.waker().clone());
        drop(waiters);
        self.slot = Some(slot);
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.drain.waiters.borrow_mut()[slot] = None;
            self.drain.free.borrow_mut().push(slot);
        }
    }
}
