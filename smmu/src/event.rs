//! Event records and event-queue consumption (IHI 0070 G.b §3.5, §7.3, §7.4).
//!
//! The SMMU appends 32-byte records and advances `EVENTQ_PROD` (page 1); software reads from
//! its `CONS` copy up to `PROD` and writes `EVENTQ_CONS`. [`Event::decode`] turns a record into
//! a typed [`Event`], filling only the fields the record type defines.
//!
//! # Overflow, two ways
//!
//! - **Architecture (§7.4)**: when a record is discarded because the queue is full, the SMMU
//!   toggles `EVENTQ_PROD.OVFLG` (unless an overflow is already pending). Software compares it
//!   with its own copy on every `PROD` read; a difference means records were lost. It
//!   acknowledges by writing `CONS` with `OVACKFLG` equal to the `OVFLG` it read.
//!   [`EventQueue::drain`] does exactly this and reports the overflow.
//! - **QEMU 7.2**: never touches `OVFLG`; it drops the record and toggles
//!   `GERROR.EVENTQ_ABT_ERR` instead. [`crate::device::Smmu::drain_events`] therefore drains the
//!   queue and then, if that error is active, acknowledges *only that bit* in `GERRORN`.
//!
//! Either way the number of lost records is unknown; the drivers counts overflow occurrences.

use core::fmt;

use crate::{
    hal::{DmaError, DmaRegion, SmmuHal},
    queue::QueueGeometry,
    regs::{EVENTQ_CONS, EVENTQ_PROD, QUEUE_BASE, Registers, offset},
};

/// Bytes per event record.
pub const RECORD_BYTES: usize = 32;

/// Event record types (§7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// 0x01 F_UUT: unsupported upstream transaction.
    Uut,
    /// 0x02 C_BAD_STREAMID: StreamID outside the stream table (or no level-2 table).
    BadStreamId,
    /// 0x03 F_STE_FETCH: external abort fetching an STE.
    SteFetch,
    /// 0x04 C_BAD_STE: invalid STE.
    BadSte,
    /// 0x05 F_BAD_ATS_TREQ: bad ATS translation request.
    BadAtsTreq,
    /// 0x06 F_STREAM_DISABLED: non-substream traffic to a stream that requires a SubstreamID.
    StreamDisabled,
    /// 0x07 F_TRANSL_FORBIDDEN: translated (ATS) transaction not allowed.
    TranslForbidden,
    /// 0x08 C_BAD_SUBSTREAMID: SubstreamID out of range.
    BadSubstreamId,
    /// 0x09 F_CD_FETCH: external abort fetching a CD.
    CdFetch,
    /// 0x0A C_BAD_CD: invalid CD.
    BadCd,
    /// 0x0B F_WALK_EABT: external abort during a table walk.
    WalkEabt,
    /// 0x10 F_TRANSLATION: no valid translation.
    Translation,
    /// 0x11 F_ADDR_SIZE: address size fault.
    AddrSize,
    /// 0x12 F_ACCESS: access flag fault.
    Access,
    /// 0x13 F_PERMISSION: permission fault.
    Permission,
    /// 0x20 F_TLB_CONFLICT: TLB conflict.
    TlbConflict,
    /// 0x21 F_CFG_CONFLICT: configuration cache conflict.
    CfgConflict,
    /// 0x24 E_PAGE_REQUEST: speculative page request hint.
    PageRequest,
    /// 0x25 F_VMS_FETCH: external abort fetching a VMS.
    VmsFetch,
    /// Any other type code (IMPLEMENTATION DEFINED or future).
    Other(u8),
}

impl EventType {
    /// Decodes the type byte.
    pub fn from_code(code: u8) -> Self {
        match code {
            0x01 => Self::Uut,
            0x02 => Self::BadStreamId,
            0x03 => Self::SteFetch,
            0x04 => Self::BadSte,
            0x05 => Self::BadAtsTreq,
            0x06 => Self::StreamDisabled,
            0x07 => Self::TranslForbidden,
            0x08 => Self::BadSubstreamId,
            0x09 => Self::CdFetch,
            0x0A => Self::BadCd,
            0x0B => Self::WalkEabt,
            0x10 => Self::Translation,
            0x11 => Self::AddrSize,
            0x12 => Self::Access,
            0x13 => Self::Permission,
            0x20 => Self::TlbConflict,
            0x21 => Self::CfgConflict,
            0x24 => Self::PageRequest,
            0x25 => Self::VmsFetch,
            other => Self::Other(other),
        }
    }

