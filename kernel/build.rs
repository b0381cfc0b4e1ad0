//! Links the kernel image with the top-level `linker.ld` when building for the bare-metal target.
use std::{env, path::PathBuf};

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let script = manifest
        .join("../linker.ld")
        .canonicalize()
        .expect("linker.ld at the workspace root");
    // Cargo does not track files passed with -T: without this an edit of linker.ld would not relink.
    println!("cargo:rerun-if-changed={}", script.display());
    if env::var("TARGET").as_deref() == Ok("aarch64-unknown-none") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
}
