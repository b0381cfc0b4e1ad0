//! On-target tests of DMA by QEMU's `edu` through the SMMU (issue "PCIe and the edu DMA
//! master").
//!
//! Why these checks: edu never reports a failed DMA (a faulted read leaves zeros in its buffer,
//! a faulted write is dropped, completion is signalled as usual), so every test here judges by
//! the bytes in memory, and uses the SMMU's event records (IHI 0070 G.b §7.3, routed to the
//! transfer by the IOMMU glue) only to say why. The device and the CPU share one set of stage-1
//! tables (an SVA context: `CD.TTB0` is the address space's root, `CD.ASID` its ASID, §5.4), so
//! an IOVA *is* a virtual address of the address space: the tests write through one side and
//! read through the other.
//!
//! QEMU specifics the assertions rely on: a failed access is split into 4-byte accesses, each
//! recorded (`count == len / 4` for aligned transfers); a failed read fills the device buffer
//! with zeros; without PCI Bus Master Enable the device's accesses never reach the SMMU.
//!
//! The latency test prints, on one line, the guest (virtual) and host (wall, through
//! semihosting `SYS_ELAPSED`) time per transfer in the completion mode the kernel was booted
//! with (`edu.completion=irq|poll`); run it once per mode to compare.

use crate::{
    cpu,
    drivers::{
        dma::{DmaFault, DmaFaultKind},
        edu::{self, Direction, DmaError, Transfer},
    },
    iommu, kassert, kassert_eq,
    ktest::{TestFailure, TestResult},
    mm::{PAGE_SIZE, context, pgtable::Perms, tlb::SecondaryTlbMode},
    testkit::{Frames, IOVA_BASE, Rig},
    time,
};
use alloc::{format, string::String, vec::Vec};

/// The longest transfer QEMU 7.2's edu survives.
const MAX: u32 = edu::MAX_TRANSFER;

/// A byte pattern that differs at every offset within 256 bytes and from one 256-byte block to
/// the next, so a shifted, truncated or misplaced copy cannot match.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7) ^ ((i >> 8) as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Copy `bytes` into the single-page block `frame` at `off`, through the kernel's linear map.
fn write_frame(frame: &Frames, off: u64, bytes: &[u8]) {
    assert!(
        off + bytes.len() as u64 <= PAGE_SIZE,
        "write outside a page"
    );
    let p = frame.pa(off).to_virt().0 as *mut u8;
    for (i, &b) in bytes.iter().enumerate() {
        // SAFETY: `frame` owns the page, which the linear window maps read-write; the bound
        // was checked above; volatile because a device reads it.
        unsafe { p.add(i).write_volatile(b) };
    }
}

/// `len` bytes at virtual address `va` of the address space this CPU runs.
///
/// # Safety
///
/// The calling CPU must have entered an address space that maps `[va, va + len)` readable.
unsafe fn read_va(va: u64, len: usize) -> Vec<u8> {
    let p = va as *const u8;
    // SAFETY: the caller guarantees the mapping; volatile because a device may have written it.
    (0..len)
        .map(|i| unsafe { p.add(i).read_volatile() })
        .collect()
}

fn sync_rig(index: usize) -> Result<Rig, TestFailure> {
    Rig::new(index, SecondaryTlbMode::Sync)
}