    /// The type byte.
    pub fn code(self) -> u8 {
        match self {
            Self::Uut => 0x01,
            Self::BadStreamId => 0x02,
            Self::SteFetch => 0x03,
            Self::BadSte => 0x04,
            Self::BadAtsTreq => 0x05,
            Self::StreamDisabled => 0x06,
            Self::TranslForbidden => 0x07,
            Self::BadSubstreamId => 0x08,
            Self::CdFetch => 0x09,
            Self::BadCd => 0x0A,
            Self::WalkEabt => 0x0B,
            Self::Translation => 0x10,
            Self::AddrSize => 0x11,
            Self::Access => 0x12,
            Self::Permission => 0x13,
            Self::TlbConflict => 0x20,
            Self::CfgConflict => 0x21,
            Self::PageRequest => 0x24,
            Self::VmsFetch => 0x25,
            Self::Other(code) => code,
        }
    }

    /// Architectural name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uut => "F_UUT",
            Self::BadStreamId => "C_BAD_STREAMID",
            Self::SteFetch => "F_STE_FETCH",
            Self::BadSte => "C_BAD_STE",
            Self::BadAtsTreq => "F_BAD_ATS_TREQ",
            Self::StreamDisabled => "F_STREAM_DISABLED",
            Self::TranslForbidden => "F_TRANSL_FORBIDDEN",
            Self::BadSubstreamId => "C_BAD_SUBSTREAMID",
            Self::CdFetch => "F_CD_FETCH",
            Self::BadCd => "C_BAD_CD",
            Self::WalkEabt => "F_WALK_EABT",
            Self::Translation => "F_TRANSLATION",
            Self::AddrSize => "F_ADDR_SIZE",
            Self::Access => "F_ACCESS",
            Self::Permission => "F_PERMISSION",
            Self::TlbConflict => "F_TLB_CONFLICT",
            Self::CfgConflict => "F_CFG_CONFLICT",
            Self::PageRequest => "E_PAGE_REQUEST",
            Self::VmsFetch => "F_VMS_FETCH",
            Self::Other(_) => "EVENT",
        }
    }

    /// Fields a record of this type carries.
    fn layout(self) -> Layout {
        let none = Layout::default();
        match self {
            Self::Uut | Self::BadAtsTreq => Layout {
                input: true,
                access: true,
                ..none
            },
            Self::TranslForbidden => Layout {
                input: true,
                read_only_access: true,
                ..none
            },
            Self::SteFetch | Self::CdFetch | Self::VmsFetch => Layout {
                fetch: true,
                ..none
            },
            Self::WalkEabt => Layout {
                input: true,
                access: true,
                fault: true,
                fetch: true,
                ..none
            },
            Self::Translation | Self::AddrSize | Self::Access | Self::Permission => Layout {
                input: true,
                access: true,
                fault: true,
                ipa: true,
                ..none
            },
            Self::TlbConflict => Layout {
                input: true,
                access: true,
                stage: true,
                ipa: true,
                ..none
            },
            Self::PageRequest => Layout {
                input: true,
                access: true,
                ..none
            },
            Self::BadStreamId
            | Self::BadSte
            | Self::StreamDisabled
            | Self::BadSubstreamId
            | Self::BadCd
            | Self::CfgConflict
            | Self::Other(_) => none,
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Layout {
    input: bool,
    access: bool,
    read_only_access: bool,
    /// Stall/STAG, S2 and CLASS.
    fault: bool,
    /// S2 only.
    stage: bool,
    ipa: bool,
    fetch: bool,
}

/// Which part of the walk faulted (`CLASS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    /// Fetching the CD.
    ContextDescriptor,
    /// Fetching a translation table descriptor.
    TranslationTable,
    /// The input address itself.
    Input,
    /// Encoding 0b11.
    Reserved,
}

/// Attributes of the transaction that caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessInfo {
    /// `RnW = 1`: a read.
    pub read: bool,
    /// `PnU = 1`: privileged.
    pub privileged: bool,
    /// `InD = 1`: instruction fetch.
    pub instruction: bool,
}

