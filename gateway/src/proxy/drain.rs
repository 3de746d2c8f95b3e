//! The worker-local drain signal: set once at shutdown, it wakes every connection that
//! is idle between requests so it can close, while busy ones finish their request.

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use super::slots::WakerSlots;

/// Worker-local shutdown signal with any number of waiters.
#[derive(Debug, Default)]
pub struct Drain {
    draining: Cell<bool>,
    waiters: WakerSlots<()>,
}

impl Drain {
    /// Starts draining and wakes every waiter.
    pub fn start(&self) {
        self.draining.set(true);
        self.waiters.wake_where(|()| true);
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
        self.slot = Some(self.drain.waiters.park(self.slot, (), cx.waker()));
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.drain.waiters.leave(slot);
        }
    }
}