fn dma(r: Result<(), DmaError>, what: &str) -> Result<(), String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn fault_of(r: Result<(), DmaError>, what: &str) -> Result<DmaFault, String> {
    match r {
        Err(DmaError::Fault { fault, .. }) => Ok(fault),
        Ok(()) => Err(format!("{what}: completed without an SMMU event")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The index of the first byte where `got` and `want` differ, for failure messages.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(g, w)| g != w) {
        Some(i) => format!(
            "first difference at byte {i}: {:#04x}, expected {:#04x}",
            got[i], want[i]
        ),
        None if got.len() != want.len() => {
            format!("lengths differ: {} vs {}", got.len(), want.len())
        }
        None => "equal".into(),
    }
}

/// Two one-page frames behind two consecutive IOVA pages, mapped in *reverse* physical order,
/// so a transfer crossing the page boundary is correct only if each page is translated.
struct TwoPages {
    iova: u64,
    /// `frames[0]` backs `iova`, `frames[1]` backs `iova + 4 KiB`.
    frames: [Frames; 2],
}

impl TwoPages {
    fn new(rig: &Rig, iova: u64, perms: Perms, fill: u8) -> Result<Self, String> {
        let (a, b) = (Frames::page()?, Frames::page()?);
        let frames = if a.pa(0).0 < b.pa(0).0 {
            [b, a]
        } else {
            [a, b]
        };
        for (i, f) in frames.iter().enumerate() {
            f.fill(0, PAGE_SIZE as usize, fill);
            rig.map(iova + i as u64 * PAGE_SIZE, f.pa(0), 1, perms)?;
        }
        Ok(Self { iova, frames })
    }

    fn write(&self, off: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let at = off + done as u64;
            let (page, in_page) = ((at / PAGE_SIZE) as usize, at % PAGE_SIZE);
            let n = (data.len() - done).min((PAGE_SIZE - in_page) as usize);
            write_frame(&self.frames[page], in_page, &data[done..done + n]);
            done += n;
        }
    }

    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = off + out.len() as u64;
            let (page, in_page) = ((at / PAGE_SIZE) as usize, at % PAGE_SIZE);
            let n = (len - out.len()).min((PAGE_SIZE - in_page) as usize);
            out.extend(self.frames[page].read(in_page, n));
        }
        out
    }
}

crate::ktest! {
    /// 4095 bytes of a counter pattern, memory → edu → other memory, each side starting at an
    /// odd offset and crossing a page boundary between two frames mapped in reverse physical
    /// order; the destination matches byte for byte, and the bytes around it are untouched.
    fn round_trip_4095_bytes_byte_for_byte() {
        round_trip()
    }
}

fn round_trip() -> TestResult {
    let rig = sync_rig(0)?;
    let src = TwoPages::new(&rig, IOVA_BASE + 0x50_0000, Perms::R, 0)?;
    let dst = TwoPages::new(&rig, IOVA_BASE + 0x60_0000, Perms::RW, 0xEE)?;
    let (src_off, dst_off) = (0x801, 0x3FF);
    let data = pattern(MAX as usize, 0x5A);
    src.write(src_off, &data);
    dma(
        rig.edu.copy(src.iova + src_off, dst.iova + dst_off, MAX),
        "round trip",
    )?;
    let got = dst.read(dst_off, MAX as usize);
    kassert!(
        got == data,
        "destination differs: {}",
        first_difference(&got, &data)
    );
    kassert!(
        dst.read(0, dst_off as usize).iter().all(|&b| b == 0xEE),
        "bytes before the destination changed"
    );
    let end = dst_off + u64::from(MAX);
    kassert!(
        dst.read(end, (2 * PAGE_SIZE - end) as usize)
            .iter()
            .all(|&b| b == 0xEE),
        "bytes after the destination changed"
    );
    kassert!(
        src.read(src_off, MAX as usize) == data,
        "the source changed"
    );
    Ok(())
}

crate::ktest! {
    /// The CPU, running the address space, writes a pattern through VA X; the device reads it at
    /// IOVA X and writes it at IOVA Y; the CPU, running the address space again, reads it back
    /// through VA Y. One set of page tables serves both (the frames behind X and Y are never
    /// touched through the kernel's own mapping except to check).
    fn cpu_and_device_share_page_tables() {
        shared_tables()
    }
}