/// A decoded event record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Record type.
    pub kind: EventType,
    /// StreamID of the requester.
    pub stream_id: u32,
    /// SubstreamID, when `SSV = 1`.
    pub substream_id: Option<u32>,
    /// The input address (for QEMU's `F_CD_FETCH` this holds the CD address).
    pub input_addr: Option<u64>,
    /// Read/write, privilege and instruction/data of the transaction.
    pub access: Option<AccessInfo>,
    /// Which stage faulted: `Some(true)` for stage 2.
    pub stage2: Option<bool>,
    /// Which part of the walk faulted.
    pub class: Option<FaultClass>,
    /// Stall tag, when the transaction is stalled (`Stall = 1`).
    pub stall_tag: Option<u16>,
    /// Intermediate physical address of a stage-2 fault.
    pub ipa: Option<u64>,
    /// Physical address of the structure or descriptor whose fetch aborted.
    pub fetch_addr: Option<u64>,
    /// The raw record.
    pub raw: [u64; 4],
}

fn bits(v: u64, hi: u32, lo: u32) -> u64 {
    (v >> lo) & (u64::MAX >> (63 - (hi - lo)))
}

impl Event {
    /// Decodes a 32-byte record (four little-endian doublewords).
    pub fn decode(raw: [u64; 4]) -> Self {
        let [w0, w1, w2, w3] = raw;
        let kind = EventType::from_code(bits(w0, 7, 0) as u8);
        let layout = kind.layout();
        let ssv = bits(w0, 11, 11) == 1;
        let access = AccessInfo {
            privileged: bits(w1, 33, 33) == 1,
            instruction: bits(w1, 34, 34) == 1,
            read: bits(w1, 35, 35) == 1,
        };
        let s2 = bits(w1, 39, 39) == 1;
        let input = match kind {
            // Page requests carry InputAddr[63:12].
            EventType::PageRequest => w2 & !0xFFF,
            _ => w2,
        };
        Self {
            kind,
            stream_id: bits(w0, 63, 32) as u32,
            substream_id: ssv.then(|| bits(w0, 31, 12) as u32),
            input_addr: (layout.input || (kind == EventType::CdFetch && w2 != 0)).then_some(input),
            access: if layout.access {
                Some(access)
            } else if layout.read_only_access {
                Some(AccessInfo {
                    privileged: false,
                    instruction: false,
                    ..access
                })
            } else {
                None
            },
            stage2: (layout.fault || layout.stage).then_some(s2),
            class: layout.fault.then(|| match bits(w1, 41, 40) {
                0 => FaultClass::ContextDescriptor,
                1 => FaultClass::TranslationTable,
                2 => FaultClass::Input,
                _ => FaultClass::Reserved,
            }),
            stall_tag: (layout.fault && bits(w1, 31, 31) == 1).then(|| bits(w1, 15, 0) as u16),
            ipa: (layout.ipa && s2).then(|| bits(w3, 55, 12) << 12),
            fetch_addr: layout.fetch.then(|| bits(w3, 55, 3) << 3),
            raw,
        }
    }
}

impl fmt::Display for Event {
    /// E.g. `F_PERMISSION sid=0x8 addr=0x201000 write data priv class=IN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if let EventType::Other(code) = self.kind {
            write!(f, "({code:#04x})")?;
        }
        write!(f, " sid={:#x}", self.stream_id)?;
        if let Some(ssid) = self.substream_id {
            write!(f, " ssid={ssid:#x}")?;
        }
        if let Some(addr) = self.input_addr {
            write!(f, " addr={addr:#x}")?;
        }
        if let Some(a) = self.access {
            write!(
                f,
                " {} {} {}",
                if a.read { "read" } else { "write" },
                if a.instruction { "insn" } else { "data" },
                if a.privileged { "priv" } else { "unpriv" }
            )?;
        }
        if self.stage2 == Some(true) {
            f.write_str(" stage2")?;
        }
        if let Some(class) = self.class {
            f.write_str(match class {
                FaultClass::ContextDescriptor => " class=CD",
                FaultClass::TranslationTable => " class=TT",
                FaultClass::Input => " class=IN",
                FaultClass::Reserved => " class=?",
            })?;
        }
        if let Some(tag) = self.stall_tag {
            write!(f, " stalled stag={tag:#x}")?;
        }
        if let Some(ipa) = self.ipa {
            write!(f, " ipa={ipa:#x}")?;
        }
        if let Some(fetch) = self.fetch_addr {
            write!(f, " fetch={fetch:#x}")?;
        }
        Ok(())
    }
}

