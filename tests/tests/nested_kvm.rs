//! Tier 3 here and in CI: the Linux-guest tests (tests/tests/linux_guest.rs) run inside a
//! nested KVM host, Debian's 6.12 kernel booted as a KVM host under QEMU 11's emulator
//! (TCG, an EPYC CPU with SVM and nested paging emulated), where `/dev/kvm` is kvm_amd,
//! not PVM. The vmm, vmctl, the test binary and the guest images go in as a cpio archive
//! appended to the host's initramfs; the tests run there with `VMM_TESTS_STRICT=1`, so
//! they cannot skip; their output streams back here (`nested| ` lines on stderr).
//!
//! Needs QEMU in its private prefix (guest-images/qemu.sh) and the nested host's images
//! (guest-images/build.sh linux); without them this test prints `SKIP:` (and fails under
//! `VMM_TESTS_STRICT=1`). A run that the emulator or the host's kernel cut short (no
//! console output for the stall limit while the host prints a heartbeat every 10 s, a
//! crashed QEMU, a kernel panic of the host) goes on once in a new host with the tests it
//! had not finished, and says so; a failing test is never retried. See tests/src/nested.rs.

use std::time::Duration;

use tests::nested::{Limits, NestedError, run_linux_tier};
use tests::{SkipKind, skip};

#[test]
fn linux_guest_tests_in_nested_kvm_host() {
    let limits = Limits {
        stall: Duration::from_secs(120),
        deadline: Duration::from_secs(25 * 60),
    };
    let report = match run_linux_tier(&[], limits) {
        Ok(r) => r,
        Err(e @ (NestedError::QemuMissing(_) | NestedError::ImageMissing(_))) => {
            skip(SkipKind::Missing, &e.to_string());
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let summary = report.summary();
    eprintln!("{summary}");
    // The transcript first, the failed tests' own output and the summary last: a log cut
    // to its tail still says what failed and why.
    assert!(
        report.passed(),
        "the Linux-guest tests failed inside the nested KVM host:\n{}\n{}{summary}",
        report.transcript(),
        report.failures()
    );
}
