//! Heap blocks for the futures of requests in progress, reused per worker. A
//! connection's request pipeline runs in a heap block only while it has a request in
//! progress; allocating a fresh block every time interleaves those short-lived blocks
//! with the small long-lived state of idle connections, and the allocator then keeps a
//! page resident for a few live bytes (idle connections cost about three times their
//! live memory). Blocks come back here instead and are handed out again by layout.

use std::{
    alloc::Layout,
    cell::RefCell,
    future::Future,
    pin::Pin,
    ptr::NonNull,
    task::{Context, Poll},
};

/// Free blocks kept per worker; more are freed.
const KEPT: usize = 256;

/// One worker's free blocks, with their layouts.
#[derive(Debug, Default)]
pub struct FutureBlocks {
    free: RefCell<Vec<(Layout, NonNull<u8>)>>,
}

impl FutureBlocks {
    /// A block for `layout` (non-zero size): a free one, or a new allocation.
    fn take(&self, layout: Layout) -> NonNull<u8> {
        let mut free = self.free.borrow_mut();
        if let Some(index) = free.iter().rposition(|(l, _)| *l == layout) {
            return free.swap_remove(index).1;
        }
        drop(free);
        // SAFETY: `layout` has a non-zero size (checked by the caller).
        let block = unsafe { std::alloc::alloc(layout) };
        NonNull::new(block).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    }

    /// Takes back a block allocated for `layout` (its content already dropped).
    fn give(&self, layout: Layout, block: NonNull<u8>) {
        let mut free = self.free.borrow_mut();
        if free.len() < KEPT {
            free.push((layout, block));
        } else {
            // SAFETY: the block was allocated with `layout` and holds nothing live.
            unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
        }
    }

    /// Moves `future` into a block from this pool at once (so the caller's own future
    /// never holds it) and returns a small future running it there; the block is given
    /// back when that completes or is dropped.
    pub fn place<F: Future>(&self, future: F) -> Placed<'_, F> {
        let layout = Layout::new::<F>();
        let block = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            self.take(layout).cast::<F>()
        };
        // SAFETY: the block is allocated (or, for a zero-sized `F`, aligned) for `F`
        // and unused.
        unsafe { block.as_ptr().write(future) };
        Placed {
            blocks: self,
            block,
            layout,
        }
    }
}

impl Drop for FutureBlocks {
    fn drop(&mut self) {
        for (layout, block) in self.free.get_mut().drain(..) {
            // SAFETY: every free block was allocated with its recorded layout.
            unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
        }
    }
}

/// A future living in a pooled block (see [`FutureBlocks::place`]): polled where it
/// lies, dropped in place, its block given back.
pub struct Placed<'a, F> {
    blocks: &'a FutureBlocks,
    block: NonNull<F>,
    layout: Layout,
}

impl<F: Future> Future for Placed<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the `F` stays at this address until `drop` drops it in place.
        unsafe { Pin::new_unchecked(&mut *self.block.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Placed<'_, F> {
    fn drop(&mut self) {
        // SAFETY: the block holds a live `F` written by `place`, dropped once, here.
        unsafe { std::ptr::drop_in_place(self.block.as_ptr()) };
        if self.layout.size() > 0 {
            self.blocks.give(self.layout, self.block.cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc};

    use super::*;

    struct CountsDrops(Rc<Cell<u32>>, [u8; 64]);

    impl Drop for CountsDrops {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn a_block_is_reused_and_every_future_is_dropped_once() {
        let blocks = FutureBlocks::default();
        let drops = Rc::new(Cell::new(0));
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        for round in 0..3u32 {
            let held = CountsDrops(drops.clone(), [round as u8; 64]);
            let got = runtime.block_on(blocks.place(async move {
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                u32::from(held.1[0])
            }));
            assert_eq!(got, round);
        }
        assert_eq!(drops.get(), 3);
        assert_eq!(blocks.free.borrow().len(), 1, "one block, reused");
        // A future dropped before it completes is dropped too, and its block kept.
        let held = CountsDrops(drops.clone(), [0; 64]);
        let pending = blocks.place(async move {
            std::future::pending::<()>().await;
            drop(held);
        });
        let mut pending = Box::pin(pending);
        let waker = std::task::Waker::noop();
        assert!(
            pending
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending()
        );
        drop(pending);
        assert_eq!(drops.get(), 4);
        // Its own block (another layout) came back beside the first one.
        assert_eq!(blocks.free.borrow().len(), 2);
    }
}