fn shared_tables() -> TestResult {
    let rig = sync_rig(0)?;
    let (px, py) = (Frames::page()?, Frames::page()?);
    py.fill(0, PAGE_SIZE as usize, 0xEE);
    let x = IOVA_BASE + 0x70_0000;
    let y = IOVA_BASE + 0x80_3000;
    rig.map(x, px.pa(0), 1, Perms::RW)?;
    rig.map(y, py.pa(0), 1, Perms::RW)?;
    let data = pattern(MAX as usize, 0xC1);
    // The device's context descriptor points at the address space's tables and ASID...
    let sid = rig.edu.stream_id().ok_or("no StreamID")?;
    let iommu = iommu::get().ok_or("no SMMU")?;
    let was = cpu::irq_save();
    let cd = iommu.smmu().context(sid);
    cpu::irq_restore(was);
    let cd = cd
        .map_err(|e| format!("{e}"))?
        .ok_or("the device has no context")?;
    kassert_eq!(
        (cd.ttb0, cd.asid),
        (rig.space.root().0, rig.space.asid()),
        "CD.TTB0 and CD.ASID"
    );
    {
        let _entered = context::enter(&rig.space).map_err(|e| format!("enter: {e}"))?;
        // ...and so does the CPU's TTBR0 (BADDR [47:1], ASID [63:48]) while it runs the space.
        let ttbr0 = cpu::ttbr0();
        kassert_eq!(
            (ttbr0 & 0x0000_FFFF_FFFF_FFFE, (ttbr0 >> 48) as u16),
            (cd.ttb0, cd.asid),
            "TTBR0_EL1 {:#x} while entered",
            ttbr0
        );
        let p = x as *mut u8;
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: this CPU runs `rig.space`, which maps the page at X read-write to `px`,
            // a frame this test owns; volatile because the device reads it.
            unsafe { p.add(i).write_volatile(b) };
        }
    }
    kassert!(
        px.read(0, MAX as usize) == data,
        "the CPU's write through VA X did not reach the frame"
    );
    dma(rig.edu.copy(x, y, MAX), "device copy X -> Y")?;
    let seen: Vec<u8> = {
        let _entered = context::enter(&rig.space).map_err(|e| format!("enter: {e}"))?;
        // SAFETY: this CPU runs `rig.space`, which maps the page at Y to `py`, a frame this
        // test owns.
        unsafe { read_va(y, MAX as usize) }
    };
    kassert!(
        seen == data,
        "the CPU read through VA Y: {}",
        first_difference(&seen, &data)
    );
    kassert_eq!(
        py.read(u64::from(MAX), 1)[0],
        0xEE,
        "the byte after the transfer"
    );
    Ok(())
}

crate::ktest! {
    /// IOVAs A and B map one frame: what the device writes through A it reads back through B,
    /// and the other way round; the CPU sees the same bytes at both VAs.
    fn two_iovas_alias_one_frame() {
        aliases()
    }
}

fn aliases() -> TestResult {
    let rig = sync_rig(0)?;
    let (shared, src, out) = (Frames::page()?, Frames::page()?, Frames::page()?);
    let a = IOVA_BASE + 0x90_0000;
    let b = IOVA_BASE + 0xA5_7000;
    let s = IOVA_BASE + 0xB0_0000;
    let o = IOVA_BASE + 0xB0_1000;
    rig.map(a, shared.pa(0), 1, Perms::RW)?;
    rig.map(b, shared.pa(0), 1, Perms::RW)?;
    rig.map(s, src.pa(0), 1, Perms::R)?;
    rig.map(o, out.pa(0), 1, Perms::RW)?;
    let len = 2048u32;
    for (seed, write_via, read_via) in [(0x11u8, a, b), (0x77, b, a)] {
        let data = pattern(len as usize, seed);
        write_frame(&src, 0, &data);
        out.fill(0, PAGE_SIZE as usize, 0);
        dma(rig.edu.copy(s, write_via, len), "write through one IOVA")?;
        kassert!(
            shared.read(0, len as usize) == data,
            "the write via {:#x} missed the frame",
            write_via
        );
        dma(
            rig.edu.copy(read_via, o, len),
            "read through the other IOVA",
        )?;
        let got = out.read(0, len as usize);
        kassert!(
            got == data,
            "read via {:#x}: {}",
            read_via,
            first_difference(&got, &data)
        );
        let (at_a, at_b): (Vec<u8>, Vec<u8>) = {
            let _entered = context::enter(&rig.space).map_err(|e| format!("enter: {e}"))?;
            // SAFETY: this CPU runs `rig.space`, which maps A and B to `shared`, owned by
            // this test.
            unsafe { (read_va(a, len as usize), read_va(b, len as usize)) }
        };
        kassert!(
            at_a == data && at_b == data,
            "the CPU sees different bytes at A and B"
        );
    }
    Ok(())
}

