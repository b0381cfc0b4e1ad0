//! Command-queue entries (IHI 0070 G.b chapter 4) and their 16-byte encodings.
//!
//! Only the commands this driver issues are representable, and the representation rules out
//! encodings the architecture makes illegal:
//!
//! - `CMD_CFGI_ALL` is `CMD_CFGI_STE_RANGE` (opcode 0x04) with `Range = 31` (§4.3.2). Opcode
//!   0x07 is `CMD_CFGI_VMS_PIDM` in the architecture; QEMU 7.2 names it "CFGI_ALL" but rejects
//!   it with `CERROR_ILL`, so it is never emitted.
//! - A range TLBI with `TG != 0` and `NUM == SCALE == TTL == 0` is reserved and raises
//!   `CERROR_ILL` (§4.4.1.1); [`TlbiRange::new`] refuses it.
//! - `CMD_SYNC` with `CS = 0b11` is reserved (§4.7.3); [`SyncSignal`] has no such value.
//! - VMID fields are always 0: a stage-1-only SMMU treats them as RES0, and on a nested SMMU
//!   (QEMU virt >= 9.2) `CMD_TLBI_NH_*` only match entries whose `STE.S2VMID` equals the
//!   command's VMID, which this driver also keeps at 0.
//! - `SSec` is always 0 (required on the Non-secure queue, §4.1.6).
//!
//! The one exception is [`Command::Raw`], a **test hook** the driver never issues: it carries an
//! arbitrary 16-byte encoding so that on-target tests can put a command the SMMU rejects
//! (`CERROR_ILL`, §7.1) in the middle of a real batch and check the recovery path end to end.

// `register_bitfields!` generates undocumented items.
#![allow(missing_docs)]

use core::fmt;

use tock_registers::{LocalRegisterCopy, register_bitfields};

use crate::features::Granule;

register_bitfields! {u64,
    /// First doubleword of a command. Fields overlap: which apply depends on the opcode.
    pub CMD0 [
        OPCODE OFFSET(0) NUMBITS(8) [],
        SSEC OFFSET(10) NUMBITS(1) [],
        SSV OFFSET(11) NUMBITS(1) [],
        SUBSTREAM_ID OFFSET(12) NUMBITS(20) [],
        /// CMD_SYNC completion signal.
        CS OFFSET(12) NUMBITS(2) [None = 0, Irq = 1, Sev = 2],
        /// Range TLBI: number of units minus one.
        NUM OFFSET(12) NUMBITS(5) [],
        /// Range TLBI: log2 of the unit in granules.
        SCALE OFFSET(20) NUMBITS(5) [],
        STREAM_ID OFFSET(32) NUMBITS(32) [],
        VMID OFFSET(32) NUMBITS(16) [],
        ASID OFFSET(48) NUMBITS(16) []
    ],
    /// Second doubleword of a command.
    pub CMD1 [
        LEAF OFFSET(0) NUMBITS(1) [],
        /// CFGI_STE_RANGE: 2^(RANGE+1) StreamIDs.
        RANGE OFFSET(0) NUMBITS(5) [],
        TTL OFFSET(8) NUMBITS(2) [],
        TG OFFSET(10) NUMBITS(2) [],
        /// VA bits [63:12].
        ADDR OFFSET(12) NUMBITS(52) []
    ]
}

/// Command opcodes (§4.1.1).
pub mod opcode {
    /// CMD_PREFETCH_CONFIG.
    pub const PREFETCH_CONFIG: u8 = 0x01;
    /// CMD_CFGI_STE.
    pub const CFGI_STE: u8 = 0x03;
    /// CMD_CFGI_STE_RANGE (and CMD_CFGI_ALL with Range = 31).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// CMD_CFGI_CD.
    pub const CFGI_CD: u8 = 0x05;
    /// CMD_CFGI_CD_ALL.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// CMD_TLBI_NH_ALL.
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// CMD_TLBI_NH_ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// CMD_TLBI_NH_VA.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// CMD_TLBI_NH_VAA.
    pub const TLBI_NH_VAA: u8 = 0x13;
    /// CMD_TLBI_NSNH_ALL.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// CMD_SYNC.
    pub const SYNC: u8 = 0x46;

