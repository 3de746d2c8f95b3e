//! Cross-thread delivery from the main thread to a worker: a one-slot mailbox whose
//! receiver is woken through its waker (monoio's `sync` feature makes that safe from
//! another thread). Used for shutdown and for new config snapshots; touched only on those
//! events, never on the request path.

use std::{
    future::Future,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll, Waker},
};

/// A one-slot mailbox with one waiting worker; a newer message replaces an unread one.
#[derive(Debug)]
pub struct Mailbox<T> {
    slot: Mutex<(Option<T>, Option<Waker>)>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self {
            slot: Mutex::new((None, None)),
        }
    }
}

impl<T> Mailbox<T> {
    /// Leaves `message` and wakes the worker.
    pub fn post(&self, message: T) {
        let waker = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.0 = Some(message);
            slot.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Resolves with the next message.
    pub fn recv(&self) -> impl Future<Output = T> + '_ {
        Receive(self)
    }
}

struct Receive<'a, T>(&'a Mailbox<T>);

impl<T> Future for Receive<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.0.slot.lock().unwrap_or_else(|e| e.into_inner());
        match slot.0.take() {
            Some(message) => Poll::Ready(message),
            None => {
                // Checked and registered under one lock: a post cannot slip between.
                slot.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Mailbox<Vec<T>> {
    /// Adds `item` to the unread messages (nothing is replaced) and wakes the worker.
    pub fn push(&self, item: T) {
        let waker = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.0.get_or_insert_with(Vec::new).push(item);
            slot.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Shutdown is a mailbox with nothing in the letter.
pub type Shutdown = Mailbox<()>;