crate::ktest! {
    /// Three rounds, each interleaving: a good copy; a read of an unmapped IOVA (F_TRANSLATION,
    /// one record per 4-byte access, at the transfer's start; nothing in memory changes, the
    /// device buffer reads back zeros); a good copy; a write to a read-only page
    /// (F_PERMISSION, same counts; the page keeps its bytes); a good copy.
    fn faults_change_nothing_and_good_transfers_continue() {
        interleaved_faults()
    }
}

fn interleaved_faults() -> TestResult {
    let rig = sync_rig(0)?;
    let sid = rig.edu.stream_id().ok_or("no StreamID")?;
    let (src, dst, ro) = (Frames::page()?, Frames::page()?, Frames::page()?);
    let s = IOVA_BASE + 0xC0_0000;
    let d = IOVA_BASE + 0xC1_0000;
    let q = IOVA_BASE + 0xC2_0000;
    let u = IOVA_BASE + 0xC3_0000;
    let data = pattern(PAGE_SIZE as usize, 0x3D);
    write_frame(&src, 0, &data);
    ro.fill(0, PAGE_SIZE as usize, 0x5A);
    rig.map(s, src.pa(0), 1, Perms::R)?;
    rig.map(d, dst.pa(0), 1, Perms::RW)?;
    rig.map(q, ro.pa(0), 1, Perms::R)?;
    let mut copies = 0;
    let mut good = |len: u32| -> Result<(), String> {
        dst.fill(0, PAGE_SIZE as usize, 0xEE);
        dma(rig.edu.copy(s, d, len), "good copy")?;
        copies += 1;
        let got = dst.read(0, PAGE_SIZE as usize);
        if got[..len as usize] != data[..len as usize]
            || got[len as usize..].iter().any(|&b| b != 0xEE)
        {
            return Err(format!(
                "good copy #{copies} of {len} bytes: {}",
                first_difference(&got[..len as usize], &data[..len as usize])
            ));
        }
        Ok(())
    };
    for len in [64u32, 256, 1024] {
        good(len)?;

        let f = fault_of(rig.device_reads(u, len), "read of an unmapped IOVA")?;
        kassert_eq!(
            (f.kind, f.iova, f.count, f.write, f.stream_id),
            (DmaFaultKind::Translation, u, len / 4, false, sid),
            "{}",
            f
        );
        kassert!(
            rig.device_buffer(len)?.iter().all(|&b| b == 0),
            "a faulted read left data in the device buffer"
        );
        kassert!(
            src.read(0, PAGE_SIZE as usize) == data && ro.holds(0, PAGE_SIZE as usize, 0x5A),
            "memory changed"
        );

        good(len)?;

        rig.load_device(0xC3, len)?;
        let f = fault_of(rig.device_writes(q, len), "write to a read-only page")?;
        kassert_eq!(
            (f.kind, f.iova, f.count, f.write, f.stream_id),
            (DmaFaultKind::Permission, q, len / 4, true, sid),
            "{}",
            f
        );
        kassert!(
            ro.holds(0, PAGE_SIZE as usize, 0x5A),
            "the read-only page changed: {}",
            ro.describe(0)
        );

        good(len)?;
    }
    Ok(())
}

crate::ktest! {
    /// Two edus, each bound to its own address space with the same VA V mapped to different
    /// frames: each device reads its own frame at V, a write by one leaves the other's frame
    /// alone, and a VA mapped only in the first space faults for the second device. Needs a
    /// second edu (`-device edu,dma_mask=0xffffffffffffffff,addr=0x3`).
    fn two_devices_see_only_their_own_address_space() {
        two_devices()
    }
}