/// Event queue failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventqError {
    /// `EVENTQ_PROD` is more than a queue length away from our `CONS`.
    InconsistentPointers {
        /// `EVENTQ_PROD` (index | wrap).
        prod: u32,
        /// Our `EVENTQ_CONS` (index | wrap).
        cons: u32,
    },
    /// Another CPU is draining and did not finish in time.
    Busy,
    /// No memory for the queue.
    Dma(DmaError),
}

impl fmt::Display for EventqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InconsistentPointers { prod, cons } => write!(
                f,
                "event queue pointers inconsistent (prod {prod:#x}, cons {cons:#x})"
            ),
            Self::Busy => f.write_str("event queue busy (drained elsewhere)"),
            Self::Dma(e) => write!(f, "event queue: {e}"),
        }
    }
}

impl core::error::Error for EventqError {}

/// Result of one drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    /// Records consumed.
    pub events: usize,
    /// `EVENTQ_PROD.OVFLG` changed: records were lost (architectural overflow).
    pub overflow: bool,
    /// `GERROR.EVENTQ_ABT_ERR` was active and acknowledged (QEMU's overflow signal).
    pub abort_error: bool,
    /// The drain stopped at its limit with records left.
    pub more_pending: bool,
}

/// The event queue: ring memory and the software consumer state.
pub struct EventQueue {
    geometry: QueueGeometry,
    ring: DmaRegion,
    /// Our consumer pointer (index | wrap).
    cons: u32,
    /// The last `OVFLG` value seen (and acknowledged through `OVACKFLG`).
    overflow_flag: bool,
}

impl EventQueue {
    /// Allocates a queue of `geometry.entries()` records, aligned to its size (at least 32).
    ///
    /// # Errors
    ///
    /// [`EventqError::Dma`] if the memory cannot be allocated.
    pub fn new<H: SmmuHal + ?Sized>(hal: &H, geometry: QueueGeometry) -> Result<Self, EventqError> {
        let bytes = geometry.entries() as usize * RECORD_BYTES;
        let ring = hal
            .alloc_dma(bytes, bytes.max(32))
            .map_err(EventqError::Dma)?;
        Ok(Self {
            geometry,
            ring,
            cons: 0,
            overflow_flag: false,
        })
    }

    /// Queue size.
    pub fn geometry(&self) -> QueueGeometry {
        self.geometry
    }

    /// The `EVENTQ_BASE` value: write-allocate hint, base address and `LOG2SIZE`.
    pub fn base_register_value(&self) -> u64 {
        (QUEUE_BASE::ALLOCATE::SET
            + QUEUE_BASE::ADDR.val(self.ring.phys_addr() >> 5)
            + QUEUE_BASE::LOG2SIZE.val(u64::from(self.geometry.log2_entries())))
        .value
    }

    /// Programs `EVENTQ_BASE`, `EVENTQ_PROD = EVENTQ_CONS = 0` (page 1). Only valid while
    /// `CR0.EVENTQEN == 0`.
    pub fn program_registers<H: SmmuHal + ?Sized>(&mut self, hal: &H) {
        hal.write64(offset::EVENTQ_BASE.offset(), self.base_register_value());
        let regs = Registers::new(hal);
        regs.write_raw(offset::EVENTQ_PROD, 0);
        regs.write_raw(offset::EVENTQ_CONS, 0);
        self.cons = 0;
        self.overflow_flag = false;
    }

