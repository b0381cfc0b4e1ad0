//! The stream table: StreamID → STE (IHI 0070 G.b §3.3.1, §5.1, §6.3.24/§6.3.25).
//!
//! - **Linear**: one array of 2^LOG2SIZE STEs (64 bytes each), aligned to its full size.
//! - **2-level**: an array of 2^(LOG2SIZE − SPLIT) level-1 descriptors (8 bytes: `L2Ptr`,
//!   `Span`), each pointing at a level-2 array of 2^SPLIT STEs. `SPLIT` = 8 (16 KiB level-2
//!   tables; the architecture allows 6, 8 or 10). Level-2 tables are allocated on demand, the
//!   first time a StreamID in their span is configured; until then the descriptor has
//!   `Span = 0` and traffic from those StreamIDs is terminated (`C_BAD_STREAMID`).
//!
//! The format is chosen from `IDR0.ST_LEVEL` and the number of StreamID bits, unless the caller
//! asks for one; asking for 2-level on an SMMU without it is refused. QEMU accepts either
//! (SIDSIZE = 16: a linear table would take 4 MiB).
//!
//! Every STE starts as *abort* (`V = 1, Config = abort`): linear tables and every newly
//! allocated level-2 table are filled with abort entries before the SMMU can reach them, so
//! an unconfigured StreamID fails closed, silently.

use alloc::vec::Vec;
use core::fmt;

use tock_registers::{LocalRegisterCopy, register_bitfields};

use crate::{
    features::Features,
    hal::{DmaError, DmaRegion, SmmuHal},
    regs::{STRTAB_BASE, STRTAB_BASE_CFG},
    ste,
    writer::{ENTRY_QWORDS, EntryStorage, EntryWords},
};

register_bitfields! {u64,
    /// Level-1 stream table descriptor (§5.1).
    #[allow(missing_docs)]
    pub L1STD [
        /// log2(number of STEs in the level-2 table) + 1; 0 = no level-2 table.
        SPAN OFFSET(0) NUMBITS(5) [],
        /// Level-2 table address bits [55:6].
        L2PTR OFFSET(6) NUMBITS(50) []
    ]
}

/// Bytes per STE.
pub const STE_BYTES: usize = 64;
/// Bytes per level-1 descriptor.
pub const L1_DESC_BYTES: usize = 8;
/// StreamID bits resolved by each level-2 table.
pub const SPLIT: u8 = 8;
/// Largest linear table this driver allocates (2^22 STEs = 256 MiB would be absurd already).
pub const MAX_LINEAR_SID_BITS: u8 = 20;

/// Stream table format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrtabFormat {
    /// One array of STEs.
    Linear,
    /// Level-1 descriptors pointing at level-2 arrays of STEs.
    TwoLevel,
}

/// Parses `linear` or `2level` (the kernel's `smmu.strtab` boot argument).
impl core::str::FromStr for StrtabFormat {
    type Err = UnknownStrtabFormat;

    fn from_str(s: &str) -> Result<Self, UnknownStrtabFormat> {
        match s {
            "linear" => Ok(Self::Linear),
            "2level" => Ok(Self::TwoLevel),
            _ => Err(UnknownStrtabFormat),
        }
    }
}

/// A stream-table format name other than `linear` or `2level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownStrtabFormat;

/// Stream table failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrtabError {
    /// 2-level tables were requested but `IDR0.ST_LEVEL` says linear only.
    TwoLevelUnsupported,
    /// More StreamID bits requested than `IDR1.SIDSIZE`.
    SidBitsUnsupported {
        /// Requested bits.
        requested: u8,
        /// The SMMU's SIDSIZE.
        supported: u8,
    },
    /// A 2-level table needs at least `SPLIT` StreamID bits.
    SidBitsBelowSplit {
        /// Requested bits.
        sid_bits: u8,
    },
    /// A linear table this large is not allocated (use 2-level or fewer StreamID bits).
    LinearTooLarge {
        /// Requested bits.
        sid_bits: u8,
    },
    /// The StreamID is outside the table.
    StreamIdOutOfRange {
        /// The StreamID.
        sid: u32,
        /// StreamID bits covered by the table.
        sid_bits: u8,
    },
    /// The StreamID's level-2 table has not been allocated.
    NoLevel2 {
        /// The StreamID.
        sid: u32,
    },
    /// No memory for a table.
    Dma(DmaError),
}

