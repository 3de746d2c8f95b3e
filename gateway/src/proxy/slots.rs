//! Parked wakers of worker-local futures that something else wakes later (the drain
//! signal, the idle clock): each waiting future holds a slot with a value and its
//! waker, and leaves it when dropped. Slots are reused, so the slab stays as large as
//! the most waiters there ever were at once.

use std::{
    cell::{Cell, RefCell},
    task::Waker,
};

/// A slab of parked wakers, each with a value the waker of the slab matches against.
#[derive(Debug)]
pub struct WakerSlots<T> {
    slots: RefCell<Vec<Option<(T, Waker)>>>,
    free: RefCell<Vec<usize>>,
    parked: Cell<usize>,
}

impl<T> Default for WakerSlots<T> {
    fn default() -> Self {
        Self {
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            parked: Cell::new(0),
        }
    }
}

impl<T> WakerSlots<T> {
    /// Parks `waker` with `value` in `slot` (a new slot when `None`); returns the slot.
    pub fn park(&self, slot: Option<usize>, value: T, waker: &Waker) -> usize {
        let mut slots = self.slots.borrow_mut();
        let slot = slot.unwrap_or_else(|| {
            self.parked.set(self.parked.get() + 1);
            self.free.borrow_mut().pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            })
        });
        match &mut slots[slot] {
            Some((_, parked)) if parked.will_wake(waker) => {}
            entry => *entry = Some((value, waker.clone())),
        }
        slot
    }

    /// Whether `slot` was woken (its entry taken) since it was parked.
    pub fn was_woken(&self, slot: usize) -> bool {
        self.slots.borrow()[slot].is_none()
    }

    /// Frees `slot` (its future is gone).
    pub fn leave(&self, slot: usize) {
        self.slots.borrow_mut()[slot] = None;
        self.free.borrow_mut().push(slot);
        self.parked.set(self.parked.get() - 1);
    }

    /// Wakes, and takes out, every parked entry whose value `due` accepts.
    pub fn wake_where(&self, due: impl Fn(&T) -> bool) {
        if self.parked.get() == 0 {
            return;
        }
        for entry in self.slots.borrow_mut().iter_mut() {
            if entry.as_ref().is_some_and(|(value, _)| due(value))
                && let Some((_, waker)) = entry.take()
            {
                waker.wake();
            }
        }
    }

    /// Futures holding a slot now.
    pub fn parked(&self) -> usize {
        self.parked.get()
    }

    /// Slots ever made (parked or free).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.slots.borrow().len()
    }
}
