//! Secondary CPUs: started with PSCI CPU_ON, each with its own stack and per-CPU state, idling
//! in WFI until work is queued for it with [`run_on`] (needed by the concurrent-flush tests).

use crate::{
    cpu::{self, Conduit, MAX_CPUS},
    drivers::{gic, timer},
    exception,
    mm::{self, PhysAddr},
    time::Deadline,
};
use alloc::{boxed::Box, collections::VecDeque, sync::Arc};
use core::{
    fmt,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};
use spin::Mutex;

/// PSCI CPU_ON, SMC64 calling convention (Arm DEN 0022).
const PSCI_CPU_ON_64: u32 = 0xC400_0003;
/// Each secondary CPU's stack.
const STACK_SIZE: u64 = 64 * 1024;
/// Longest single sleep of [`JobHandle::join`] between checks of the result.
const JOIN_POLL_NS: u64 = 100_000;

type Job = Box<dyn FnOnce() + Send>;

/// Per-CPU state.
struct PerCpu {
    mpidr: AtomicU64,
    online: AtomicBool,
    jobs: Mutex<VecDeque<Job>>,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            mpidr: AtomicU64::new(u64::MAX),
            online: AtomicBool::new(false),
            jobs: Mutex::new(VecDeque::new()),
        }
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// Errors starting CPUs or running work on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmpError {
    /// PSCI CPU_ON returned an error code.
    CpuOnFailed {
        /// The CPU's MPIDR.
        mpidr: u64,
        /// The PSCI return code.
        code: i64,
    },
    /// The CPU did not report itself online in time.
    StartTimeout {
        /// The CPU's MPIDR.
        mpidr: u64,
    },
    /// No such CPU, or it is not online.
    NotOnline(usize),
    /// A job did not finish in time.
    JobTimeout(usize),
    /// Memory for a stack could not be allocated.
    OutOfMemory,
}

impl fmt::Display for SmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CpuOnFailed { mpidr, code } => {
                write!(f, "PSCI CPU_ON({mpidr:#x}) failed with {code}")
            }
            Self::StartTimeout { mpidr } => {
                write!(f, "CPU {mpidr:#x} did not come online within 1 s")
            }
            Self::NotOnline(i) => write!(f, "CPU {i} is not online"),
            Self::JobTimeout(i) => write!(f, "job on CPU {i} did not finish in time"),
            Self::OutOfMemory => write!(f, "no memory for a secondary CPU stack"),
        }
    }
}

/// The block a secondary CPU reads with its MMU off (layout shared with boot.s).
#[repr(C, align(64))]
struct SecondaryBoot {
    ttbr1: u64,
    stack_top: u64,
    entry: u64,
    arg: u64,
}

unsafe extern "C" {
    static _secondary_start: u8;
}

/// Mark the boot CPU online with its MPIDR.
pub fn init_boot_cpu() {
    CPUS[0]
        .mpidr
        .store(cpu::mpidr_affinity(), Ordering::Relaxed);
    CPUS[0].online.store(true, Ordering::Release);
}

/// Start every CPU in `mpidrs` other than the boot CPU; returns how many are online in all.
pub fn start_secondaries(mpidrs: &[u64], conduit: Conduit) -> Result<usize, SmpError> {
    let boot = cpu::mpidr_affinity();
    let mut index = 1;
    for &mpidr in mpidrs.iter().filter(|&&m| m != boot) {
        if index >= MAX_CPUS {
            log::warn!("ignoring CPU {mpidr:#x}: the kernel supports {MAX_CPUS} CPUs");
            continue;
        }
        start_one(index, mpidr, conduit)?;
        index += 1;
    }
    Ok(index)
}

fn start_one(index: usize, mpidr: u64, conduit: Conduit) -> Result<(), SmpError> {
    // A CPU's stack lives as long as the kernel.
    let stack = mm::frame::PhysBlock::zeroed(STACK_SIZE, STACK_SIZE)
        .map_err(|_| SmpError::OutOfMemory)?
        .leak();
    let block = Box::new(SecondaryBoot {
        ttbr1: cpu::ttbr1(),
        stack_top: stack.add(STACK_SIZE).to_virt().0,
        entry: secondary_main as *const () as u64,
        arg: index as u64,
    });
    CPUS[index].mpidr.store(mpidr, Ordering::Relaxed);
    let block_va = &*block as *const SecondaryBoot as u64;
    // The CPU reads the block with its MMU and caches off: clean it to the point of coherency.
    cpu::clean_dcache_range(block_va, core::mem::size_of::<SecondaryBoot>() as u64);
    let block_pa = mm::addr::VirtAddr(block_va)
        .linear_to_phys()
        .expect("heap is in the linear map");
    let entry_pa = PhysAddr(
        mm::addr::VirtAddr(&raw const _secondary_start as u64)
            .linear_to_phys()
            .expect("image is in the linear map")
            .0,
    );
    let code = cpu::firmware_call(conduit, PSCI_CPU_ON_64, mpidr, entry_pa.0, block_pa.0);
    if code != 0 {
        return Err(SmpError::CpuOnFailed { mpidr, code });
    }
    let deadline = Deadline::after_ms(1000);
    while !CPUS[index].online.load(Ordering::Acquire) {
        if deadline.expired() {
            return Err(SmpError::StartTimeout { mpidr });
        }
        cpu::relax();
    }
    // The CPU copied what it needed before reporting online.
    drop(block);
    Ok(())
}

