//! The run pipeline end to end, with a fake QEMU: scripts/qemu-run's command line, exit
//! statuses, the hard timeout and deadlock detection, and the verdict. Fast: no kernel, no
//! emulation.

use harness::{
    console,
    qemu::{self, RunConfig, RunOutput},
    verdict::{self, RunEnd},
};
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

/// A stand-in for qemu-system-aarch64: records its arguments, prints the console it is given,
/// then exits with the status it is given or hangs.
const FAKE_QEMU: &str = r#"#!/usr/bin/env bash
printf '%s\n' "$@" >"$FAKE_ARGS"
if [[ -n ${FAKE_STDERR:-} ]]; then echo "$FAKE_STDERR" >&2; fi
printf '%b' "${FAKE_CONSOLE:-}"
if [[ -n ${FAKE_HANG:-} ]]; then exec sleep 60; fi
exit "${FAKE_STATUS:-0}"
"#;

struct Fake {
    dir: PathBuf,
}

impl Fake {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fake-qemu-{name}"));
        fs::create_dir_all(&dir).unwrap();
        let qemu = dir.join("qemu");
        fs::write(&qemu, FAKE_QEMU).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn run(&self, bootargs: &str, env: &[(&str, &str)]) -> RunOutput {
        let qemu = self.dir.join("qemu");
        let mut cfg = RunConfig::new(&qemu, bootargs);
        cfg.echo = false;
        cfg.timeout = Duration::from_secs(20);
        cfg.env = [
            ("QEMU", qemu.to_str().unwrap()),
            ("FAKE_ARGS", self.args_file().to_str().unwrap()),
        ]
        .iter()
        .chain(env)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        qemu::run(&harness::repo_root(), &cfg).unwrap()
    }

    fn args_file(&self) -> PathBuf {
        self.dir.join("args")
    }

    /// The arguments QEMU got, one per element.
    fn args(&self) -> Vec<String> {
        fs::read_to_string(self.args_file())
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }
}

fn has_pair(args: &[String], a: &str, b: &str) -> bool {
    args.windows(2).any(|w| w[0] == a && w[1] == b)
}

#[test]
fn passing_run_and_the_machine_command_line() {
    let fake = Fake::new("pass");
    let out = fake.run(
        "ktest=mm:: smmu.strtab=2level",
        &[(
            "FAKE_CONSOLE",
            "booting\\r\\ntest mm::a ... ok\\r\\n1 passed, 0 failed\\r\\n",
        )],
    );
    assert_eq!(out.end, RunEnd::Exited(0));
    let v = verdict::judge(&console::parse(&out.console), out.end);
    assert!(v.passed(), "{v}");
    assert_eq!(v.tests.len(), 1);

    let args = fake.args();
    assert!(
        has_pair(&args, "-M", "virt,iommu=smmuv3,gic-version=3"),
        "{args:?}"
    );
    assert!(has_pair(&args, "-cpu", "max"));
    assert!(has_pair(&args, "-smp", "2"));
    assert!(has_pair(
        &args,
        "-device",
        "edu,dma_mask=0xffffffffffffffff"
    ));
    assert!(has_pair(&args, "-nic", "none"));
    assert!(args.iter().any(|a| a == "-semihosting"));
    assert!(has_pair(&args, "-icount", "shift=7,sleep=off"));
    assert!(has_pair(&args, "-append", "ktest=mm:: smmu.strtab=2level"));
    assert!(!args.iter().any(|a| a == "-trace" || a == "-S"));
}

#[test]
fn environment_switches() {
    let fake = Fake::new("env");
    let trace = fake.dir.join("smmu.log");
    fake.run(
        "ktest",
        &[
            ("QEMU_ICOUNT", "off"),
            ("QEMU_TRACE_FILE", trace.to_str().unwrap()),
            ("QEMU_EXTRA_ARGS", "-d unimp -monitor none"),
        ],
    );
    let args = fake.args();
    assert!(!args.iter().any(|a| a == "-icount"), "{args:?}");
    assert!(has_pair(&args, "-trace", "smmu*"));
    assert!(has_pair(&args, "-d", "guest_errors"));
    assert!(has_pair(&args, "-D", trace.to_str().unwrap()));
    assert!(args.ends_with(&[
        "-d".into(),
        "unimp".into(),
        "-monitor".into(),
        "none".into()
    ]));

    fake.run("ktest", &[("QEMU_ICOUNT", "4")]);
    assert!(has_pair(&fake.args(), "-icount", "shift=4,sleep=off"));
}

#[test]
fn failing_test_and_status_pass_through() {
    let fake = Fake::new("fail");
    let out = fake.run(
        "ktest",
        &[
            (
                "FAKE_CONSOLE",
                "    left 1, right 2\\ntest a::b ... FAILED\\n0 passed, 1 failed\\n",
            ),
            ("FAKE_STATUS", "1"),
        ],
    );
    assert_eq!(out.end, RunEnd::Exited(1));
    let v = verdict::judge(&console::parse(&out.console), out.end);
    assert!(!v.passed());
    let failed: Vec<_> = v.failed_tests().collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].name, "a::b");
    assert_eq!(failed[0].reasons, ["left 1, right 2"]);
}

#[test]
fn hard_timeout_kills_qemu() {
    let fake = Fake::new("timeout");
    let out = fake.run(
        "ktest",
        &[
            ("FAKE_CONSOLE", "test a::x ... ok\\n"),
            ("FAKE_HANG", "1"),
            ("QEMU_TIMEOUT", "1"),
        ],
    );
    assert!(matches!(out.end, RunEnd::TimedOut(_)), "{:?}", out.end);
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
    assert!(out.stderr.contains("timed out after 1 s"), "{}", out.stderr);
    let v = verdict::judge(&console::parse(&out.console), out.end);
    assert!(!v.passed());
    assert_eq!(v.tests.len(), 1, "the console before the hang is kept");
}

#[test]
fn icount_deadlock_is_detected_without_waiting_for_the_timeout() {
    let fake = Fake::new("deadlock");
    let out = fake.run(
        "ktest",
        &[
            ("FAKE_CONSOLE", "test a::x ... ok\\n"),
            (
                "FAKE_STDERR",
                "qemu-system-aarch64: warning: icount sleep disabled and no active timers",
            ),
            ("FAKE_HANG", "1"),
        ],
    );
    assert_eq!(out.end, RunEnd::Deadlock);
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
}
