//! The kernel binary: the boot path lives in the library; this only names the entry.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the kernel runs only on aarch64-unknown-none: use scripts/run");
    std::process::exit(2);
}
