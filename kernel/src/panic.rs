//! The panic handler: message and location on the console, then a distinct exit status.

use crate::{exit, ktest, println};
use core::sync::atomic::{AtomicBool, Ordering};
use protocol::console;

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A panic while reporting a panic: leave without formatting anything.
        exit::exit(exit::ExitStatus::Panic);
    }
    println!(
        "\n{} on CPU {}: {}",
        console::PANIC,
        crate::cpu::index(),
        info
    );
    if let Some(test) = ktest::current() {
        println!(
            "{}",
            console::TestLine {
                name: test,
                verdict: console::Verdict::Failed
            }
        );
    }
    exit::exit(exit::ExitStatus::Panic)
}