    /// Architectural name of an opcode, for diagnostics ("RESERVED" for unknown ones).
    pub fn name(op: u8) -> &'static str {
        match op {
            PREFETCH_CONFIG => "CMD_PREFETCH_CONFIG",
            0x02 => "CMD_PREFETCH_ADDR",
            CFGI_STE => "CMD_CFGI_STE",
            CFGI_STE_RANGE => "CMD_CFGI_STE_RANGE",
            CFGI_CD => "CMD_CFGI_CD",
            CFGI_CD_ALL => "CMD_CFGI_CD_ALL",
            0x07 => "CMD_CFGI_VMS_PIDM",
            TLBI_NH_ALL => "CMD_TLBI_NH_ALL",
            TLBI_NH_ASID => "CMD_TLBI_NH_ASID",
            TLBI_NH_VA => "CMD_TLBI_NH_VA",
            TLBI_NH_VAA => "CMD_TLBI_NH_VAA",
            0x20 => "CMD_TLBI_EL2_ALL",
            0x21 => "CMD_TLBI_EL2_ASID",
            0x22 => "CMD_TLBI_EL2_VA",
            0x23 => "CMD_TLBI_EL2_VAA",
            0x28 => "CMD_TLBI_S12_VMALL",
            0x2A => "CMD_TLBI_S2_IPA",
            TLBI_NSNH_ALL => "CMD_TLBI_NSNH_ALL",
            0x40 => "CMD_ATC_INV",
            0x41 => "CMD_PRI_RESP",
            0x44 => "CMD_RESUME",
            0x45 => "CMD_STALL_TERM",
            SYNC => "CMD_SYNC",
            _ => "RESERVED",
        }
    }
}

/// The `Range` parameter of `CMD_CFGI_STE_RANGE`: invalidates an aligned block of
/// 2^(Range+1) StreamIDs; 31 means all of them (`CMD_CFGI_ALL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteRange(u8);

impl SteRange {
    /// Every StreamID.
    pub const ALL: Self = Self(31);

    /// A block of 2^(`range`+1) StreamIDs; `None` if `range > 31`.
    pub const fn new(range: u8) -> Option<Self> {
        if range <= 31 { Some(Self(range)) } else { None }
    }

    /// The encoded value.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Number of StreamIDs covered.
    pub const fn span(self) -> u64 {
        1 << (self.0 as u32 + 1)
    }
}

/// An invalid range-TLBI parameter combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// `NUM` above 31.
    NumTooLarge(u8),
    /// `SCALE` above 31 (this driver does not use the 6-bit form of `IDR5.DS`).
    ScaleTooLarge(u8),
    /// `TTL` above 3.
    TtlTooLarge(u8),
    /// `NUM == SCALE == TTL == 0` with a granule: reserved, raises `CERROR_ILL` (§4.4.1.1).
    ReservedSingleGranule,
    /// `TTL = 1` with the 16 KiB granule needs `IDR5.DS` (otherwise `CERROR_ILL`).
    Level1With16K,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NumTooLarge(n) => write!(f, "range TLBI NUM {n} > 31"),
            Self::ScaleTooLarge(s) => write!(f, "range TLBI SCALE {s} > 31"),
            Self::TtlTooLarge(t) => write!(f, "range TLBI TTL {t} > 3"),
            Self::ReservedSingleGranule => {
                f.write_str("range TLBI with NUM = SCALE = TTL = 0 is reserved (CERROR_ILL)")
            }
            Self::Level1With16K => f.write_str("range TLBI TTL = 1 with a 16K granule needs DS"),
        }
    }
}

impl core::error::Error for RangeError {}

/// The range/level-hint form of `CMD_TLBI_NH_VA`/`VAA` (requires `IDR3.RIL`, §4.4.1.1):
/// invalidates `(NUM + 1) * 2^SCALE` granules starting at the command's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbiRange {
    granule: Granule,
    num: u8,
    scale: u8,
    ttl: u8,
}

impl TlbiRange {
    /// Validates a range form.
    ///
    /// # Errors
    ///
    /// [`RangeError`] for out-of-range fields and for the reserved `NUM = SCALE = TTL = 0`.
    pub const fn new(granule: Granule, num: u8, scale: u8, ttl: u8) -> Result<Self, RangeError> {
        if num > 31 {
            return Err(RangeError::NumTooLarge(num));
        }
        if scale > 31 {
            return Err(RangeError::ScaleTooLarge(scale));
        }
        if ttl > 3 {
            return Err(RangeError::TtlTooLarge(ttl));
        }
        if num == 0 && scale == 0 && ttl == 0 {
            return Err(RangeError::ReservedSingleGranule);
        }
        if ttl == 1 && matches!(granule, Granule::Size16K) {
            return Err(RangeError::Level1With16K);
        }
        Ok(Self {
            granule,
            num,
            scale,
            ttl,
        })
    }