fn two_devices() -> TestResult {
    crate::ktest::require(edu::devices().len() >= 2, "two edu devices")?;
    let r0 = sync_rig(0)?;
    let r1 = sync_rig(1)?;
    kassert!(
        r0.space.asid() != r1.space.asid(),
        "both address spaces use ASID {}",
        r0.space.asid()
    );
    let (sid0, sid1) = (r0.edu.stream_id(), r1.edu.stream_id());
    kassert!(sid0 != sid1, "both devices use StreamID {:?}", sid0);
    let (p0, p1, only0) = (Frames::page()?, Frames::page()?, Frames::page()?);
    p0.fill(0, PAGE_SIZE as usize, 0xA0);
    p1.fill(0, PAGE_SIZE as usize, 0xB1);
    only0.fill(0, PAGE_SIZE as usize, 0xC2);
    let v = IOVA_BASE + 0xD0_0000;
    let w = v + 0x1000;
    r0.map(v, p0.pa(0), 1, Perms::RW)?;
    r1.map(v, p1.pa(0), 1, Perms::RW)?;
    r0.map(w, only0.pa(0), 1, Perms::RW)?;
    let len = 256u32;
    dma(r0.device_reads(v, len), "device 0 reads V")?;
    dma(r1.device_reads(v, len), "device 1 reads V")?;
    kassert!(
        r0.device_buffer(len)?.iter().all(|&b| b == 0xA0),
        "device 0 did not read its own frame"
    );
    kassert!(
        r1.device_buffer(len)?.iter().all(|&b| b == 0xB1),
        "device 1 did not read its own frame"
    );
    r1.load_device(0x77, len)?;
    dma(r1.device_writes(v, len), "device 1 writes V")?;
    kassert!(
        p1.holds(0, len as usize, 0x77),
        "device 1's write missed its frame"
    );
    kassert!(
        p0.holds(0, PAGE_SIZE as usize, 0xA0),
        "device 1's write reached device 0's frame"
    );
    dma(r0.device_reads(w, len), "device 0 reads W")?;
    let f = fault_of(
        r1.device_reads(w, len),
        "device 1 reads W (mapped only for device 0)",
    )?;
    kassert_eq!(
        (f.kind, Some(f.stream_id), f.iova),
        (DmaFaultKind::Translation, sid1, w),
        "{}",
        f
    );
    kassert!(
        r1.device_buffer(len)?.iter().all(|&b| b == 0),
        "device 1 got data at W"
    );
    Ok(())
}

crate::ktest! {
    /// Hygiene check for every fault test: with Bus Master Enable cleared, edu "completes"
    /// transfers but moves nothing — a write leaves memory alone, a read brings nothing from
    /// memory (QEMU answers it with zeros), an unmapped IOVA raises no SMMU event — because its
    /// accesses never reach the SMMU.
    /// A fault test run without BME would pass for the wrong reason.
    fn bus_master_disabled_moves_no_data_and_raises_no_event() {
        bus_master_gate()
    }
}

fn bus_master_gate() -> TestResult {
    let iommu = iommu::get().ok_or("no SMMU")?;
    let rig = sync_rig(0)?;
    let p = Frames::page()?;
    p.fill(0, PAGE_SIZE as usize, 0x3C);
    let x = IOVA_BASE + 0xE0_0000;
    let u = IOVA_BASE + 0xE1_0000;
    rig.map(x, p.pa(0), 1, Perms::RW)?;
    let len = 512u32;
    rig.load_device(0x99, len)?;
    let before = iommu.stats();
    let counts_before = iommu.event_counts();
    rig.edu.disable_dma();
    let transfers = [
        Transfer {
            direction: Direction::FromDevice,
            iova: x,
            buffer_offset: 0,
            len,
        },
        Transfer {
            direction: Direction::ToDevice,
            iova: x,
            buffer_offset: 0,
            len,
        },
        Transfer {
            direction: Direction::ToDevice,
            iova: u,
            buffer_offset: 0,
            len,
        },
    ];
    let mut results = Vec::new();
    for t in transfers {
        results.push(rig.edu.transfer_without_bus_master(t));
    }
    let refused = rig.device_writes(x, len);
    iommu.drain_events();
    let d = iommu.stats().delta(&before);
    let counts_after = iommu.event_counts();
    // SAFETY: the rig's attachment is alive, so the device's StreamID still has the
    // stage-1 STE of `rig.space`.
    unsafe { rig.edu.enable_dma() };
    for (t, r) in transfers.iter().zip(results) {
        dma(r, &format!("{t} without bus mastering"))?;
    }
    kassert!(
        matches!(refused, Err(DmaError::BusMasterDisabled { .. })),
        "{:?}",
        refused
    );
    kassert!(
        p.holds(0, PAGE_SIZE as usize, 0x3C),
        "memory changed without bus mastering: {}",
        p.describe(0)
    );
    kassert_eq!(d.events, 0, "SMMU events without bus mastering: {}", d);
    kassert_eq!(counts_after, counts_before, "(unclaimed, lost) events");
    // The read brought nothing from memory: QEMU answers the blocked reads with zeros.
    let buffer = rig.device_buffer(len)?;
    kassert!(
        !buffer.contains(&0x3C),
        "the device read memory without bus mastering"
    );
    kassert!(
        buffer.iter().all(|&b| b == 0),
        "device buffer after blocked reads: {:02x?}",
        &buffer[..8]
    );
    rig.load_device(0x99, len)?;
    dma(rig.device_writes(x, len), "write with bus mastering again")?;
    kassert!(
        p.holds(0, len as usize, 0x99),
        "the write with bus mastering did not land"
    );
    Ok(())
}

