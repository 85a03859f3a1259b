//! Console output a VM wrote that cannot go out yet.
//!
//! All VMs share one physical UART. While Bothy's own prompt is open (see
//! [`crate::prompt`]) a guest's output must not land in the middle of what the
//! user is typing, and while the UART is busy a writer should not spin on it
//! with a vCPU stopped. Either way, the bytes wait here, one `OutputBuffer` per
//! VM, and the hyp drains them once the console is free again.
//!
//! The buffer is a fixed-capacity ring. Its memory is taken once, in
//! [`OutputBuffer::new`], and it never grows: bytes arrive on the MMIO exit of a
//! guest's UART write, which must not allocate. When it is full the *oldest*
//! byte goes: what the guest wrote last (a panic, a login prompt) is what the
//! user most needs to see. Every byte lost that way is counted, so the hyp can
//! say how much is missing ([`OutputBuffer::take_dropped`]) rather than print a
//! silently spliced transcript.

use alloc::boxed::Box;
use alloc::vec;

pub struct OutputBuffer {
    /// A boxed slice rather than a `Vec` or `VecDeque`: it has no way to grow.
    buf: Box<[u8]>,
    /// Index of the oldest byte.
    head: usize,
    len: usize,
    /// Bytes overwritten since the last `take_dropped`.
    dropped: u64,
}

