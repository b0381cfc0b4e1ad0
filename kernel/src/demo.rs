//! The main job: the story of the secondary TLB, told on the real (emulated) device.

use crate::exit;
use log::info;

/// Run the demonstration and power off.
pub fn main() -> ! {
    info!("main job: hardware discovered; the demonstration is not written yet");
    exit::shutdown()
}
