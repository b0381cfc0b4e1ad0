//! Counters of what the driver asked the SMMU to do, readable at any time from any CPU.
//!
//! Each command published to the command queue is counted by [`CommandKind`] (so a flush's
//! cost is visible as "N range TLBIs + 1 sync"), plus whole-flush, error and event counts. The
//! counters are relaxed atomics: they are statistics, not synchronisation. Tests and the demo
//! take a [`CounterSnapshot`] before and after an operation and look at the
//! [`CounterSnapshot::delta`].

use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use crate::command::CommandKind;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters (atomics).
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A point-in-time copy of [`Counters`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct CounterSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            /// Copies every counter (each individually; concurrent updates may be split).
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $( $name: self.$name.load(Relaxed), )* }
            }
        }

        impl CounterSnapshot {
            /// `self - earlier`, field by field (saturating).
            pub fn delta(&self, earlier: &CounterSnapshot) -> CounterSnapshot {
                CounterSnapshot { $( $name: self.$name.saturating_sub(earlier.$name), )* }
            }
        }

        impl fmt::Display for CounterSnapshot {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut sep = "";
                $(
                    if self.$name != 0 {
                        write!(f, "{sep}{}={}", stringify!($name), self.$name)?;
                        sep = " ";
                    }
                )*
                if sep.is_empty() {
                    f.write_str("(none)")?;
                }
                Ok(())
            }
        }
    };
}

counters! {
    /// Single-address `CMD_TLBI_NH_VA` commands.
    tlbi_nh_va,
    /// Range-form `CMD_TLBI_NH_VA` commands.
    tlbi_nh_va_range,
    /// `CMD_TLBI_NH_VAA` commands.
    tlbi_nh_vaa,
    /// `CMD_TLBI_NH_ASID` commands.
    tlbi_nh_asid,
    /// `CMD_TLBI_NH_ALL` and `CMD_TLBI_NSNH_ALL` commands.
    tlbi_all,
    /// `CMD_CFGI_*` commands.
    cfgi,
    /// `CMD_PREFETCH_CONFIG` commands.
    prefetch,
    /// `CMD_SYNC` commands.
    sync,
    /// [`Command::Raw`](crate::Command::Raw) test-hook commands.
    raw,
    /// Commands of any kind (including syncs).
    commands,
    /// Batches submitted (each ends with exactly one `CMD_SYNC`).
    batches,
    /// Invalidations requested through `Smmu::invalidate` (one per flush).
    flushes,
    /// Commands the SMMU rejected with `CERROR_ILL` (replaced by `CMD_SYNC`).
    commands_rejected,
    /// `CERROR_ABT` command fetch aborts (retried).
    command_fetch_aborts,
    /// `CERROR_ATC_INV_SYNC` errors (left in place).
    atc_sync_errors,
    /// Waits that timed out (sync, queue space or lock).
    timeouts,
    /// Event records consumed.
    events,
    /// Event queue overflows seen (architectural `OVFLG` or QEMU's `EVENTQ_ABT_ERR`).
    event_overflows,
    /// Global errors acknowledged (all kinds).
    gerrors,
}

impl Counters {
    /// Counts one published command.
    pub fn count_command(&self, kind: CommandKind) {
        let counter = match kind {
            CommandKind::Prefetch => &self.prefetch,
            CommandKind::Cfgi => &self.cfgi,
            CommandKind::TlbiNhVa => &self.tlbi_nh_va,
            CommandKind::TlbiNhVaRange => &self.tlbi_nh_va_range,
            CommandKind::TlbiNhVaa => &self.tlbi_nh_vaa,
            CommandKind::TlbiNhAsid => &self.tlbi_nh_asid,
            CommandKind::TlbiAll => &self.tlbi_all,
            CommandKind::Sync => &self.sync,
            CommandKind::Raw => &self.raw,
        };
        counter.fetch_add(1, Relaxed);
        self.commands.fetch_add(1, Relaxed);
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn snapshot_delta_and_display() {
        let c = Counters::default();
        let before = c.snapshot();
        c.count_command(CommandKind::TlbiNhVaRange);
        c.count_command(CommandKind::Sync);
        Counters::bump(&c.flushes);
        let d = c.snapshot().delta(&before);
        assert_eq!(d.tlbi_nh_va_range, 1);
        assert_eq!(d.sync, 1);
        assert_eq!(d.commands, 2);
        assert_eq!(d.flushes, 1);
        assert_eq!(d.tlbi_nh_asid, 0);
        assert_eq!(
            d.to_string(),
            "tlbi_nh_va_range=1 sync=1 commands=2 flushes=1"
        );
        assert_eq!(CounterSnapshot::default().to_string(), "(none)");
    }
}
