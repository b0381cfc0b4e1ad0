//! Circular-queue index arithmetic (IHI 0070 G.b §3.5.1).
//!
//! A queue holds 2^n entries. `PROD` and `CONS` each hold an n-bit index plus a *wrap bit* at
//! bit n, which toggles every time the index wraps. Read together, `index | wrap` is simply an
//! (n+1)-bit counter of entries produced/consumed modulo 2^(n+1) = 2N, and all the queue rules
//! follow from that:
//!
//! - empty: `PROD == CONS` (same index, same wrap);
//! - full: same index, different wrap, i.e. `PROD - CONS == N (mod 2N)`;
//! - entries in the queue: `(PROD - CONS) mod 2N`, which is always in `0..=N` for a consistent
//!   pair (§3.5.1 lists the inconsistent states; we detect them as a difference above N).
//!
//! The command queue additionally keeps *monotonic* 64-bit counts of commands produced and
//! consumed (they never wrap in practice: 2^64 commands). Converting a `CONS` register value
//! to a monotonic count needs a reference point: if the exact monotonic producer count `P` is
//! known at the moment `CONS` was read, then `P - N <= C <= P`, a window of N+1 < 2N values,
//! so `C = P - ((P - CONS) mod 2N)` is unambiguous ([`QueueGeometry::consumed_since`]).

use core::fmt;

/// Largest queue supported by the architecture: 2^19 entries (§3.5.1).
pub const MAX_LOG2_ENTRIES: u8 = 19;

/// The size of a queue and the arithmetic on its `PROD`/`CONS` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueGeometry {
    log2_entries: u8,
}

/// A `PROD`/`CONS` pair that cannot occur in a consistent queue (more than N entries apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InconsistentPointers {
    /// The producer pointer (index | wrap).
    pub prod: u32,
    /// The consumer pointer (index | wrap).
    pub cons: u32,
}

impl fmt::Display for InconsistentPointers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "inconsistent queue pointers prod={:#x} cons={:#x}",
            self.prod, self.cons
        )
    }
}

impl core::error::Error for InconsistentPointers {}

impl QueueGeometry {
    /// A queue of 2^`log2_entries` entries; `None` above [`MAX_LOG2_ENTRIES`].
    pub const fn new(log2_entries: u8) -> Option<Self> {
        if log2_entries <= MAX_LOG2_ENTRIES {
            Some(Self { log2_entries })
        } else {
            None
        }
    }

    /// log2 of the number of entries (the `LOG2SIZE` register field).
    pub const fn log2_entries(self) -> u8 {
        self.log2_entries
    }

    /// Number of entries, N.
    pub const fn entries(self) -> u32 {
        1 << self.log2_entries
    }

    /// Mask of the index bits.
    pub const fn index_mask(self) -> u32 {
        self.entries() - 1
    }

    /// The wrap bit (bit n).
    pub const fn wrap_bit(self) -> u32 {
        self.entries()
    }

    /// Mask of index and wrap bits: the meaningful part of a `PROD`/`CONS` value.
    pub const fn pointer_mask(self) -> u32 {
        (self.entries() << 1) - 1
    }

    /// Slot index of a pointer.
    pub const fn index(self, ptr: u32) -> u32 {
        ptr & self.index_mask()
    }

    /// Wrap flag of a pointer.
    pub const fn wrap(self, ptr: u32) -> bool {
        ptr & self.wrap_bit() != 0
    }

    /// `ptr` advanced by `n` entries, wrapping index and toggling the wrap bit as needed.
    pub const fn advance(self, ptr: u32, n: u32) -> u32 {
        ptr.wrapping_add(n) & self.pointer_mask()
    }

    /// Number of entries between `cons` and `prod` (0..=N for consistent pointers).
    ///
    /// # Errors
    ///
    /// [`InconsistentPointers`] if the pair is more than N apart (§3.5.1's inconsistent states).
    pub const fn used(self, prod: u32, cons: u32) -> Result<u32, InconsistentPointers> {
        let used = prod.wrapping_sub(cons) & self.pointer_mask();
        if used > self.entries() {
            Err(InconsistentPointers {
                prod: prod & self.pointer_mask(),
                cons: cons & self.pointer_mask(),
            })
        } else {
            Ok(used)
        }
    }

    /// Free entries (N minus used).
    ///
    /// # Errors
    ///
    /// As [`QueueGeometry::used`].
    pub const fn free(self, prod: u32, cons: u32) -> Result<u32, InconsistentPointers> {
        match self.used(prod, cons) {
            Ok(used) => Ok(self.entries() - used),
            Err(e) => Err(e),
        }
    }

    /// Whether the queue is empty (same index, same wrap).
    pub const fn is_empty(self, prod: u32, cons: u32) -> bool {
        (prod ^ cons) & self.pointer_mask() == 0
    }

    /// Whether the queue is full (same index, different wrap).
    pub const fn is_full(self, prod: u32, cons: u32) -> bool {
        (prod ^ cons) & self.pointer_mask() == self.wrap_bit()
    }

    /// The register value (index | wrap) for a monotonic entry count.
    pub const fn pointer_of(self, count: u64) -> u32 {
        (count & self.pointer_mask() as u64) as u32
    }

    /// The slot holding the entry with monotonic number `count`.
    pub const fn slot_of(self, count: u64) -> u32 {
        (count & self.index_mask() as u64) as u32
    }

