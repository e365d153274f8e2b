//! The integration-test harness: finds the built `vmm` and guest images, spawns VMs, reads
//! their serial output for markers (waiting on output, never sleeping), and implements the
//! skip policy.
//!
//! Skip policy: a test that cannot run prints `SKIP: <reason>` and returns. With
//! `VMM_TESTS_STRICT=1` (CI) it panics instead, unless the reason is one the CI machine
//! cannot meet by design ([`SkipKind::HostLimit`], e.g. Linux user space on PVM).

pub mod cpio;
pub mod nested;
pub mod net;
pub mod nicd;
pub mod peer;
pub mod qemu;
pub mod vfio_client;
pub mod vm;

pub use peer::{PeerMode, SeqpacketPeer, hold_connections};
pub use vm::{Output, RunArgs, VmProcess};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Why a test cannot run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipKind {
    /// Something CI must provide (KVM, an image): fails under `VMM_TESTS_STRICT=1`.
    Missing,
    /// A limit of this kind of host that CI shares (PVM cannot run Linux user space).
    HostLimit,
}

/// Whether `VMM_TESTS_STRICT=1`.
pub fn strict() -> bool {
    std::env::var("VMM_TESTS_STRICT").is_ok_and(|v| v == "1")
}

/// Prints the skip line, or panics under strict mode for [`SkipKind::Missing`].
pub fn skip(kind: SkipKind, reason: &str) {
    if kind == SkipKind::Missing && strict() {
        panic!("VMM_TESTS_STRICT=1 and this test cannot run: {reason}");
    }
    // Straight to the process's stderr, past libtest's capture, so skips show in CI logs.
    let _ = writeln!(std::io::stderr(), "SKIP: {reason}");
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory holding the binaries of this build (target/<profile>).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>, or target/<profile>/<binary> for the
    // `nested-kvm` tool.
    let dir = exe.parent().expect("the executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The cargo profile of this build (`dev` for target/debug).
pub fn profile() -> String {
    let dir = bin_dir();
    match dir.file_name().and_then(|n| n.to_str()) {
        None | Some("debug") => "dev".into(),
        Some(p) => p.into(),
    }
}

/// A prebuilt binary named by environment variable `var`, if set (e.g. `VMM_BIN` inside
/// the nested KVM host, where there is no cargo and no source tree).
fn prebuilt(var: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(var)?);
    assert!(p.exists(), "{var}={} does not exist", p.display());
    Some(p)
}

/// Builds the workspace binaries the tests run (`vmm`, `testguest`) with the profile and
/// target directory of this test binary, once per test process. `cargo test` builds only
/// test targets, so without this a fresh checkout would have no `vmm`, and an edited tree
/// a stale one. Cargo holds no build lock while tests run, and a build that is up to date
/// is a no-op.
fn ensure_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let dir = bin_dir();
        let profile = profile();
        let target_dir = dir.parent().unwrap_or(&dir).to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(repo_root())
            // The whole workspace, as `cargo test --workspace` resolves it: with a narrower
            // package set, features unify differently and dependencies build a second time.
            .args(["build", "--quiet", "--workspace", "--bins"])
            .args(["--profile", &profile])
            .arg("--target-dir")
            .arg(&target_dir)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cargo build of vmm and testguest failed: {status}"))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A binary of the workspace, built for these tests.
fn built(name: &str) -> PathBuf {
    ensure_built();
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing after building it", p.display());
    p
}

/// The `vmm` binary: `$VMM_BIN` if set, else the one built alongside these tests.
pub fn vmm_binary() -> PathBuf {
    prebuilt("VMM_BIN").unwrap_or_else(|| built("vmm"))
}

/// The `nicd` binary: `$NICD_BIN` if set, else the one built alongside these tests.
pub fn nicd_binary() -> PathBuf {
    prebuilt("NICD_BIN").unwrap_or_else(|| built("nicd"))
}

/// The `vmctl` binary: `$VMCTL_BIN` if set, else the one built alongside these tests.
pub fn vmctl_binary() -> PathBuf {
    prebuilt("VMCTL_BIN").unwrap_or_else(|| built("vmctl"))
}

/// Runs `vmctl --socket SOCK ARGS...`: its exit code and the answer it printed, decoded
/// as the API's typed response (an error response carrying vmctl's stderr when it printed
/// none, e.g. it could not connect).
pub fn vmctl(sock: &Path, args: &[&str]) -> (i32, vmm::api::Response) {
    let out = Command::new(vmctl_binary())
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .expect("run vmctl");
    let answer = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        vmm::api::Response::error(format!(
            "vmctl printed no answer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    });
    (out.status.code().unwrap_or(-1), answer)
}

/// A path in the temp directory that no other test (of this process or another) uses:
/// `vmm-test-PID-N-NAME`.
pub fn temp_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("vmm-test-{}-{n}-{name}", std::process::id()))
}

/// Whether this process may create TAP devices (CAP_NET_ADMIN and /dev/net/tun); prints
/// the skip line and returns false when not.
pub fn require_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let reason = if cap_eff & (1 << CAP_NET_ADMIN) == 0 {
        Some("creating a TAP device needs CAP_NET_ADMIN (run as root)".to_string())
    } else if !Path::new("/dev/net/tun").exists() {
        Some("there is no /dev/net/tun".to_string())
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) => {
            skip(SkipKind::Missing, &r);
            false
        }
    }
}

/// The test guest ELF: `$VMM_TESTGUEST` if set, else the one built alongside these tests
/// (the workspace member `testguest`).
pub fn testguest_elf() -> PathBuf {
    prebuilt("VMM_TESTGUEST").unwrap_or_else(|| built("testguest"))
}

/// Where guest-images/build.sh puts the Linux images.
pub fn guest_images_out() -> PathBuf {
    std::env::var_os("VMM_GUEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("guest-images/out"))
}

/// Why KVM is unusable here, if it is.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm is not usable: {e}")),
    }
}

/// Whether the host's KVM is PVM (software-assisted, nested): guest ring 0 is emulated.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
        && !std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Checks KVM; prints the skip line and returns false when the test must not run.
pub fn require_kvm() -> bool {
    match kvm_unavailable() {
        None => true,
        Some(reason) => {
            skip(SkipKind::Missing, &reason);
            false
        }
    }
}
