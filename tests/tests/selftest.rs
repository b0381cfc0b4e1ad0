//! The harness self-test: boot an image with deliberately failing on-target tests (feature
//! `harness-selftest`) and check that the harness reports failure and names them. Proves the
//! harness can fail. Boots QEMU, so scripts/test runs it with `--ignored`.

use harness::{
    build,
    console::Fatal,
    suites::{self, Options},
    verdict::{Failure, Verdict},
};

/// Build the self-test image and run the on-target tests matching `filter` on the default
/// machine.
fn run_selftest_image(filter: &str) -> Verdict {
    let root = harness::repo_root();
    let opts = Options {
        filter: filter.into(),
        features: vec!["harness-selftest".into()],
        ..Options::default()
    };
    let features: Vec<&str> = opts.features.iter().map(String::as_str).collect();
    let kernel = build::build_kernel(&root, &features).expect("build the image");
    let suite = suites::find("default").expect("the default suite");
    suites::run_suite(&root, &kernel, suite, "", &[], &opts)
        .expect("boot QEMU")
        .verdict
}

#[test]
#[ignore = "boots QEMU; run by scripts/test"]
fn harness_reports_the_deliberately_failing_on_target_tests() {
    let v = &run_selftest_image("harness_selftest");

    assert!(!v.passed(), "the harness passed a run of failing tests");
    let failed: Vec<_> = v.failed_tests().collect();
    assert!(!failed.is_empty(), "no failed test named: {v}");
    for t in &failed {
        assert!(
            t.name.contains("harness_selftest"),
            "unexpected failed test {}",
            t.name
        );
        assert!(!t.reasons.is_empty(), "no reason reported for {}", t.name);
    }
    for f in &v.failures {
        assert!(
            !matches!(
                f,
                Failure::TimedOut(_) | Failure::Deadlock | Failure::Fatal(Fatal::BootError(_))
            ),
            "the self-test image did not run its tests: {f}"
        );
    }
}

#[test]
#[ignore = "boots QEMU; run by scripts/test"]
fn harness_reports_an_unexpected_exception_with_its_decoded_report() {
    let v = &run_selftest_image("exception_selftest");
    assert!(
        !v.passed(),
        "the harness passed a run that ended in an exception"
    );
    let report = v
        .failures
        .iter()
        .find_map(|f| match f {
            Failure::Fatal(Fatal::Exception { report, .. }) => Some(report.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no exception failure reported: {v}"));
    assert!(
        report.contains("translation fault") && report.contains("0x12345000"),
        "the report does not decode the abort: {report}"
    );
}