    /// Translation granule (`TG`).
    pub const fn granule(self) -> Granule {
        self.granule
    }

    /// `NUM` field.
    pub const fn num(self) -> u8 {
        self.num
    }

    /// `SCALE` field.
    pub const fn scale(self) -> u8 {
        self.scale
    }

    /// `TTL` level hint (0 = any level).
    pub const fn ttl(self) -> u8 {
        self.ttl
    }

    /// Number of granules covered.
    pub const fn pages(self) -> u64 {
        (self.num as u64 + 1) << self.scale
    }
}

/// How `CMD_SYNC` signals completion (§4.7.3). Completion is always also visible as `CONS`
/// passing the command, which is what this driver polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncSignal {
    /// No signal.
    #[default]
    None,
    /// Interrupt (wired cmd-sync IRQ or MSI); QEMU pulses its SPI regardless of IRQ_CTRL.
    Irq,
    /// WFE wake-up event when `IDR0.SEV`.
    Sev,
}

/// A command this driver can issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `CMD_PREFETCH_CONFIG`: hint to fetch the configuration of a StreamID.
    PrefetchConfig {
        /// StreamID.
        sid: u32,
    },
    /// `CMD_CFGI_STE`: invalidate one STE and the CDs cached through it.
    CfgiSte {
        /// StreamID.
        sid: u32,
        /// `false` also invalidates cached level-1 stream table descriptors.
        leaf: bool,
    },
    /// `CMD_CFGI_STE_RANGE`: invalidate an aligned block of STEs ([`Command::CFGI_ALL`]).
    CfgiSteRange {
        /// Any StreamID in the block (low bits are ignored).
        sid: u32,
        /// Block size.
        range: SteRange,
    },
    /// `CMD_CFGI_CD`: invalidate one CD.
    CfgiCd {
        /// StreamID whose STE located the CD.
        sid: u32,
        /// CD index (0 when the STE has a single CD).
        ssid: u32,
        /// `false` also invalidates cached level-1 CD descriptors.
        leaf: bool,
    },
    /// `CMD_CFGI_CD_ALL`: invalidate every CD cached through a StreamID.
    CfgiCdAll {
        /// StreamID.
        sid: u32,
    },
    /// `CMD_TLBI_NH_ALL`: all NS-EL1 stage-1 entries (VMID 0).
    TlbiNhAll,
    /// `CMD_TLBI_NH_ASID`: all *non-global* NS-EL1 entries of an ASID.
    TlbiNhAsid {
        /// ASID.
        asid: u16,
    },
    /// `CMD_TLBI_NH_VA`: entries for a VA (or a range) in one ASID, plus global entries.
    TlbiNhVa {
        /// ASID.
        asid: u16,
        /// Virtual address; bits `[11:0]` are not encoded.
        addr: u64,
        /// Only last-level entries.
        leaf: bool,
        /// Range/level-hint form (`IDR3.RIL`), or `None` for a single address.
        range: Option<TlbiRange>,
    },
    /// `CMD_TLBI_NH_VAA`: entries for a VA (or a range) in every ASID.
    TlbiNhVaa {
        /// Virtual address; bits `[11:0]` are not encoded.
        addr: u64,
        /// Only last-level entries.
        leaf: bool,
        /// Range/level-hint form, or `None`.
        range: Option<TlbiRange>,
    },
    /// `CMD_TLBI_NSNH_ALL`: every Non-secure non-Hyp entry.
    TlbiNsnhAll,
    /// `CMD_SYNC`: completes every earlier command on the queue.
    Sync {
        /// Completion signal.
        signal: SyncSignal,
    },
    /// **Test hook, never issued by the driver**: these two doublewords, unchecked (dword 0
    /// first; the opcode is the low byte of dword 0). It exists so on-target tests can submit
    /// an encoding the SMMU rejects with `CERROR_ILL` (e.g. a reserved opcode, §4.1.1) inside
    /// a batch of real commands and check the recovery of §7.1 (see [`crate::cmdq`]). Counted
    /// as [`CommandKind::Raw`].
    Raw([u64; 2]),
}