    /// Consumes up to `max` records, calling `on_event` for each, and acknowledges an
    /// architectural overflow by copying `OVFLG` into `CONS.OVACKFLG`.
    ///
    /// # Errors
    ///
    /// [`EventqError::InconsistentPointers`] if `PROD` does not make sense.
    pub fn drain<H: SmmuHal + ?Sized, F: FnMut(Event)>(
        &mut self,
        hal: &H,
        max: usize,
        on_event: &mut F,
    ) -> Result<DrainReport, EventqError> {
        let regs = Registers::new(hal);
        let mut report = DrainReport::default();
        let mut cons_dirty = false;
        loop {
            let prod_reg = regs.read(offset::EVENTQ_PROD);
            let ovflg = prod_reg.is_set(EVENTQ_PROD::OVFLG);
            if ovflg != self.overflow_flag {
                self.overflow_flag = ovflg;
                report.overflow = true;
                cons_dirty = true;
                log::warn!("SMMU event queue overflow: event records were lost");
            }
            let prod = prod_reg.get() & self.geometry.pointer_mask();
            let available = self.geometry.used(prod, self.cons).map_err(|e| {
                EventqError::InconsistentPointers {
                    prod: e.prod,
                    cons: e.cons,
                }
            })?;
            if available == 0 {
                break;
            }
            if report.events >= max {
                report.more_pending = true;
                break;
            }
            // Records up to PROD are visible once PROD is (§3.5.2); read them after the read
            // of PROD.
            hal.consume_barrier();
            let batch = (available as usize).min(max - report.events);
            for _ in 0..batch {
                let off = self.geometry.index(self.cons) as usize * RECORD_BYTES;
                let raw = core::array::from_fn(|i| self.ring.read_u64(off + i * 8));
                self.cons = self.geometry.advance(self.cons, 1);
                report.events += 1;
                on_event(Event::decode(raw));
            }
            self.write_cons(hal);
            cons_dirty = false;
        }
        if cons_dirty {
            self.write_cons(hal);
        }
        Ok(report)
    }

    fn write_cons<H: SmmuHal + ?Sized>(&self, hal: &H) {
        // Our reads of the records must be complete before the SMMU may reuse the slots.
        hal.consume_barrier();
        let value = (EVENTQ_CONS::RD.val(self.cons)
            + EVENTQ_CONS::OVACKFLG.val(u32::from(self.overflow_flag)))
        .value;
        Registers::new(hal).write_raw(offset::EVENTQ_CONS, value);
    }

    /// Returns the ring memory to the HAL.
    ///
    /// # Safety
    ///
    /// The SMMU must no longer write the queue (`CR0.EVENTQEN = 0` acknowledged).
    pub unsafe fn free<H: SmmuHal + ?Sized>(self, hal: &H) {
        // SAFETY: the caller guarantees the SMMU no longer writes the ring.
        unsafe { hal.free_dma(self.ring) };
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{string::ToString, vec::Vec};

    use super::*;
    use crate::{
        fake::{Consumption, FakeSmmu, OverflowStyle},
        features::IdRegisters,
    };

    /// Builds a record from the eight 32-bit words QEMU writes (reference §7.1).
    fn record(words: [u32; 8]) -> [u64; 4] {
        core::array::from_fn(|i| u64::from(words[2 * i]) | (u64::from(words[2 * i + 1]) << 32))
    }

    #[test]
    fn qemu_permission_fault() {
        // Reference §7.2: stale read-only entry, write at IOVA 0x201000 from SID 8.
        let e = Event::decode(record([0x13, 0x8, 0, 0, 0x0020_1000, 0, 0, 0]));
        assert_eq!(e.kind, EventType::Permission);
        assert_eq!(e.stream_id, 8);
        assert_eq!(e.substream_id, None);
        assert_eq!(e.input_addr, Some(0x20_1000));
        assert_eq!(
            e.access,
            Some(AccessInfo {
                read: false,
                privileged: false,
                instruction: false
            })
        );
        assert_eq!(e.stage2, Some(false));
        assert_eq!(e.class, Some(FaultClass::ContextDescriptor)); // CLASS = 0 on 7.2
        assert_eq!(e.stall_tag, None);
        assert_eq!(e.ipa, None);
        assert_eq!(
            e.to_string(),
            "F_PERMISSION sid=0x8 addr=0x201000 write data unpriv class=CD"
        );
    }

    #[test]
    fn qemu_translation_fault_read() {
        // Unmapped read at 0x20F004 (second 4-byte chunk): RnW = 1 (w3 bit 3).
        let e = Event::decode(record([0x10, 0x8, 0, 1 << 3, 0x0020_F004, 0, 0, 0]));
        assert_eq!(e.kind, EventType::Translation);
        assert_eq!(e.input_addr, Some(0x20_F004));
        assert!(e.access.unwrap().read);
        // QEMU >= 9.1 reports CLASS = IN (w3 bits 9:8 = 2).
        let e = Event::decode(record([0x10, 0x8, 0, (1 << 3) | (2 << 8), 0x1000, 0, 0, 0]));
        assert_eq!(e.class, Some(FaultClass::Input));
    }

    #[test]
    fn qemu_walk_abort_and_fetch_faults() {
        // F_WALK_EABT: CLASS = 1 (TT), addr2 = descriptor PA.
        let e = Event::decode(record([0x0B, 0x10, 0, 1 << 8, 0x4000, 0, 0x0900_0008, 0]));
        assert_eq!(e.kind, EventType::WalkEabt);
        assert_eq!(e.class, Some(FaultClass::TranslationTable));
        assert_eq!(e.fetch_addr, Some(0x0900_0008));
        assert_eq!(e.input_addr, Some(0x4000));
        // F_STE_FETCH: addr2 = STE address.
        let e = Event::decode(record([0x03, 0x18, 0, 0, 0, 0, 0x4100_0600, 0]));
        assert_eq!(e.kind, EventType::SteFetch);
        assert_eq!(e.fetch_addr, Some(0x4100_0600));
        assert_eq!(e.input_addr, None);
        // F_CD_FETCH: QEMU puts the CD address in InputAddr, the architecture in FetchAddr.
        let e = Event::decode(record([0x09, 0x8, 0, 0, 0x4200_0040, 0, 0, 0]));
        assert_eq!(e.input_addr, Some(0x4200_0040));
        assert_eq!(e.fetch_addr, Some(0));
    }

    #[test]
    fn configuration_errors_carry_only_the_stream() {
        for (code, kind) in [
            (0x02, EventType::BadStreamId),
            (0x04, EventType::BadSte),
            (0x06, EventType::StreamDisabled),
            (0x08, EventType::BadSubstreamId),
            (0x0A, EventType::BadCd),
            (0x21, EventType::CfgConflict),
        ] {
            let e = Event::decode(record([code, 0xFF08, 0xFFFF_FFFF, 0xFFFF_FFFF, 1, 2, 3, 4]));
            assert_eq!(e.kind, kind);
            assert_eq!(e.kind.code(), code as u8);
            assert_eq!(e.stream_id, 0xFF08);
            assert_eq!(
                (e.input_addr, e.access, e.class, e.ipa, e.fetch_addr),
                (None, None, None, None, None),
                "{}",
                kind.name()
            );
        }
    }

    #[test]
    fn every_type_round_trips_its_code_and_name() {
        let codes = [
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x10, 0x11, 0x12,
            0x13, 0x20, 0x21, 0x24, 0x25,
        ];
        let mut names = Vec::new();
        for code in codes {
            let t = EventType::from_code(code);
            assert_eq!(t.code(), code);
            assert!(!matches!(t, EventType::Other(_)));
            names.push(t.name());
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), codes.len());
        assert_eq!(EventType::from_code(0xE0), EventType::Other(0xE0));
        assert_eq!(
            Event::decode([0xE0, 0, 0, 0]).to_string(),
            "EVENT(0xe0) sid=0x0"
        );
    }

