//! The cross-thread shutdown trigger: the main thread sets it on SIGTERM/SIGINT; the
//! worker's runtime is woken through its waker (monoio's `sync` feature makes that safe
//! from another thread). Touched once per process lifetime, never on the request path.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

/// A one-shot, cross-thread signal with one waiting worker.
#[derive(Debug, Default)]
pub struct Shutdown {
    triggered: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Shutdown {
    /// Fires the signal and wakes the worker.
    pub fn trigger(&self) {
        self.triggered.store(true, Ordering::Release);
        if let Some(waker) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            waker.wake();
        }
    }

    /// Resolves once [`Shutdown::trigger`] has been called.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        ShutdownWait(self)
    }
}

struct ShutdownWait<'a>(&'a Shutdown);

impl Future for ShutdownWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.triggered.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.0.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        // Re-check: a trigger between the load and the store would otherwise be missed.
        if self.0.triggered.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