/// Command categories counted by [`crate::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// `CMD_PREFETCH_CONFIG`.
    Prefetch,
    /// Any `CMD_CFGI_*`.
    Cfgi,
    /// Single-address `CMD_TLBI_NH_VA`.
    TlbiNhVa,
    /// Range-form `CMD_TLBI_NH_VA`.
    TlbiNhVaRange,
    /// `CMD_TLBI_NH_VAA` (either form).
    TlbiNhVaa,
    /// `CMD_TLBI_NH_ASID`.
    TlbiNhAsid,
    /// `CMD_TLBI_NH_ALL` or `CMD_TLBI_NSNH_ALL`.
    TlbiAll,
    /// `CMD_SYNC`.
    Sync,
    /// [`Command::Raw`] (test hook).
    Raw,
}

impl Command {
    /// `CMD_CFGI_ALL`: `CMD_CFGI_STE_RANGE` with `Range = 31` (opcode 0x04).
    pub const CFGI_ALL: Self = Self::CfgiSteRange {
        sid: 0,
        range: SteRange::ALL,
    };

    /// A plain `CMD_SYNC`, completed by polling `CONS`.
    pub const SYNC: Self = Self::Sync {
        signal: SyncSignal::None,
    };

    /// The opcode byte.
    pub const fn opcode(&self) -> u8 {
        match self {
            Self::PrefetchConfig { .. } => opcode::PREFETCH_CONFIG,
            Self::CfgiSte { .. } => opcode::CFGI_STE,
            Self::CfgiSteRange { .. } => opcode::CFGI_STE_RANGE,
            Self::CfgiCd { .. } => opcode::CFGI_CD,
            Self::CfgiCdAll { .. } => opcode::CFGI_CD_ALL,
            Self::TlbiNhAll => opcode::TLBI_NH_ALL,
            Self::TlbiNhAsid { .. } => opcode::TLBI_NH_ASID,
            Self::TlbiNhVa { .. } => opcode::TLBI_NH_VA,
            Self::TlbiNhVaa { .. } => opcode::TLBI_NH_VAA,
            Self::TlbiNsnhAll => opcode::TLBI_NSNH_ALL,
            Self::Sync { .. } => opcode::SYNC,
            Self::Raw(words) => words[0] as u8,
        }
    }

    /// Category for the statistics counters.
    pub const fn kind(&self) -> CommandKind {
        match self {
            Self::PrefetchConfig { .. } => CommandKind::Prefetch,
            Self::CfgiSte { .. }
            | Self::CfgiSteRange { .. }
            | Self::CfgiCd { .. }
            | Self::CfgiCdAll { .. } => CommandKind::Cfgi,
            Self::TlbiNhVa { range: None, .. } => CommandKind::TlbiNhVa,
            Self::TlbiNhVa { range: Some(_), .. } => CommandKind::TlbiNhVaRange,
            Self::TlbiNhVaa { .. } => CommandKind::TlbiNhVaa,
            Self::TlbiNhAsid { .. } => CommandKind::TlbiNhAsid,
            Self::TlbiNhAll | Self::TlbiNsnhAll => CommandKind::TlbiAll,
            Self::Sync { .. } => CommandKind::Sync,
            Self::Raw(_) => CommandKind::Raw,
        }
    }

    /// The 16-byte queue entry, as two little-endian doublewords (dword 0 first).
    pub fn encode(&self) -> [u64; 2] {
        if let Self::Raw(words) = *self {
            return words;
        }
        let mut w0: LocalRegisterCopy<u64, CMD0::Register> = LocalRegisterCopy::new(0);
        let mut w1: LocalRegisterCopy<u64, CMD1::Register> = LocalRegisterCopy::new(0);
        w0.modify(CMD0::OPCODE.val(u64::from(self.opcode())));
        match *self {
            Self::PrefetchConfig { sid } | Self::CfgiCdAll { sid } => {
                w0.modify(CMD0::STREAM_ID.val(u64::from(sid)));
            }
            Self::CfgiSte { sid, leaf } => {
                w0.modify(CMD0::STREAM_ID.val(u64::from(sid)));
                w1.modify(CMD1::LEAF.val(u64::from(leaf)));
            }
            Self::CfgiSteRange { sid, range } => {
                w0.modify(CMD0::STREAM_ID.val(u64::from(sid)));
                w1.modify(CMD1::RANGE.val(u64::from(range.get())));
            }
            Self::CfgiCd { sid, ssid, leaf } => {
                w0.modify(
                    CMD0::STREAM_ID.val(u64::from(sid)) + CMD0::SUBSTREAM_ID.val(u64::from(ssid)),
                );
                w1.modify(CMD1::LEAF.val(u64::from(leaf)));
            }
            Self::TlbiNhAll | Self::TlbiNsnhAll => {}
            Self::TlbiNhAsid { asid } => w0.modify(CMD0::ASID.val(u64::from(asid))),
            Self::TlbiNhVa {
                asid,
                addr,
                leaf,
                range,
            } => {
                w0.modify(CMD0::ASID.val(u64::from(asid)));
                encode_address(&mut w0, &mut w1, addr, leaf, range);
            }
            Self::TlbiNhVaa { addr, leaf, range } => {
                encode_address(&mut w0, &mut w1, addr, leaf, range);
            }
            Self::Sync { signal } => w0.modify(match signal {
                SyncSignal::None => CMD0::CS::None,
                SyncSignal::Irq => CMD0::CS::Irq,
                SyncSignal::Sev => CMD0::CS::Sev,
            }),
            Self::Raw(_) => unreachable!("returned above"),
        }
        [w0.get(), w1.get()]
    }
}