impl OutputBuffer {
    /// A buffer for `capacity` bytes, allocated here and only here. A zero
    /// capacity is allowed: every byte is then dropped and counted.
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity].into_boxed_slice(),
            head: 0,
            len: 0,
            dropped: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append one byte; when full, the oldest byte makes room and is counted.
    pub fn push(&mut self, byte: u8) {
        let capacity = self.capacity();
        if capacity == 0 {
            self.dropped += 1;
            return;
        }
        if self.len == capacity {
            // Overwrite the oldest in place; the ring simply moves on by one. (`head` is
            // always below the capacity.)
            if let Some(oldest) = self.buf.get_mut(self.head) {
                *oldest = byte;
            }
            self.head = (self.head + 1) % capacity;
            self.dropped += 1;
        } else {
            self.buf[(self.head + self.len) % capacity] = byte;
            self.len += 1;
        }
    }

    /// The oldest byte, removed.
    pub fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        // `head` is always below the capacity.
        let byte = *self.buf.get(self.head)?;
        self.head = (self.head + 1) % self.capacity();
        self.len -= 1;
        Some(byte)
    }

    /// Hand every waiting byte to `out`, oldest first, leaving the buffer empty.
    pub fn drain_into(&mut self, mut out: impl FnMut(u8)) {
        let (first, second) = self.as_slices();
        first.iter().chain(second).for_each(|&b| out(b));
        self.clear();
    }

    /// The waiting bytes, oldest first, as the two runs they occupy in the ring
    /// (the second is empty unless the contents wrap). For a writer that takes
    /// slices; follow it with [`Self::clear`].
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        let end = self.head + self.len;
        if end <= self.capacity() {
            (&self.buf[self.head..end], &[])
        } else {
            (&self.buf[self.head..], &self.buf[..end - self.capacity()])
        }
    }

    /// Forget the waiting bytes. They were delivered, not lost: `dropped` is
    /// left alone.
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Bytes lost to a full buffer since the last [`Self::take_dropped`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The lost-byte count, reset to zero: the hyp reports each loss once.
    pub fn take_dropped(&mut self) -> u64 {
        core::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn drain(buf: &mut OutputBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        buf.drain_into(|b| out.push(b));
        out
    }

    fn pop_all(buf: &mut OutputBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = buf.pop() {
            out.push(b);
        }
        out
    }

    #[test]
    fn a_new_buffer_is_empty() {
        let mut buf = OutputBuffer::new(8);
        assert_eq!(buf.capacity(), 8);
        assert_eq!(buf.len(), 0);
        assert!(buf.is_empty());
        assert_eq!(buf.pop(), None);
        assert_eq!(buf.dropped(), 0);
        assert_eq!(buf.as_slices(), (&[][..], &[][..]));
    }

    #[test]
    fn bytes_come_out_in_the_order_they_went_in() {
        let mut buf = OutputBuffer::new(8);
        for &b in b"hello" {
            buf.push(b);
        }
        assert_eq!(buf.len(), 5);
        assert!(!buf.is_empty());
        assert_eq!(buf.pop(), Some(b'h'));
        assert_eq!(buf.len(), 4);
        assert_eq!(drain(&mut buf), b"ello");
        assert!(buf.is_empty());
        assert_eq!(buf.dropped(), 0);
    }

    #[test]
    fn contents_survive_wrapping_around_the_end() {
        let mut buf = OutputBuffer::new(4);
        for &b in b"abc" {
            buf.push(b);
        }
        assert_eq!(buf.pop(), Some(b'a'));
        assert_eq!(buf.pop(), Some(b'b'));
        // head is at 2: "cdef" occupies slots 2, 3, 0, 1.
        for &b in b"def" {
            buf.push(b);
        }
        assert_eq!(buf.len(), 4);
        assert_eq!(buf.as_slices(), (&b"cd"[..], &b"ef"[..]));
        assert_eq!(pop_all(&mut buf), b"cdef");
        assert_eq!(buf.dropped(), 0);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_it() {
        let mut buf = OutputBuffer::new(4);
        for &b in b"abcdef" {
            buf.push(b);
        }
        assert_eq!(buf.len(), 4);
        assert_eq!(buf.dropped(), 2);
        assert_eq!(buf.as_slices(), (&b"cd"[..], &b"ef"[..]));
        assert_eq!(drain(&mut buf), b"cdef");
        assert_eq!(buf.dropped(), 2, "draining is delivery, not loss");
    }

    #[test]
    fn take_dropped_reports_each_loss_once() {
        let mut buf = OutputBuffer::new(2);
        for b in 0..5 {
            buf.push(b);
        }
        assert_eq!(buf.take_dropped(), 3);
        assert_eq!(buf.dropped(), 0);
        assert_eq!(buf.take_dropped(), 0);
        buf.push(5);
        assert_eq!(buf.take_dropped(), 1);
        assert_eq!(pop_all(&mut buf), [4, 5]);
    }

    #[test]
    fn a_zero_capacity_buffer_counts_every_byte() {
        let mut buf = OutputBuffer::new(0);
        buf.push(1);
        buf.push(2);
        assert!(buf.is_empty());
        assert_eq!(buf.pop(), None);
        assert_eq!(buf.take_dropped(), 2);
        assert_eq!(drain(&mut buf), b"");
    }

    #[test]
    fn clear_empties_without_counting() {
        let mut buf = OutputBuffer::new(4);
        for &b in b"xyz" {
            buf.push(b);
        }
        buf.clear();
        assert!(buf.is_empty());
        assert_eq!(buf.dropped(), 0);
        buf.push(b'q');
        assert_eq!(pop_all(&mut buf), b"q");
    }

    #[test]
    fn filling_and_overflowing_never_reallocates() {
        let mut buf = OutputBuffer::new(64);
        let ptr = buf.buf.as_ptr();
        for i in 0..10_000u32 {
            buf.push(i as u8);
            if i % 7 == 0 {
                buf.pop();
            }
        }
        assert_eq!(buf.len(), 64);
        assert_eq!(buf.capacity(), 64);
        assert_eq!(buf.buf.as_ptr(), ptr, "the ring moved");
        drain(&mut buf);
        assert_eq!(buf.buf.as_ptr(), ptr);
    }

    proptest::proptest! {
        /// Against a model: the last `capacity` bytes of everything pushed and
        /// not yet popped, and a drop count of what fell off the front.
        #[test]
        fn matches_a_bounded_queue_model(
            capacity in 0usize..16,
            ops in proptest::collection::vec(proptest::option::of(proptest::prelude::any::<u8>()), 0..200),
        ) {
            let mut buf = OutputBuffer::new(capacity);
            let mut model = alloc::collections::VecDeque::new();
            let mut dropped = 0u64;
            for op in ops {
                match op {
                    Some(b) => {
                        buf.push(b);
                        model.push_back(b);
                        if model.len() > capacity {
                            model.pop_front();
                            dropped += 1;
                        }
                    }
                    None => proptest::prop_assert_eq!(buf.pop(), model.pop_front()),
                }
                proptest::prop_assert_eq!(buf.len(), model.len());
                proptest::prop_assert_eq!(buf.dropped(), dropped);
                let (a, b) = buf.as_slices();
                let joined: Vec<u8> = a.iter().chain(b).copied().collect();
                proptest::prop_assert_eq!(joined, model.iter().copied().collect::<Vec<u8>>());
            }
        }
    }
}