impl fmt::Display for StrtabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TwoLevelUnsupported => {
                f.write_str("2-level stream table requested but IDR0.ST_LEVEL = linear only")
            }
            Self::SidBitsUnsupported {
                requested,
                supported,
            } => write!(
                f,
                "{requested} StreamID bits requested, SMMU supports {supported}"
            ),
            Self::SidBitsBelowSplit { sid_bits } => write!(
                f,
                "2-level stream table needs at least {SPLIT} StreamID bits, got {sid_bits}"
            ),
            Self::LinearTooLarge { sid_bits } => write!(
                f,
                "linear stream table for {sid_bits} StreamID bits is too large"
            ),
            Self::StreamIdOutOfRange { sid, sid_bits } => {
                write!(
                    f,
                    "StreamID {sid:#x} outside the {sid_bits}-bit stream table"
                )
            }
            Self::NoLevel2 { sid } => {
                write!(f, "StreamID {sid:#x} has no level-2 stream table yet")
            }
            Self::Dma(e) => write!(f, "stream table: {e}"),
        }
    }
}

impl core::error::Error for StrtabError {}

/// Shape of a stream table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrtabLayout {
    /// Format.
    pub format: StrtabFormat,
    /// StreamID bits covered (`LOG2SIZE`).
    pub sid_bits: u8,
}

impl StrtabLayout {
    /// Chooses a layout.
    ///
    /// `requested` overrides the format; otherwise 2-level is used when the SMMU supports it
    /// and there are more StreamID bits than one level-2 table covers. `sid_bits` limits the
    /// StreamIDs covered (default: all, `IDR1.SIDSIZE`).
    ///
    /// # Errors
    ///
    /// [`StrtabError`] when the request cannot be met.
    pub fn choose(
        features: &Features,
        requested: Option<StrtabFormat>,
        sid_bits: Option<u8>,
    ) -> Result<Self, StrtabError> {
        let supported = features.sid_bits;
        let sid_bits = match sid_bits {
            Some(bits) if bits > supported => {
                return Err(StrtabError::SidBitsUnsupported {
                    requested: bits,
                    supported,
                });
            }
            Some(bits) => bits,
            None => supported,
        };
        let format = requested.unwrap_or(if features.two_level_strtab && sid_bits > SPLIT {
            StrtabFormat::TwoLevel
        } else {
            StrtabFormat::Linear
        });
        match format {
            StrtabFormat::TwoLevel if !features.two_level_strtab => {
                Err(StrtabError::TwoLevelUnsupported)
            }
            StrtabFormat::TwoLevel if sid_bits < SPLIT => {
                Err(StrtabError::SidBitsBelowSplit { sid_bits })
            }
            StrtabFormat::Linear if sid_bits > MAX_LINEAR_SID_BITS => {
                Err(StrtabError::LinearTooLarge { sid_bits })
            }
            _ => Ok(Self { format, sid_bits }),
        }
    }

    /// The `STRTAB_BASE_CFG` value.
    pub fn base_cfg_value(&self) -> u32 {
        let fmt = match self.format {
            StrtabFormat::Linear => STRTAB_BASE_CFG::FMT::Linear,
            StrtabFormat::TwoLevel => {
                STRTAB_BASE_CFG::FMT::TwoLevel + STRTAB_BASE_CFG::SPLIT.val(u32::from(SPLIT))
            }
        };
        (fmt + STRTAB_BASE_CFG::LOG2SIZE.val(u32::from(self.sid_bits))).value
    }

    /// Bytes of the table `STRTAB_BASE` points at (the STE array or the level-1 array).
    pub fn table_bytes(&self) -> usize {
        match self.format {
            StrtabFormat::Linear => STE_BYTES << self.sid_bits,
            StrtabFormat::TwoLevel => L1_DESC_BYTES << (self.sid_bits - SPLIT),
        }
    }

    /// Alignment of that table: its full size, at least 64 bytes (§6.3.24).
    pub fn table_align(&self) -> usize {
        self.table_bytes().max(64)
    }

    /// Bytes of one level-2 table.
    pub const fn l2_bytes() -> usize {
        STE_BYTES << SPLIT
    }

    /// Number of level-1 descriptors (2-level only).
    pub fn l1_entries(&self) -> usize {
        match self.format {
            StrtabFormat::Linear => 0,
            StrtabFormat::TwoLevel => 1 << (self.sid_bits - SPLIT),
        }
    }

    /// Whether `sid` is covered.
    pub fn contains(&self, sid: u32) -> bool {
        u64::from(sid) >> self.sid_bits == 0
    }
}