fn encode_address(
    w0: &mut LocalRegisterCopy<u64, CMD0::Register>,
    w1: &mut LocalRegisterCopy<u64, CMD1::Register>,
    addr: u64,
    leaf: bool,
    range: Option<TlbiRange>,
) {
    w1.modify(CMD1::ADDR.val(addr >> 12) + CMD1::LEAF.val(u64::from(leaf)));
    if let Some(r) = range {
        w0.modify(CMD0::NUM.val(u64::from(r.num())) + CMD0::SCALE.val(u64::from(r.scale())));
        w1.modify(
            CMD1::TG.val(u64::from(r.granule().tlbi_tg())) + CMD1::TTL.val(u64::from(r.ttl())),
        );
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(opcode::name(self.opcode()))?;
        match *self {
            Self::PrefetchConfig { sid } | Self::CfgiCdAll { sid } => write!(f, " sid={sid:#x}"),
            Self::CfgiSte { sid, leaf } => write!(f, " sid={sid:#x} leaf={}", u8::from(leaf)),
            Self::CfgiSteRange { sid, range } => {
                write!(f, " sid={sid:#x} range={}", range.get())
            }
            Self::CfgiCd { sid, ssid, leaf } => {
                write!(f, " sid={sid:#x} ssid={ssid} leaf={}", u8::from(leaf))
            }
            Self::TlbiNhAsid { asid } => write!(f, " asid={asid}"),
            Self::TlbiNhVa {
                asid,
                addr,
                leaf,
                range,
            } => {
                write!(f, " asid={asid} addr={addr:#x} leaf={}", u8::from(leaf))?;
                fmt_range(f, range)
            }
            Self::TlbiNhVaa { addr, leaf, range } => {
                write!(f, " addr={addr:#x} leaf={}", u8::from(leaf))?;
                fmt_range(f, range)
            }
            Self::TlbiNhAll | Self::TlbiNsnhAll => Ok(()),
            Self::Sync { signal } => write!(f, " cs={signal:?}"),
            Self::Raw([w0, w1]) => write!(f, " (raw {w0:#018x} {w1:#018x})"),
        }
    }
}

