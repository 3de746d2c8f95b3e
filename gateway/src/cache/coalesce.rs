//! Request coalescing: while one request of a worker fetches a key from the upstream,
//! the worker's other requests for that key wait for it instead of going upstream too,
//! then look in the cache again. Per worker, so nothing is shared or locked.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    future::Future,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

/// One fetch in progress.
#[derive(Debug, Default)]
pub struct Flight {
    done: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Flight {
    /// Resolves when the fetch has ended (stored or not).
    pub fn landed(self: &Rc<Self>) -> impl Future<Output = ()> + use<> {
        Landed(self.clone())
    }
}

struct Landed(Rc<Flight>);

impl Future for Landed {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.done.get() {
            return Poll::Ready(());
        }
        self.0.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// A worker's fetches in progress, by key hash.
#[derive(Debug, Default)]
pub struct Flights(Rc<RefCell<HashMap<u64, Rc<Flight>>>>);

/// The request fetching a key; the waiting ones are released when it is dropped.
#[derive(Debug)]
pub struct Leader {
    flights: Rc<RefCell<HashMap<u64, Rc<Flight>>>>,
    hash: u64,
    flight: Rc<Flight>,
}

/// What a request does about a key nobody has in the cache.
pub enum Role {
    /// Fetch it; others wait until the leader is dropped.
    Lead(Leader),
    /// Another request is fetching it: wait for that.
    Follow(Rc<Flight>),
}

impl Flights {
    /// Joins the fetch of `hash`, leading it if none is in progress.
    pub fn join(&self, hash: u64) -> Role {
        let mut flights = self.0.borrow_mut();
        if let Some(flight) = flights.get(&hash) {
            return Role::Follow(flight.clone());
        }
        let flight = Rc::new(Flight::default());
        flights.insert(hash, flight.clone());
        Role::Lead(Leader {
            flights: self.0.clone(),
            hash,
            flight,
        })
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.flights.borrow_mut().remove(&self.hash);
        self.flight.done.set(true);
        for waker in self.flight.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_per_key_and_followers_are_released() {
        let flights = Flights::default();
        let Role::Lead(leader) = flights.join(7) else {
            panic!("the first request leads");
        };
        let Role::Follow(flight) = flights.join(7) else {
            panic!("the second follows");
        };
        assert!(
            matches!(flights.join(8), Role::Lead(_)),
            "other keys are independent"
        );
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut landed = Box::pin(flight.landed());
        assert!(landed.as_mut().poll(&mut cx).is_pending());
        drop(leader);
        assert!(landed.as_mut().poll(&mut cx).is_ready());
        assert!(
            matches!(flights.join(7), Role::Lead(_)),
            "a new fetch after landing"
        );
    }
}