/// The stream table memory.
pub struct StreamTable {
    layout: StrtabLayout,
    table: DmaRegion,
    level2: Vec<Option<DmaRegion>>,
}

/// One STE in table memory, for [`crate::writer::write_entry`].
pub struct SteSlot<'a> {
    region: &'a mut DmaRegion,
    offset: usize,
}

impl EntryStorage for SteSlot<'_> {
    fn load(&self, index: usize) -> u64 {
        self.region.read_u64(self.offset + index * 8)
    }

    fn store(&mut self, index: usize, value: u64) {
        self.region.write_u64(self.offset + index * 8, value);
    }
}

fn fill_abort(region: &mut DmaRegion, count: usize) {
    for i in 0..count {
        // Word 0 only: the allocation is zeroed, so the other words already are.
        region.write_u64(i * STE_BYTES, ste::ABORT[0]);
    }
}

impl StreamTable {
    /// Allocates the table; a linear table is filled with abort STEs, a 2-level table starts
    /// with every level-1 descriptor empty.
    ///
    /// # Errors
    ///
    /// [`StrtabError::Dma`] if the memory cannot be allocated.
    pub fn new<H: SmmuHal + ?Sized>(hal: &H, layout: StrtabLayout) -> Result<Self, StrtabError> {
        let mut table = hal
            .alloc_dma(layout.table_bytes(), layout.table_align())
            .map_err(StrtabError::Dma)?;
        let mut level2 = Vec::new();
        match layout.format {
            StrtabFormat::Linear => fill_abort(&mut table, 1 << layout.sid_bits),
            StrtabFormat::TwoLevel => level2.resize_with(layout.l1_entries(), || None),
        }
        Ok(Self {
            layout,
            table,
            level2,
        })
    }

    /// The layout.
    pub fn layout(&self) -> StrtabLayout {
        self.layout
    }

    /// The `STRTAB_BASE` value: read-allocate hint and table address.
    pub fn base_register_value(&self) -> u64 {
        (STRTAB_BASE::RA::SET + STRTAB_BASE::ADDR.val(self.table.phys_addr() >> 6)).value
    }

    fn check(&self, sid: u32) -> Result<(), StrtabError> {
        if self.layout.contains(sid) {
            Ok(())
        } else {
            Err(StrtabError::StreamIdOutOfRange {
                sid,
                sid_bits: self.layout.sid_bits,
            })
        }
    }

    /// Makes sure the STE for `sid` exists. For a 2-level table whose level-2 table is missing,
    /// allocates it, fills it with abort STEs, and only then publishes the level-1 descriptor
    /// (one 64-bit store after a publish barrier). Returns `true` if a descriptor was written:
    /// the caller must then issue `CMD_CFGI_STE` with `Leaf = 0` (or a range/all invalidation)
    /// and `CMD_SYNC`, so no cached copy of the old, empty descriptor survives.
    ///
    /// # Errors
    ///
    /// [`StrtabError::StreamIdOutOfRange`] or [`StrtabError::Dma`].
    pub fn ensure_ste<H: SmmuHal + ?Sized>(
        &mut self,
        hal: &H,
        sid: u32,
    ) -> Result<bool, StrtabError> {
        self.check(sid)?;
        if self.layout.format == StrtabFormat::Linear {
            return Ok(false);
        }
        let index = (sid >> SPLIT) as usize;
        if self.level2[index].is_some() {
            return Ok(false);
        }
        let bytes = StrtabLayout::l2_bytes();
        let mut l2 = hal.alloc_dma(bytes, bytes).map_err(StrtabError::Dma)?;
        fill_abort(&mut l2, 1 << SPLIT);
        // The abort STEs must be observable before the descriptor that makes them reachable.
        hal.publish_barrier();
        let desc =
            (L1STD::SPAN.val(u64::from(SPLIT) + 1) + L1STD::L2PTR.val(l2.phys_addr() >> 6)).value;
        self.table.write_u64(index * L1_DESC_BYTES, desc);
        self.level2[index] = Some(l2);
        Ok(true)
    }

