//! The main job (`scripts/run`) as a test: on the project's machine it tells the whole story and
//! exits 0 with every row as expected; on a machine without an SMMU it has nothing to
//! demonstrate, and says so with a boot error (exit 3) naming what is missing. Boots QEMU, so
//! scripts/test runs it with `--ignored`.

use harness::{
    build,
    qemu::{self, RunConfig},
    verdict::RunEnd,
};
use protocol::exit::ExitStatus;

fn run_main_job(extra_qemu_args: Option<&str>) -> qemu::RunOutput {
    let root = harness::repo_root();
    let kernel = build::build_kernel(&root, &[]).expect("build the image");
    let mut cfg = RunConfig::new(&kernel, "");
    cfg.echo = false;
    if let Some(args) = extra_qemu_args {
        cfg.env.push(("QEMU_EXTRA_ARGS".into(), args.into()));
    }
    qemu::run(&root, &cfg).expect("boot QEMU")
}

#[test]
#[ignore = "boots QEMU; run by scripts/test"]
fn main_job_tells_the_story_and_succeeds() {
    let out = run_main_job(None);
    assert_eq!(
        out.end,
        RunEnd::Exited(ExitStatus::Success.code()),
        "{}",
        out.console
    );
    assert!(
        out.console.contains("permission upgrade RO->RW")
            && out.console.contains("| legacy ")
            && out.console.contains("| sync ")
            && out.console.contains("| nested-unaware ")
            && out.console.contains("| move-late "),
        "no command-count table:\n{}",
        out.console
    );
    assert!(!out.console.contains("UNEXPECTED"), "{}", out.console);
    assert!(!out.console.contains("could not run"), "{}", out.console);
}

#[test]
#[ignore = "boots QEMU; run by scripts/test"]
fn main_job_without_an_smmu_names_what_is_missing() {
    // A later -M merges into the machine options: the same machine without the SMMU.
    let out = run_main_job(Some("-M virt,iommu=none"));
    assert_eq!(
        out.end,
        RunEnd::Exited(ExitStatus::BootError.code()),
        "{}",
        out.console
    );
    assert!(
        out.console
            .contains("BOOT ERROR: main job: nothing to demonstrate without an SMMUv3"),
        "{}",
        out.console
    );
}
