//! Which address space each CPU runs, the machine's shared [`MmEnv`], and the routing of CPU
//! aborts on lower-half addresses to the running address space's fault policy.

#[cfg(target_os = "none")]
mod target {
    use crate::{
        cpu::{self, MAX_CPUS},
        exception::{self, FaultResolution, esr::Abort},
        mm::{
            VirtAddr,
            address_space::{AddressSpace, AsError, FaultKind, MmEnv},
            kernel_map,
        },
    };
    use alloc::sync::Arc;
    use core::marker::PhantomData;
    use spin::{Mutex, Once};

    static ENV: Once<MmEnv> = Once::new();
    static CURRENT: [Mutex<Option<Arc<AddressSpace>>>; MAX_CPUS] =
        [const { Mutex::new(None) }; MAX_CPUS];

    /// Create the shared environment for `cpus` CPUs and route lower-half aborts. Once, at boot,
    /// after the final kernel tables are live.
    pub fn init(cpus: usize) -> Result<(), crate::mm::asid::AsidError> {
        // SAFETY: kernel_map::init has installed the final TTBR1, which maps all RAM in the
        // linear window for the kernel's lifetime.
        let env = unsafe { MmEnv::for_this_machine(cpus) }?;
        ENV.call_once(|| env);
        exception::set_lower_half_fault_handler(lower_half_fault);
        Ok(())
    }

    /// The environment new address spaces are created in.
    pub fn env() -> MmEnv {
        ENV.get().expect("mm::context::init has not run").clone()
    }

    /// A new, empty address space.
    pub fn new_address_space() -> Result<Arc<AddressSpace>, AsError> {
        AddressSpace::new(env()).map(Arc::new)
    }

    /// This CPU runs `space` in its lower half until the guard is dropped. Not `Send`: it
    /// belongs to the CPU that entered.
    pub struct Entered {
        cpu: usize,
        _not_send: PhantomData<*const ()>,
    }

    /// Switch the calling CPU to `space` (TTBR0 = its tables and ASID), so the CPU reaches the
    /// same virtual addresses a device bound to `space` uses.
    pub fn enter(space: &Arc<AddressSpace>) -> Result<Entered, AsError> {
        let was = cpu::irq_save();
        let me = cpu::index();
        let mut current = CURRENT[me].lock();
        assert!(current.is_none(), "CPU {me} entered an address space twice");
        // SAFETY: we run on CPU `me` with IRQs masked; `space` stays alive in CURRENT until the
        // guard switches away; kernel code uses only upper-half mappings.
        let result = unsafe { space.switch_to(me) };
        if result.is_ok() {
            *current = Some(space.clone());
        }
        drop(current);
        cpu::irq_restore(was);
        result.map(|_| Entered {
            cpu: me,
            _not_send: PhantomData,
        })
    }

    impl Drop for Entered {
        fn drop(&mut self) {
            let was = cpu::irq_save();
            // The environment of the space being left, not the machine's: its ASID allocator
            // is the one that recorded this CPU as running it (a space built in another
            // environment, e.g. a test's small allocator, would otherwise stay "active" there
            // and could never be released).
            let env = CURRENT[self.cpu]
                .lock()
                .as_ref()
                .map_or_else(env, |space| space.env().clone());
            // SAFETY: on the CPU that entered (the guard is not Send), switching to the empty
            // table the kernel map built; the address space is released only afterwards.
            unsafe { AddressSpace::switch_to_empty(&env, self.cpu, kernel_map::empty_ttbr0()) }
                .expect("leaving an address space cannot fail for a CPU that entered it");
            let space = CURRENT[self.cpu].lock().take();
            cpu::irq_restore(was);
            drop(space);
        }
    }

    /// The address space the calling CPU runs, if any.
    pub fn current() -> Option<Arc<AddressSpace>> {
        CURRENT[cpu::index()].lock().clone()
    }

    fn lower_half_fault(abort: &Abort, _elr: u64) -> FaultResolution {
        let (Some(space), Some(kind), Some(far)) =
            (current(), FaultKind::from_abort(abort), abort.address)
        else {
            return FaultResolution::Unhandled;
        };
        match space.handle_fault(VirtAddr(far), kind) {
            Ok(outcome) if outcome.is_resolved() => {
                log::debug!("CPU fault at {far:#x} ({abort}) resolved: {outcome:?}");
                FaultResolution::Retry
            }
            Ok(_) => FaultResolution::Unhandled,
            Err(e) => {
                log::error!("CPU fault at {far:#x}: fault handler failed: {e}");
                FaultResolution::Unhandled
            }
        }
    }
}
#[cfg(target_os = "none")]
pub use target::{Entered, current, enter, env, init, new_address_space};