/// Rust entry of a secondary CPU (from boot.s, MMU on, on its own stack).
extern "C" fn secondary_main(index: u64) -> ! {
    cpu::set_percpu_pointer(index);
    exception::install_vectors();
    mm::kernel_map::enter_cpu();
    if let Err(e) = gic::init_cpu() {
        panic!("CPU {index}: interrupt controller: {e}");
    }
    if let Err(e) = timer::init_cpu() {
        panic!("CPU {index}: timer: {e}");
    }
    log::debug!("CPU {index} online (MPIDR {:#x})", cpu::mpidr_affinity());
    CPUS[index as usize].online.store(true, Ordering::Release);
    cpu::irq_enable();
    idle_loop(index as usize)
}

fn idle_loop(index: usize) -> ! {
    loop {
        // Check the queue and sleep with IRQs masked: a wake-up SGI sent after the check stays
        // pending and ends the WFI (which wakes on a pending interrupt even while masked),
        // instead of being taken between the check and the WFI and lost.
        let was = cpu::irq_save();
        let job = CPUS[index].jobs.lock().pop_front();
        if job.is_none() {
            cpu::wait_for_interrupt();
        }
        cpu::irq_restore(was);
        if let Some(job) = job {
            job();
        }
    }
}

/// Number of CPUs online.
pub fn online_cpus() -> usize {
    CPUS.iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .count()
}

/// A handle to the result of work queued on another CPU.
pub struct JobHandle<R> {
    cpu: usize,
    result: Arc<Mutex<Option<R>>>,
}

impl<R> JobHandle<R> {
    /// Wait up to `timeout_ms` for the job's result.
    ///
    /// The caller sleeps in WFI rather than spinning: under QEMU's `-icount` every vCPU runs on
    /// one host thread, and a CPU spinning on the result starves the CPU that should produce
    /// it (observed: a trivial job never ran within 5 s of virtual time). The job wakes the
    /// caller with an SGI when it is done, and the timer bounds each sleep. IRQs are masked
    /// from the check to the WFI, so neither wake-up can be taken (and lost) just before the
    /// WFI; they are handled when the mask is restored.
    pub fn join(self, timeout_ms: u64) -> Result<R, SmpError> {
        wait_for(timeout_ms, || self.result.lock().is_some());
        self.result
            .lock()
            .take()
            .ok_or(SmpError::JobTimeout(self.cpu))
    }
}

/// Wait up to `timeout_ms` for `done()`, sleeping in WFI between checks (bounded by the timer,
/// woken early by any interrupt) instead of spinning, for the reason given at
/// [`JobHandle::join`]: a CPU that spins on a flag another CPU must set can starve that CPU
/// under `-icount`. Returns whether `done()` held.
pub fn wait_for(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Deadline::after_ms(timeout_ms);
    loop {
        if done() {
            return true;
        }
        if deadline.expired() {
            return false;
        }
        let was = cpu::irq_save();
        timer::wait_until(JOIN_POLL_NS, &mut done);
        cpu::irq_restore(was);
    }
}

/// Queue `f` to run on CPU `index` (which must be online and not the caller) and wake it.
pub fn run_on<R: Send + 'static>(
    index: usize,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<JobHandle<R>, SmpError> {
    let target = CPUS.get(index).ok_or(SmpError::NotOnline(index))?;
    if !target.online.load(Ordering::Acquire) || index == cpu::index() {
        return Err(SmpError::NotOnline(index));
    }
    let result = Arc::new(Mutex::new(None));
    let slot = result.clone();
    let (caller_mpidr, caller) = (cpu::mpidr_affinity(), cpu::index());
    let was = cpu::irq_save();
    target.jobs.lock().push_back(Box::new(move || {
        let r = f();
        *slot.lock() = Some(r);
        // The caller may be asleep in `join`.
        gic::send_wake(caller_mpidr, caller);
    }));
    cpu::irq_restore(was);
    gic::send_wake(target.mpidr.load(Ordering::Relaxed), index);
    Ok(JobHandle { cpu: index, result })
}