/// Host wall-clock nanoseconds since QEMU started, through semihosting `SYS_ELAPSED` (0x30) and
/// `SYS_TICKFREQ` (0x31); `None` without `-semihosting` (the exception handler then skips the
/// `hlt`, leaving the operation number in x0).
fn host_elapsed_ns() -> Option<u64> {
    let mut ticks: u64 = 0;
    let status: u64;
    // SAFETY: SYS_ELAPSED writes one 64-bit tick count to the block x1 points at (a local that
    // lives across the call) and the status to x0; nothing else is touched.
    unsafe {
        core::arch::asm!("hlt #0xF000", inout("x0") 0x30u64 => status,
            in("x1") &raw mut ticks, options(nostack));
    }
    if status != 0 {
        return None;
    }
    let freq: u64;
    // SAFETY: SYS_TICKFREQ takes no parameter block and returns the frequency in x0.
    unsafe {
        core::arch::asm!("hlt #0xF000", inout("x0") 0x31u64 => freq, in("x1") 0u64,
            options(nostack));
    }
    (freq != 0 && freq != 0x31)
        .then(|| (u128::from(ticks) * 1_000_000_000 / u128::from(freq)) as u64)
}

crate::ktest! {
    /// Time per 64-byte DMA in the completion mode the kernel was booted with, printed on one
    /// line: guest time (the virtual counter: edu's 100 ms timer plus the wait's overshoot) and
    /// host wall time (what icount's warp saves). Every transfer must take at least edu's
    /// 100 ms of guest time and complete well within the driver's timeout.
    fn dma_latency_in_the_booted_completion_mode() {
        latency()
    }
}

fn latency() -> TestResult {
    const N: u32 = 8;
    let rig = sync_rig(0)?;
    let mode = rig.edu.settings().completion;
    let src = Frames::page()?;
    write_frame(&src, 0, &pattern(64, 0x21));
    let s = IOVA_BASE + 0xF0_0000;
    rig.map(s, src.pa(0), 1, Perms::R)?;
    dma(rig.device_reads(s, 64), "warm-up")?;
    let (guest0, wall0) = (time::now_ns(), host_elapsed_ns());
    for i in 0..N {
        dma(rig.device_reads(s, 64), &format!("transfer {i}"))?;
    }
    let guest = (time::now_ns() - guest0) / u64::from(N);
    let wall = wall0
        .zip(host_elapsed_ns())
        .map(|(a, b)| b.saturating_sub(a) / u64::from(N));
    log::info!(
        "edu DMA latency (completion={mode}): {N} transfers of 64 bytes, guest {} us/DMA, \
         wall {} us/DMA",
        guest / 1000,
        wall.map_or_else(
            || String::from("n/a (no semihosting)"),
            |w| format!("{}", w / 1000)
        )
    );
    kassert!(
        guest >= 100_000_000,
        "a DMA took {} us of guest time, less than edu's 100 ms timer",
        guest / 1000
    );
    kassert!(
        guest < rig.edu.settings().timeout_ns,
        "a DMA took {} us of guest time",
        guest / 1000
    );
    kassert!(
        rig.device_buffer(64)? == pattern(64, 0x21),
        "the timed transfers read the wrong data"
    );
    Ok(())
}
