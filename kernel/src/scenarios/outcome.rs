//! What a scenario observed, and the verdicts a correct run and a negative control demand.

use alloc::{format, string::String};
use smmu::CounterSnapshot;

use crate::{ktest::TestFailure, mm::tlb::SecondaryTlbMode};

/// What a scenario observed: the record behind its verdict, and a row of the demo's table.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The scenario.
    pub scenario: &'static str,
    /// How secondary TLBs were told about flushes.
    pub mode: SecondaryTlbMode,
    /// The device saw the new page-table state (data landed where the tables say; forbidden
    /// accesses faulted), checked in memory.
    pub fresh: bool,
    /// SMMU commands issued by the change under test.
    pub commands: CounterSnapshot,
    /// Device fault events seen by the checking transfers.
    pub device_faults: u32,
    /// What happened, in words.
    pub detail: String,
}

impl Outcome {
    /// The verdict for a correct mode: the device must have seen the new state.
    pub fn expect_fresh(&self) -> Result<(), TestFailure> {
        if self.fresh {
            Ok(())
        } else {
            Err(format!(
                "{} in {:?} mode: the device used a stale translation: {}",
                self.scenario, self.mode, self.detail
            )
            .into())
        }
    }

    /// The verdict for a negative control: the bug must be visible, or the test is blind.
    pub fn expect_stale(&self) -> Result<(), TestFailure> {
        if self.fresh {
            Err(format!(
                "negative control {} in {:?} mode saw no stale translation — the test cannot detect the bug: {}",
                self.scenario, self.mode, self.detail
            )
            .into())
        } else {
            Ok(())
        }
    }
}