fn fmt_range(f: &mut fmt::Formatter<'_>, range: Option<TlbiRange>) -> fmt::Result {
    match range {
        Some(r) => write!(
            f,
            " tg={} num={} scale={} ttl={} ({} pages)",
            r.granule(),
            r.num(),
            r.scale(),
            r.ttl(),
            r.pages()
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! The encoder is checked against a decoder written here from the field tables of IHI 0070
    //! G.b §4.3/§4.4/§4.7 (bit positions typed in as literals, not taken from the encoder's
    //! `register_bitfields!`), and against golden values verified on QEMU (reference appendix
    //! A).
    extern crate std;
    use std::{format, string::ToString};

    use super::*;

    /// Bits `[hi:lo]` of `v`.
    fn bits(v: u64, hi: u32, lo: u32) -> u64 {
        (v >> lo) & ((1u64 << (hi - lo + 1)) - 1)
    }

    /// Independent decoding of one command into its named fields.
    #[derive(Debug, PartialEq, Eq, Default)]
    struct Decoded {
        opcode: u64,
        ssec: u64,
        sid: Option<u64>,
        ssid: Option<u64>,
        leaf: Option<u64>,
        range: Option<u64>,
        vmid: Option<u64>,
        asid: Option<u64>,
        addr: Option<u64>,
        num: Option<u64>,
        scale: Option<u64>,
        ttl: Option<u64>,
        tg: Option<u64>,
        cs: Option<u64>,
        /// Bits that must be zero for this opcode but are not.
        stray: u64,
    }

    fn decode(cmd: [u64; 2]) -> Decoded {
        let [w0, w1] = cmd;
        let mut d = Decoded {
            opcode: bits(w0, 7, 0),
            ssec: bits(w0, 10, 10),
            ..Default::default()
        };
        // Masks of the bits each opcode defines, per dword.
        let (m0, m1): (u64, u64) = match d.opcode {
            0x01 => {
                d.sid = Some(bits(w0, 63, 32));
                d.ssid = Some(bits(w0, 31, 12));
                (0xFFFF_FFFF_FFFF_FCFF, 0)
            }
            0x03 => {
                d.sid = Some(bits(w0, 63, 32));
                d.leaf = Some(bits(w1, 0, 0));
                (0xFFFF_FFFF_0000_04FF, 1)
            }
            0x04 => {
                d.sid = Some(bits(w0, 63, 32));
                d.range = Some(bits(w1, 4, 0));
                (0xFFFF_FFFF_0000_04FF, 0x1F)
            }
            0x05 => {
                d.sid = Some(bits(w0, 63, 32));
                d.ssid = Some(bits(w0, 31, 12));
                d.leaf = Some(bits(w1, 0, 0));
                (0xFFFF_FFFF_FFFF_F4FF, 1)
            }
            0x06 => {
                d.sid = Some(bits(w0, 63, 32));
                (0xFFFF_FFFF_0000_04FF, 0)
            }
            0x10 | 0x30 => {
                if d.opcode == 0x10 {
                    d.vmid = Some(bits(w0, 47, 32));
                }
                (0x0000_FFFF_0000_00FF, 0)
            }
            0x11 => {
                d.vmid = Some(bits(w0, 47, 32));
                d.asid = Some(bits(w0, 63, 48));
                (0xFFFF_FFFF_0000_00FF, 0)
            }
            0x12 | 0x13 => {
                if d.opcode == 0x12 {
                    d.asid = Some(bits(w0, 63, 48));
                }
                d.vmid = Some(bits(w0, 47, 32));
                d.num = Some(bits(w0, 16, 12));
                d.scale = Some(bits(w0, 24, 20));
                d.leaf = Some(bits(w1, 0, 0));
                d.ttl = Some(bits(w1, 9, 8));
                d.tg = Some(bits(w1, 11, 10));
                d.addr = Some(w1 & !0xFFF);
                let asid_mask = if d.opcode == 0x12 {
                    0xFFFF_0000_0000_0000
                } else {
                    0
                };
                (
                    asid_mask | 0x0000_FFFF_01F1_F0FF,
                    0xFFFF_FFFF_FFFF_F000 | 0xF01,
                )
            }
            0x46 => {
                d.cs = Some(bits(w0, 13, 12));
                (0x0000_0000_0000_30FF, 0)
            }
            other => panic!("unknown opcode {other:#x}"),
        };
        d.stray = (w0 & !m0) | (w1 & !m1);
        d
    }

    #[test]
    fn golden_values_from_the_reference() {
        assert_eq!(
            Command::CfgiSte { sid: 8, leaf: true }.encode(),
            [0x03 | (8 << 32), 1]
        );
        assert_eq!(Command::CFGI_ALL.encode(), [0x04, 31]);
        assert_eq!(
            Command::TlbiNhAsid { asid: 5 }.encode(),
            [0x11 | (5 << 48), 0]
        );
        assert_eq!(Command::TlbiNhAll.encode(), [0x10, 0]);
        assert_eq!(Command::TlbiNsnhAll.encode(), [0x30, 0]);
        assert_eq!(Command::SYNC.encode(), [0x46, 0]);
        assert_eq!(
            Command::Sync {
                signal: SyncSignal::Irq
            }
            .encode(),
            [0x46 | (1 << 12), 0]
        );
        assert_eq!(
            Command::TlbiNhVaa {
                addr: 0x20_1000,
                leaf: true,
                range: None
            }
            .encode(),
            [0x13, 0x20_1000 | 1]
        );
        // TLBI_NH_VA = 0x12 | NUM << 12 | SCALE << 20 | ASID << 48 ;
        //              (VA & ~0xFFF) | LEAF | TTL << 8 | TG << 10
        let r = TlbiRange::new(Granule::Size4K, 2, 3, 0).unwrap();
        assert_eq!(
            Command::TlbiNhVa {
                asid: 5,
                addr: 0x40_0000,
                leaf: false,
                range: Some(r)
            }
            .encode(),
            [
                0x12 | (2 << 12) | (3 << 20) | (5 << 48),
                0x40_0000 | (1 << 10)
            ]
        );
    }

    #[test]
    fn every_encoder_agrees_with_the_independent_decoder() {
        let r4k = TlbiRange::new(Granule::Size4K, 30, 5, 0).unwrap();
        let r64k_leaf = TlbiRange::new(Granule::Size64K, 0, 0, 3).unwrap();
        let cases: [(Command, Decoded); 13] = [
            (
                Command::PrefetchConfig { sid: 0xFF08 },
                Decoded {
                    opcode: 0x01,
                    sid: Some(0xFF08),
                    ssid: Some(0),
                    ..Default::default()
                },
            ),
            (
                Command::CfgiSte {
                    sid: 0xFFFF_FFFF,
                    leaf: false,
                },
                Decoded {
                    opcode: 0x03,
                    sid: Some(0xFFFF_FFFF),
                    leaf: Some(0),
                    ..Default::default()
                },
            ),
            (
                Command::CfgiSteRange {
                    sid: 0x100,
                    range: SteRange::new(7).unwrap(),
                },
                Decoded {
                    opcode: 0x04,
                    sid: Some(0x100),
                    range: Some(7),
                    ..Default::default()
                },
            ),
            (
                Command::CFGI_ALL,
                Decoded {
                    opcode: 0x04,
                    sid: Some(0),
                    range: Some(31),
                    ..Default::default()
                },
            ),
            (
                Command::CfgiCd {
                    sid: 0x8,
                    ssid: 0xABCDE,
                    leaf: true,
                },
                Decoded {
                    opcode: 0x05,
                    sid: Some(8),
                    ssid: Some(0xABCDE),
                    leaf: Some(1),
                    ..Default::default()
                },
            ),
            (
                Command::CfgiCdAll { sid: 0x18 },
                Decoded {
                    opcode: 0x06,
                    sid: Some(0x18),
                    ..Default::default()
                },
            ),
            (
                Command::TlbiNhAll,
                Decoded {
                    opcode: 0x10,
                    vmid: Some(0),
                    ..Default::default()
                },
            ),
            (
                Command::TlbiNhAsid { asid: 0xFFFF },
                Decoded {
                    opcode: 0x11,
                    vmid: Some(0),
                    asid: Some(0xFFFF),
                    ..Default::default()
                },
            ),
            (
                Command::TlbiNhVa {
                    asid: 0x1234,
                    addr: 0x0000_FFFF_FFFF_F123,
                    leaf: true,
                    range: None,
                },
                Decoded {
                    opcode: 0x12,
                    vmid: Some(0),
                    asid: Some(0x1234),
                    addr: Some(0x0000_FFFF_FFFF_F000),
                    num: Some(0),
                    scale: Some(0),
                    leaf: Some(1),
                    ttl: Some(0),
                    tg: Some(0),
                    ..Default::default()
                },
            ),
            (
                Command::TlbiNhVa {
                    asid: 7,
                    addr: 0x7F_FFE0_0000,
                    leaf: false,
                    range: Some(r4k),
                },
                Decoded {
                    opcode: 0x12,
                    vmid: Some(0),
                    asid: Some(7),
                    addr: Some(0x7F_FFE0_0000),
                    num: Some(30),
                    scale: Some(5),
                    leaf: Some(0),
                    ttl: Some(0),
                    tg: Some(1),
                    ..Default::default()
                },
            ),
            (
                Command::TlbiNhVaa {
                    addr: 0x1_0000,
                    leaf: true,
                    range: Some(r64k_leaf),
                },
                Decoded {
                    opcode: 0x13,
                    vmid: Some(0),
                    addr: Some(0x1_0000),
                    num: Some(0),
                    scale: Some(0),
                    leaf: Some(1),
                    ttl: Some(3),
                    tg: Some(3),
                    ..Default::default()
                },
            ),
            (
                Command::TlbiNsnhAll,
                Decoded {
                    opcode: 0x30,
                    ..Default::default()
                },
            ),
            (
                Command::Sync {
                    signal: SyncSignal::Sev,
                },
                Decoded {
                    opcode: 0x46,
                    cs: Some(2),
                    ..Default::default()
                },
            ),
        ];
        for (cmd, expected) in cases {
            let raw = cmd.encode();
            assert_eq!(decode(raw), expected, "{cmd} encoded as {raw:#x?}");
            assert_eq!(u64::from(cmd.opcode()), expected.opcode);
        }
    }

    #[test]
    fn sync_never_uses_the_reserved_signal() {
        for signal in [SyncSignal::None, SyncSignal::Irq, SyncSignal::Sev] {
            let d = decode(Command::Sync { signal }.encode());
            assert_ne!(d.cs, Some(0b11));
        }
    }

    #[test]
    fn reserved_range_forms_are_unrepresentable() {
        assert_eq!(
            TlbiRange::new(Granule::Size4K, 0, 0, 0),
            Err(RangeError::ReservedSingleGranule)
        );
        assert_eq!(
            TlbiRange::new(Granule::Size4K, 32, 0, 0),
            Err(RangeError::NumTooLarge(32))
        );
        assert_eq!(
            TlbiRange::new(Granule::Size4K, 0, 32, 0),
            Err(RangeError::ScaleTooLarge(32))
        );
        assert_eq!(
            TlbiRange::new(Granule::Size4K, 0, 0, 4),
            Err(RangeError::TtlTooLarge(4))
        );
        assert_eq!(
            TlbiRange::new(Granule::Size16K, 0, 0, 1),
            Err(RangeError::Level1With16K)
        );
        assert_eq!(TlbiRange::new(Granule::Size4K, 0, 0, 3).unwrap().pages(), 1);
        assert_eq!(
            TlbiRange::new(Granule::Size4K, 0, 9, 0).unwrap().pages(),
            512
        );
        assert_eq!(
            TlbiRange::new(Granule::Size4K, 31, 31, 0).unwrap().pages(),
            32 << 31
        );
        assert!(SteRange::new(32).is_none());
        assert_eq!(SteRange::ALL.span(), 1 << 32);
    }

    #[test]
    fn vmid_and_ssec_are_always_zero() {
        let cmds = [
            Command::TlbiNhAll,
            Command::TlbiNhAsid { asid: 3 },
            Command::TlbiNhVa {
                asid: 3,
                addr: 0x1000,
                leaf: false,
                range: None,
            },
            Command::CfgiSte { sid: 1, leaf: true },
            Command::CfgiCd {
                sid: 1,
                ssid: 0,
                leaf: true,
            },
        ];
        for cmd in cmds {
            let d = decode(cmd.encode());
            assert_eq!(d.ssec, 0, "{cmd}");
            assert!(d.vmid.is_none_or(|v| v == 0), "{cmd}");
            assert_eq!(d.stray, 0, "{cmd}");
        }
    }

    #[test]
    fn display_names_the_command() {
        assert_eq!(
            Command::TlbiNhAsid { asid: 5 }.to_string(),
            "CMD_TLBI_NH_ASID asid=5"
        );
        assert_eq!(
            Command::CFGI_ALL.to_string(),
            "CMD_CFGI_STE_RANGE sid=0x0 range=31"
        );
        let r = TlbiRange::new(Granule::Size4K, 0, 9, 0).unwrap();
        let s = format!(
            "{}",
            Command::TlbiNhVa {
                asid: 1,
                addr: 0x20_0000,
                leaf: false,
                range: Some(r)
            }
        );
        assert!(s.contains("512 pages"), "{s}");
        assert_eq!(opcode::name(0x07), "CMD_CFGI_VMS_PIDM");
        assert_eq!(opcode::name(0x7F), "RESERVED");
    }

    #[test]
    fn raw_test_hook_is_passed_through_unchanged() {
        let words = [0xDEAD_BEEF_0000_007F, 0x0123_4567_89AB_CDEF];
        let cmd = Command::Raw(words);
        assert_eq!(cmd.encode(), words);
        assert_eq!(cmd.opcode(), 0x7F);
        assert_eq!(cmd.kind(), CommandKind::Raw);
        assert_eq!(
            cmd.to_string(),
            "RESERVED (raw 0xdeadbeef0000007f 0x0123456789abcdef)"
        );
        // A raw encoding of a real command is that command on the wire.
        let asid = Command::TlbiNhAsid { asid: 9 };
        assert_eq!(Command::Raw(asid.encode()).opcode(), 0x11);
        assert_eq!(
            decode(Command::Raw(asid.encode()).encode()),
            decode(asid.encode())
        );
    }
}