    #[test]
    fn architectural_fields() {
        // Substream, stall tag, stage-2 fault with IPA, privileged instruction read.
        let w0 = 0x13 | (1 << 11) | (0x5 << 12) | (0x22 << 32);
        let w1 = 0xBEEF | (1 << 31) | (1 << 33) | (1 << 34) | (1 << 35) | (1 << 39) | (2 << 40);
        let e = Event::decode([w0, w1, 0xFFFF_0000_1234_5000, 0x0000_00AB_CDEF_0123]);
        assert_eq!(e.substream_id, Some(5));
        assert_eq!(e.stream_id, 0x22);
        assert_eq!(e.stall_tag, Some(0xBEEF));
        assert_eq!(e.stage2, Some(true));
        assert_eq!(e.ipa, Some(0x00AB_CDEF_0000));
        assert_eq!(
            e.access,
            Some(AccessInfo {
                read: true,
                privileged: true,
                instruction: true
            })
        );
        let s = e.to_string();
        assert!(
            s.contains("ssid=0x5")
                && s.contains("stalled stag=0xbeef")
                && s.contains("ipa=0xabcdef0000"),
            "{s}"
        );
        // E_PAGE_REQUEST carries InputAddr[63:12]; F_TRANSL_FORBIDDEN only RnW.
        let e = Event::decode([0x24, 0, 0x1234_5FFF, 0]);
        assert_eq!(e.input_addr, Some(0x1234_5000));
        let e = Event::decode([0x07, 1 << 33 | 1 << 35, 0x9000, 0]);
        assert_eq!(
            e.access,
            Some(AccessInfo {
                read: true,
                privileged: false,
                instruction: false
            })
        );
        // F_TLB_CONFLICT and F_VMS_FETCH.
        let e = Event::decode([0x20, 1 << 39, 0x7000, 0x8000]);
        assert_eq!((e.stage2, e.ipa), (Some(true), Some(0x8000)));
        let e = Event::decode([0x25, 0, 0, 0x4400_0008]);
        assert_eq!(e.fetch_addr, Some(0x4400_0008));
    }