    /// Converts a consumer pointer into a monotonic consumed count, given the exact monotonic
    /// produced count `produced` at the time the pointer was read (see the module docs).
    ///
    /// # Errors
    ///
    /// [`InconsistentPointers`] if `cons` is more than N behind `produced` (or ahead of it).
    pub const fn consumed_since(
        self,
        produced: u64,
        cons: u32,
    ) -> Result<u64, InconsistentPointers> {
        match self.used(self.pointer_of(produced), cons) {
            Ok(behind) if behind as u64 <= produced => Ok(produced - behind as u64),
            // Behind the very beginning of the queue's history: the consumer is in fact ahead.
            Ok(_) => Err(InconsistentPointers {
                prod: self.pointer_of(produced),
                cons: cons & self.pointer_mask(),
            }),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn rejects_oversized_queues() {
        assert!(QueueGeometry::new(19).is_some());
        assert!(QueueGeometry::new(20).is_none());
    }

    #[test]
    fn one_entry_queue_uses_bit_zero_as_wrap() {
        // §6.3: with LOG2SIZE = 0 the index has no bits and bit 0 is the wrap flag.
        let q = QueueGeometry::new(0).unwrap();
        assert_eq!(q.entries(), 1);
        assert_eq!(q.wrap_bit(), 1);
        assert!(q.is_full(1, 0));
        assert!(q.is_empty(1, 1));
        assert_eq!(q.advance(1, 1), 0);
    }

    /// Drives a model producer and consumer around tiny queues many times and checks every
    /// predicate against plain counters.
    #[test]
    fn tiny_queues_wrap_many_times() {
        for log2 in [1u8, 2, 3] {
            let q = QueueGeometry::new(log2).unwrap();
            let n = q.entries();
            let (mut prod, mut cons) = (0u32, 0u32);
            let (mut produced, mut consumed) = (0u64, 0u64);
            let mut wraps_seen = 0;
            // A deterministic, irregular schedule of produce/consume bursts.
            for step in 0..5_000u32 {
                let burst = (step * 7 + 3) % (n + 1);
                let free = q.free(prod, cons).unwrap();
                let k = burst.min(free);
                let old_wrap = q.wrap(prod);
                prod = q.advance(prod, k);
                produced += u64::from(k);
                if q.wrap(prod) != old_wrap {
                    wraps_seen += 1;
                }
                assert_eq!(prod, q.pointer_of(produced));
                let used = q.used(prod, cons).unwrap();
                assert_eq!(u64::from(used), produced - consumed);
                assert_eq!(q.is_full(prod, cons), used == n);
                assert_eq!(q.is_empty(prod, cons), used == 0);
                assert_eq!(q.consumed_since(produced, cons), Ok(consumed));

                let take = ((step * 5 + 1) % (n + 1)).min(used);
                cons = q.advance(cons, take);
                consumed += u64::from(take);
                assert_eq!(q.index(cons), q.slot_of(consumed));
                assert_eq!(q.consumed_since(produced, cons), Ok(consumed));
            }
            assert!(
                wraps_seen > 100,
                "queue of {n} wrapped only {wraps_seen} times"
            );
        }
    }

    #[test]
    fn full_and_empty_differ_only_in_wrap() {
        let q = QueueGeometry::new(2).unwrap();
        // Producer one full lap ahead: same index 1, opposite wrap.
        let cons = 0b001;
        let prod = q.advance(cons, 4);
        assert_eq!(prod, 0b101);
        assert!(q.is_full(prod, cons));
        assert!(!q.is_empty(prod, cons));
        assert_eq!(q.free(prod, cons), Ok(0));
        assert!(q.is_empty(cons, cons));
        assert_eq!(q.free(cons, cons), Ok(4));
    }

    #[test]
    fn inconsistent_pairs_are_detected() {
        let q = QueueGeometry::new(2).unwrap();
        // §3.5.1: PROD.WR > CONS.RD with different wraps is inconsistent (more than N apart).
        let err = q.used(0b110, 0b001).unwrap_err();
        assert_eq!(
            err,
            InconsistentPointers {
                prod: 0b110,
                cons: 0b001
            }
        );
        // A consumer "ahead" of the producer is the same thing seen from the other side.
        assert!(q.consumed_since(10, q.pointer_of(11)).is_err());
        // Before the first lap the consumer cannot be "behind" by more than was produced.
        assert!(q.consumed_since(1, 0b110).is_err());
    }

    #[test]
    fn monotonic_conversion_covers_the_whole_window() {
        let q = QueueGeometry::new(3).unwrap();
        for produced in [0u64, 7, 8, 9, 1_000, u64::from(u32::MAX) + 5] {
            let lo = produced.saturating_sub(u64::from(q.entries()));
            let got: Vec<u64> = (lo..=produced)
                .map(|c| q.consumed_since(produced, q.pointer_of(c)).unwrap())
                .collect();
            let want: Vec<u64> = (lo..=produced).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn register_bits_above_the_pointer_are_ignored() {
        let q = QueueGeometry::new(3).unwrap();
        // CMDQ_CONS carries ERR in bits [30:24]; EVENTQ_PROD carries OVFLG in bit 31.
        let cons = 0x0100_0003;
        assert_eq!(q.used(0x5, cons), Ok(2));
        assert!(q.is_empty(0x8000_0003, 0x3));
    }
}
