//! Bad input: every case ends with exit code 2 and a message naming the problem, before
//! any guest runs. These need no KVM.

use std::process::Command;

use tests::{repo_root, vmm_binary};

fn vmm(args: &[&str]) -> (i32, String) {
    let out = Command::new(vmm_binary())
        .args(args)
        .output()
        .expect("spawn vmm");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = tests::temp_path(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn expect_usage_error(args: &[&str], needle: &str) {
    let (code, stderr) = vmm(args);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: `{needle}` not in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.lines().count() <= 6,
        "a short message, not a dump: {stderr}"
    );
}

#[test]
fn missing_kernel() {
    expect_usage_error(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "cannot read kernel /nonexistent/vmlinux",
    );
}

#[test]
fn malformed_kernel() {
    let garbage = temp("garbage", &[0x5a; 8192]);
    let g = garbage.to_str().unwrap();
    expect_usage_error(
        &["run", "--kernel", g],
        "neither an ELF vmlinux nor a bzImage",
    );
    let elf = temp("truncated-elf", b"\x7fELF\x02\x01\x01\0\0\0");
    expect_usage_error(
        &["run", "--kernel", elf.to_str().unwrap()],
        "cannot load kernel",
    );
    let dir = repo_root();
    expect_usage_error(
        &["run", "--kernel", dir.to_str().unwrap()],
        "cannot read kernel",
    );
    std::fs::remove_file(garbage).unwrap();
    std::fs::remove_file(elf).unwrap();
}

#[test]
fn initrd_larger_than_memory() {
    let kernel = tests::testguest_elf();
    let initrd = temp("big-initrd", &vec![0u8; 20 << 20]);
    expect_usage_error(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory",
            "16M",
        ],
        "does not fit in guest RAM",
    );
    std::fs::remove_file(initrd).unwrap();
    expect_usage_error(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            "/nonexistent",
        ],
        "cannot read initrd /nonexistent",
    );
}

#[test]
fn memory_sizes() {
    expect_usage_error(&["run", "--memory", "1M"], "too small");
    expect_usage_error(&["run", "--memory", "lots"], "invalid size `lots`");
    expect_usage_error(&["run", "--memory", "8T"], "too large");
    expect_usage_error(&["run", "--memory", "16777217"], "not a multiple of 4 KiB");
}

#[test]
fn vcpu_counts_and_templates() {
    expect_usage_error(&["run", "--vcpus", "0"], "between 1 and 254");
    expect_usage_error(&["run", "--vcpus", "300"], "between 1 and 254");
    expect_usage_error(&["run", "--vcpus", "two"], "invalid value");
    expect_usage_error(
        &["run", "--cpu-template", "turbo"],
        "unknown CPU template `turbo`",
    );
}

#[test]
fn config_files() {
    expect_usage_error(
        &["run", "--config", "/nonexistent.json"],
        "cannot read config file /nonexistent.json",
    );
    let bad = temp("bad.json", b"{\"vcpus\": 2,");
    expect_usage_error(
        &["run", "--config", bad.to_str().unwrap()],
        "not a valid VM config",
    );
    let unknown = temp("unknown.json", b"{\"cpus\": 2}");
    expect_usage_error(
        &["run", "--config", unknown.to_str().unwrap()],
        "unknown field `cpus`",
    );
    let wrong = temp("wrong.json", b"{\"vcpus\": 0}");
    expect_usage_error(
        &["run", "--config", wrong.to_str().unwrap()],
        "between 1 and 254",
    );
    for f in [bad, unknown, wrong] {
        std::fs::remove_file(f).unwrap();
    }
}

#[test]
fn unknown_flags_and_long_cmdline() {
    expect_usage_error(&["run", "--bogus"], "unexpected argument '--bogus'");
    expect_usage_error(&["fly"], "unrecognized subcommand");
    let long = "x".repeat(4096);
    expect_usage_error(
        &["run", "--cmdline", &long],
        "command line is 4096 bytes long",
    );
}

#[test]
fn help_explains_flags() {
    let out = Command::new(vmm_binary())
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--vcpus",
        "--memory",
        "--cpu-template",
        "--api-socket",
        "--config",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}