    fn queue(smmu: &std::sync::Arc<FakeSmmu>, log2: u8) -> EventQueue {
        let mut q = EventQueue::new(smmu, QueueGeometry::new(log2).unwrap()).unwrap();
        q.program_registers(smmu);
        smmu.write32(0x20, 1 << 2); // EVENTQEN
        q
    }

    fn fault(n: u64) -> [u64; 4] {
        [0x10 | (8 << 32), 1 << 35, 0x1000 * n, 0]
    }

    #[test]
    fn drains_across_many_wraps() {
        let smmu = FakeSmmu::qemu();
        let mut q = queue(&smmu, 2);
        let mut seen = Vec::new();
        let mut next = 0;
        for round in 0..50u64 {
            let burst = round % 5;
            for _ in 0..burst {
                assert!(smmu.inject_event(fault(next)));
                next += 1;
            }
            let r = q
                .drain(&smmu, usize::MAX, &mut |e: Event| {
                    seen.push(e.input_addr.unwrap() / 0x1000)
                })
                .unwrap();
            assert_eq!(r.events as u64, burst);
            assert!(!r.overflow && !r.more_pending);
        }
        assert_eq!(seen, (0..next).collect::<Vec<_>>());
        assert_eq!(smmu.get(0xAC) & 0x7, smmu.get(0xA8) & 0x7);
    }

    #[test]
    fn drain_limit_leaves_the_rest() {
        let smmu = FakeSmmu::qemu();
        let mut q = queue(&smmu, 3);
        for n in 0..6 {
            smmu.inject_event(fault(n));
        }
        let mut count = 0;
        let r = q.drain(&smmu, 4, &mut |_| count += 1).unwrap();
        assert_eq!((r.events, r.more_pending), (4, true));
        let r = q.drain(&smmu, 4, &mut |_| count += 1).unwrap();
        assert_eq!((r.events, r.more_pending), (2, false));
        assert_eq!(count, 6);
    }

    #[test]
    fn architectural_overflow_is_detected_and_acknowledged() {
        let smmu = FakeSmmu::with(
            IdRegisters::QEMU_7_2,
            Consumption::Synchronous,
            OverflowStyle::Architectural,
            true,
        );
        let mut q = queue(&smmu, 2);
        for n in 0..6 {
            smmu.inject_event(fault(n)); // 4 fit, 2 are lost
        }
        assert_eq!(smmu.get(0xA8) >> 31, 1, "OVFLG toggled");
        let mut seen = Vec::new();
        let r = q
            .drain(&smmu, usize::MAX, &mut |e| seen.push(e.input_addr.unwrap()))
            .unwrap();
        assert_eq!((r.events, r.overflow), (4, true));
        assert_eq!(seen, [0, 0x1000, 0x2000, 0x3000]);
        assert_eq!(smmu.get(0xAC) >> 31, 1, "OVACKFLG copied from OVFLG");
        // The next overflow is visible again (flag toggles back).
        for n in 0..5 {
            smmu.inject_event(fault(n));
        }
        let r = q.drain(&smmu, usize::MAX, &mut |_| {}).unwrap();
        assert_eq!((r.events, r.overflow), (4, true));
        assert_eq!(smmu.get(0xAC) >> 31, 0);
        // No overflow: no report.
        smmu.inject_event(fault(9));
        let r = q.drain(&smmu, usize::MAX, &mut |_| {}).unwrap();
        assert_eq!((r.events, r.overflow), (1, false));
    }

    #[test]
    fn inconsistent_prod_is_an_error() {
        let smmu = FakeSmmu::qemu();
        let mut q = queue(&smmu, 2);
        smmu.set(0xA8, 0b110);
        smmu.set(0xAC, 0b001);
        q.cons = 0b001;
        assert_eq!(
            q.drain(&smmu, usize::MAX, &mut |_| {}).unwrap_err(),
            EventqError::InconsistentPointers {
                prod: 0b110,
                cons: 0b001
            }
        );
    }
}