    /// The STE for `sid`, for the update protocol.
    ///
    /// # Errors
    ///
    /// [`StrtabError::StreamIdOutOfRange`], or [`StrtabError::NoLevel2`] before
    /// [`StreamTable::ensure_ste`].
    pub fn ste_slot(&mut self, sid: u32) -> Result<SteSlot<'_>, StrtabError> {
        self.check(sid)?;
        match self.layout.format {
            StrtabFormat::Linear => Ok(SteSlot {
                region: &mut self.table,
                offset: sid as usize * STE_BYTES,
            }),
            StrtabFormat::TwoLevel => {
                let l2 = self.level2[(sid >> SPLIT) as usize]
                    .as_mut()
                    .ok_or(StrtabError::NoLevel2 { sid })?;
                Ok(SteSlot {
                    region: l2,
                    offset: (sid as usize & ((1 << SPLIT) - 1)) * STE_BYTES,
                })
            }
        }
    }

    /// Reads the STE for `sid`; `None` if it is outside the table or not allocated.
    pub fn read_ste(&self, sid: u32) -> Option<EntryWords> {
        self.check(sid).ok()?;
        let (region, offset) = match self.layout.format {
            StrtabFormat::Linear => (&self.table, sid as usize * STE_BYTES),
            StrtabFormat::TwoLevel => (
                self.level2[(sid >> SPLIT) as usize].as_ref()?,
                (sid as usize & ((1 << SPLIT) - 1)) * STE_BYTES,
            ),
        };
        Some(core::array::from_fn::<u64, ENTRY_QWORDS, _>(|i| {
            region.read_u64(offset + i * 8)
        }))
    }

    /// The raw level-1 descriptor at `index` (2-level tables only).
    pub fn l1_descriptor(&self, index: usize) -> Option<u64> {
        (self.layout.format == StrtabFormat::TwoLevel && index < self.level2.len())
            .then(|| self.table.read_u64(index * L1_DESC_BYTES))
    }

    /// Decodes a level-1 descriptor into (level-2 address, span).
    pub fn decode_l1(desc: u64) -> (u64, u8) {
        let d: LocalRegisterCopy<u64, L1STD::Register> = LocalRegisterCopy::new(desc);
        (d.read(L1STD::L2PTR) << 6, d.read(L1STD::SPAN) as u8)
    }

    /// Number of level-2 tables allocated so far.
    pub fn level2_tables(&self) -> usize {
        self.level2.iter().filter(|l2| l2.is_some()).count()
    }

    /// Returns all table memory to the HAL.
    ///
    /// # Safety
    ///
    /// The SMMU must no longer use the table (`SMMUEN = 0` acknowledged).
    pub unsafe fn free<H: SmmuHal + ?Sized>(self, hal: &H) {
        for l2 in self.level2.into_iter().flatten() {
            // SAFETY: the caller guarantees the SMMU no longer walks the table.
            unsafe { hal.free_dma(l2) };
        }
        // SAFETY: as above.
        unsafe { hal.free_dma(self.table) };
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::{
        fake::FakeSmmu,
        features::IdRegisters,
        ste::{SteConfig, SteState},
        writer,
    };

    fn qemu() -> Features {
        Features::decode(IdRegisters::QEMU_7_2)
    }

    #[test]
    fn chooses_two_level_when_supported_and_useful() {
        let f = qemu();
        let auto = StrtabLayout::choose(&f, None, None).unwrap();
        assert_eq!(
            auto,
            StrtabLayout {
                format: StrtabFormat::TwoLevel,
                sid_bits: 16
            }
        );
        // STRTAB_BASE_CFG: LOG2SIZE = 16, SPLIT = 8, FMT = 1.
        assert_eq!(auto.base_cfg_value(), 16 | (8 << 6) | (1 << 16));
        assert_eq!(auto.table_bytes(), 256 * 8);
        assert_eq!(auto.table_align(), 2048);
        // Few StreamIDs: one level-2 table's worth fits a linear table.
        let small = StrtabLayout::choose(&f, None, Some(8)).unwrap();
        assert_eq!(small.format, StrtabFormat::Linear);
        assert_eq!(small.base_cfg_value(), 8);
        assert_eq!(small.table_bytes(), 256 * 64);
        // Linear-only SMMU.
        let linear_only = Features {
            two_level_strtab: false,
            ..f
        };
        assert_eq!(
            StrtabLayout::choose(&linear_only, None, None)
                .unwrap()
                .format,
            StrtabFormat::Linear
        );
        assert_eq!(
            StrtabLayout::choose(&linear_only, Some(StrtabFormat::TwoLevel), None),
            Err(StrtabError::TwoLevelUnsupported)
        );
    }

    #[test]
    fn refuses_impossible_layouts() {
        let f = qemu();
        assert_eq!(
            StrtabLayout::choose(&f, None, Some(17)),
            Err(StrtabError::SidBitsUnsupported {
                requested: 17,
                supported: 16
            })
        );
        assert_eq!(
            StrtabLayout::choose(&f, Some(StrtabFormat::TwoLevel), Some(6)),
            Err(StrtabError::SidBitsBelowSplit { sid_bits: 6 })
        );
        let huge = Features { sid_bits: 32, ..f };
        assert_eq!(
            StrtabLayout::choose(&huge, Some(StrtabFormat::Linear), None),
            Err(StrtabError::LinearTooLarge { sid_bits: 32 })
        );
    }

    #[test]
    fn linear_table_starts_all_abort_and_is_size_aligned() {
        let smmu = FakeSmmu::qemu();
        let layout = StrtabLayout::choose(&qemu(), Some(StrtabFormat::Linear), None).unwrap();
        let mut t = StreamTable::new(&smmu, layout).unwrap();
        assert_eq!(t.table.size(), 64 << 16);
        assert_eq!(t.table.phys_addr() % (64 << 16), 0);
        for sid in (0..1u32 << 16).step_by(97).chain([0x8, 0xFF08, 0xFFFF]) {
            assert_eq!(t.read_ste(sid), Some(ste::ABORT), "sid {sid:#x}");
        }
        assert!(!t.ensure_ste(&smmu, 0xFF08).unwrap());
        assert_eq!(
            t.ensure_ste(&smmu, 0x1_0000),
            Err(StrtabError::StreamIdOutOfRange {
                sid: 0x1_0000,
                sid_bits: 16
            })
        );
        let base = t.base_register_value();
        assert_eq!(base & !(1 << 62), t.table.phys_addr());
        assert_ne!(base & (1 << 62), 0, "RA hint");
        // Linear: STE address = base + SID * 64.
        let mut slot = t.ste_slot(0x8).unwrap();
        slot.store(0, 0xAB);
        assert_eq!(smmu.read_phys_u64(t.table.phys_addr() + 8 * 64), 0xAB);
    }

    #[test]
    fn two_level_table_with_sparse_stream_ids() {
        let smmu = FakeSmmu::qemu();
        let layout = StrtabLayout::choose(&qemu(), Some(StrtabFormat::TwoLevel), None).unwrap();
        let mut t = StreamTable::new(&smmu, layout).unwrap();
        assert_eq!(t.l1_descriptor(0), Some(0));
        assert_eq!(t.read_ste(0x8), None);
        assert!(matches!(
            t.ste_slot(0x8),
            Err(StrtabError::NoLevel2 { sid: 0x8 })
        ));
        for sid in [0x8u32, 0xFF08] {
            assert!(t.ensure_ste(&smmu, sid).unwrap(), "first use allocates");
            assert!(!t.ensure_ste(&smmu, sid).unwrap(), "second use does not");
        }
        assert_eq!(t.level2_tables(), 2);
        for index in 0..256 {
            let desc = t.l1_descriptor(index).unwrap();
            if index == 0x00 || index == 0xFF {
                let (l2, span) = StreamTable::decode_l1(desc);
                assert_eq!(span, SPLIT + 1);
                assert_eq!(l2 % StrtabLayout::l2_bytes() as u64, 0);
                // Every STE of a new level-2 table is abort, read through the descriptor.
                for i in 0..256u64 {
                    assert_eq!(smmu.read_phys_u64(l2 + i * 64), 1);
                    assert_eq!(smmu.read_phys_u64(l2 + i * 64 + 8), 0);
                }
            } else {
                assert_eq!(desc, 0, "index {index:#x} must stay Span = 0");
            }
        }
        // Writing through the slot lands in the right level-2 entry.
        let target = ste::build(SteConfig::Bypass);
        let mut slot = t.ste_slot(0xFF08).unwrap();
        writer::write_entry::<_, ()>(&ste::FORMAT, &mut slot, &target, &mut |_| Ok(())).unwrap();
        assert_eq!(
            ste::decode(&t.read_ste(0xFF08).unwrap()),
            SteState::Known(SteConfig::Bypass)
        );
        assert_eq!(t.read_ste(0xFF09), Some(ste::ABORT));
        assert_eq!(t.read_ste(0x0008), Some(ste::ABORT));
        let (l2, _) = StreamTable::decode_l1(t.l1_descriptor(0xFF).unwrap());
        assert_eq!(smmu.read_phys_u64(l2 + 8 * 64), target[0]);
        let live = smmu.live_allocations();
        // SAFETY: the fake SMMU never walks this table.
        unsafe { t.free(&smmu) };
        assert_eq!(smmu.live_allocations(), live - 3);
    }
}
