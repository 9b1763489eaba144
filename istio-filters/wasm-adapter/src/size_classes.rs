//! The modules' allocator: a free list per power-of-two size class (8 B … 2 KiB) in front of
//! the system allocator (wasi-libc's dlmalloc), which keeps every larger block.
//!
//! Why: a request allocates and frees a few hundred small blocks (header strings, keys, span
//! values), and dlmalloc's bookkeeping (bins, boundary tags, coalescing) was a large share of a
//! request's guest cost (BENCHMARKS.md, "Session 9"). Here a small `alloc` is a pop and a
//! `dealloc` a push: Rust hands the block's layout back on `dealloc`, so blocks carry no header.
//! The price is memory: a block is rounded up to its class, and a freed small block serves its
//! class only (never returned to dlmalloc). A VM serves its requests one callback at a time, so
//! each class holds at most what the busiest moment needed, and later requests reuse it.
//!
//! Only for wasm32 without threads (every proxy-wasm VM): the state is a plain cell. Elsewhere
//! the module is built for its tests only.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr::{self, null_mut};

/// Classes 8, 16, …, 2048 bytes.
const CLASSES: usize = 9;
const MIN_SHIFT: u32 = 3;
const MAX_SMALL: usize = 1 << (MIN_SHIFT as usize + CLASSES - 1);
/// Fresh small blocks are cut from chunks of this size, taken from the system allocator.
const CHUNK: usize = 64 * 1024;

pub struct SizeClasses {
    state: UnsafeCell<State>,
}

struct State {
    /// Head of each class's free list; a free block's first word points to the next one.
    free: [*mut u8; CLASSES],
    /// The unused rest of the current chunk.
    next: usize,
    end: usize,
}

// SAFETY: only where there is one thread (wasm32 without the `atomics` feature), and the
// allocator is never re-entered (it calls only the system allocator, which does not call back).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for SizeClasses {}

impl SizeClasses {
    pub const fn new() -> Self {
        Self {
            state: UnsafeCell::new(State {
                free: [null_mut(); CLASSES],
                next: 0,
                end: 0,
            }),
        }
    }
}

impl Default for SizeClasses {
    fn default() -> Self {
        Self::new()
    }
}

/// The class of a layout (its size rounded up to a power of two, at least its alignment), or
/// `None` for a block the system allocator keeps.
fn class(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1);
    if size > MAX_SMALL {
        return None;
    }
    let log2 = usize::BITS - (size - 1).leading_zeros();
    Some(log2.saturating_sub(MIN_SHIFT) as usize)
}

const fn class_size(class: usize) -> usize {
    1 << (MIN_SHIFT as usize + class)
}

impl State {
    /// A fresh block of `size` (a power of two), aligned to `size`.
    unsafe fn cut(&mut self, size: usize) -> *mut u8 {
        let mut at = (self.next + size - 1) & !(size - 1);
        if self.next == 0 || at + size > self.end {
            // SAFETY: CHUNK and MAX_SMALL are non-zero powers of two.
            let chunk =
                unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, MAX_SMALL)) };
            if chunk.is_null() {
                return null_mut();
            }
            at = chunk as usize;
            self.end = at + CHUNK;
        }
        self.next = at + size;
        at as *mut u8
    }
}

unsafe impl GlobalAlloc for SizeClasses {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: one thread, no re-entry (see `Sync`); a free block's first word (blocks are
        // at least 8 bytes, aligned to their size) holds the next free block.
        unsafe {
            let state = &mut *self.state.get();
            let head = state.free[class];
            if head.is_null() {
                return state.cut(class_size(class));
            }
            state.free[class] = *head.cast::<*mut u8>();
            head
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class(layout).is_none() {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: a block of at least `layout.size()` bytes, or null.
        unsafe {
            let block = self.alloc(layout);
            if !block.is_null() {
                ptr::write_bytes(block, 0, layout.size());
            }
            block
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout) else {
            // SAFETY: the caller's contract: `block` came from `alloc` with this layout, which
            // gave it to the system allocator.
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: as in `alloc`; the block is the caller's no longer.
        unsafe {
            let state = &mut *self.state.get();
            *block.cast::<*mut u8>() = state.free[class];
            state.free[class] = block;
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract (`new_size` rounded up to `align` does not overflow).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            // The block already has room for the new size.
            (Some(old), Some(new)) if old == new => block,
            // SAFETY: the caller's contract, passed on.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            // SAFETY: a fresh block, the old one's bytes copied, then the old one freed.
            _ => unsafe {
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
                moved
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_to_powers_of_two_from_eight() {
        let of = |size, align| class(Layout::from_size_align(size, align).unwrap());
        assert_eq!(of(0, 1), Some(0));
        assert_eq!(of(1, 1), Some(0));
        assert_eq!(of(8, 1), Some(0));
        assert_eq!(of(9, 1), Some(1));
        assert_eq!(of(4, 16), Some(1));
        assert_eq!(of(2048, 1), Some(8));
        assert_eq!(class_size(8), 2048);
        assert_eq!(of(2049, 1), None);
        assert_eq!(of(8, 4096), None);
    }

    #[test]
    fn blocks_are_aligned_disjoint_and_reused() {
        let heap = SizeClasses::new();
        let layouts: Vec<Layout> = [(1, 1), (7, 1), (24, 8), (100, 4), (600, 16), (2048, 1)]
            .into_iter()
            .chain([(5000, 8), (3, 64)])
            .map(|(size, align)| Layout::from_size_align(size, align).unwrap())
            .collect();
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        for round in 0..300u32 {
            let layout = layouts[round as usize % layouts.len()];
            // SAFETY: a non-zero-sized layout; the block is written within its size.
            let block = unsafe { heap.alloc(layout) };
            assert!(!block.is_null());
            assert_eq!(block as usize % layout.align(), 0, "{layout:?}");
            let fill = (round % 251) as u8;
            unsafe { ptr::write_bytes(block, fill, layout.size()) };
            live.push((block, layout, fill));
            if round % 3 == 2 {
                let (block, layout, _) = live.remove(live.len() / 2);
                unsafe { heap.dealloc(block, layout) };
            }
        }
        // Every live block still holds what was written to it: none overlaps another.
        for (block, layout, fill) in &live {
            let bytes = unsafe { std::slice::from_raw_parts(*block, layout.size()) };
            assert!(bytes.iter().all(|b| b == fill), "{layout:?}");
        }
        // A freed small block is the next one handed out for its class.
        let (block, layout, _) = live.pop().unwrap();
        unsafe { heap.dealloc(block, layout) };
        if class(layout).is_some() {
            assert_eq!(unsafe { heap.alloc(layout) }, block);
        }
        // Growing within the class keeps the block; past it, the bytes move along.
        let small = Layout::from_size_align(9, 1).unwrap();
        let block = unsafe { heap.alloc(small) };
        unsafe { ptr::write_bytes(block, 7, 9) };
        assert_eq!(unsafe { heap.realloc(block, small, 16) }, block);
        let grown = unsafe { heap.realloc(block, Layout::from_size_align(16, 1).unwrap(), 4000) };
        let bytes = unsafe { std::slice::from_raw_parts(grown, 9) };
        assert!(bytes.iter().all(|b| *b == 7));
        unsafe { heap.dealloc(grown, Layout::from_size_align(4000, 1).unwrap()) };
        let zeroed = unsafe { heap.alloc_zeroed(Layout::from_size_align(16, 1).unwrap()) };
        let bytes = unsafe { std::slice::from_raw_parts(zeroed, 16) };
        assert!(bytes.iter().all(|b| *b == 0));
    }
}
