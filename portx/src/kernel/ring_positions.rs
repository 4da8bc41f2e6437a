//! The event ring buffer's producer and consumer positions, read from a second,
//! read-only mapping of the ring's two metadata pages: aya's `RingBuf` reads them but
//! does not say them, and a drain needs to know whether it stopped at the end of what
//! had been written or at a record a program has reserved and not yet committed.
//!
//! The consumer stops at such a record, and every record after it waits too, however
//! old their events: a committed batch from another CPU, say. A drain that claims the
//! ring complete up to some time must first have read past every record that was
//! reserved before it looked. Under emulation a vCPU can sit for milliseconds between
//! a reserve and its commit.
//! https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/ringbuf.c (ringbuf_map_mmap_kern, __bpf_ringbuf_reserve)

use std::{
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{Result, bail};

/// A producer position: every record reserved before it was read lies before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark(usize);

pub struct RingPositions {
    /// The consumer page (the ring map's page 0) and the producer page (page 1),
    /// mapped read-only, each at the start of its page.
    consumer: Page,
    producer: Page,
}

struct Page {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the pages are only read, with atomic loads.
unsafe impl Send for Page {}
unsafe impl Sync for Page {}

impl Page {
    fn map(fd: BorrowedFd<'_>, page: usize) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let len = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })?;
        // SAFETY: a fresh read-only shared mapping of the map's page `page`; the kernel
        // allows any read-only range of a ring buffer map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                libc::off_t::try_from(page * len)?,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mapping page {page} of the event ring buffer: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            ptr: NonNull::new(ptr).expect("mmap returned null without failing"),
            len,
        })
    }

    /// The position at the start of the page, written by the kernel (producer) or by
    /// aya (consumer) with release stores.
    fn load(&self) -> usize {
        // SAFETY: the mapping is at least a page, page-aligned, and lives as long as
        // `self`; the kernel and aya write this word atomically.
        unsafe { self.ptr.cast::<AtomicUsize>().as_ref() }.load(Ordering::Acquire)
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

impl RingPositions {
    /// `fd` is the ring buffer map's.
    pub fn new(fd: BorrowedFd<'_>) -> Result<Self> {
        Ok(Self {
            consumer: Page::map(fd, 0)?,
            producer: Page::map(fd, 1)?,
        })
    }

    /// Where the producer is now.
    pub fn mark(&self) -> Mark {
        Mark(self.producer.load())
    }

    /// Whether the consumer has read up to `mark`.
    pub fn passed(&self, mark: Mark) -> bool {
        passed(self.consumer.load(), mark.0)
    }
}

/// Whether consumer position `consumer` is at or past producer position `mark`.
/// Positions only grow, and wrap with the machine word: compared by their distance.
fn passed(consumer: usize, mark: usize) -> bool {
    (mark.wrapping_sub(consumer) as isize) <= 0
}

#[cfg(test)]
mod tests {
    use super::passed;

    #[test]
    fn a_consumer_has_passed_a_mark_it_reached_even_across_the_wrap() {
        assert!(passed(100, 100));
        assert!(passed(108, 100));
        assert!(!passed(92, 100));
        // Across the word's wrap: the mark just past it, the consumer just before.
        assert!(!passed(usize::MAX - 7, 8));
        assert!(passed(8, usize::MAX - 7));
        assert!(passed(16, 8));
    }
}
