//! VM life cycle with the test guest: JSON config files, the API socket, SIGINT, guest
//! reset, and a guest that never finishes.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tests::{RunArgs, VmProcess, require_kvm, testguest_elf, vmm_binary};

const DEADLINE: Duration = Duration::from_secs(120);

fn spawn(args: &[&OsStr]) -> VmProcess {
    VmProcess::spawn(&vmm_binary(), args)
}

fn idle_vm(vcpus: u32, extra: &[&OsStr]) -> VmProcess {
    let mut vm = RunArgs::testguest("idle", vcpus, "256M")
        .with(extra)
        .spawn();
    let parked = vm.wait_for_stdout(DEADLINE, |l| l.starts_with("TESTGUEST INFO idle"));
    assert!(
        parked.is_some(),
        "idle guest never parked\n{}",
        vm.transcript()
    );
    vm
}

#[test]
fn config_file_boots() {
    if !require_kvm() {
        return;
    }
    let dir = tests::temp_path("cfg");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("vm.json");
    let config = serde_json::json!({
        "kernel": testguest_elf(),
        "cmdline": "testguest.scenario=boot,acpi testguest.mem=64M",
        "vcpus": 2,
        "memory": "64M",
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut vm = spawn(&["run".as_ref(), "--config".as_ref(), cfg.as_os_str()]);
    let status = vm.wait_exit(DEADLINE).expect("exits");
    let t = vm.transcript();
    assert_eq!(status.code(), Some(0), "{t}");
    assert!(vm.stdout.iter().any(|l| l == "TESTGUEST PASS acpi"), "{t}");
    // A flag overrides the file: 128M no longer matches testguest.mem=64M.
    let mut vm = spawn(&[
        "run".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--memory".as_ref(),
        "128M".as_ref(),
    ]);
    let status = vm.wait_exit(DEADLINE).expect("exits");
    let t = vm.transcript();
    assert_eq!(status.code(), Some(3), "{t}");
    assert!(
        vm.stdout
            .iter()
            .any(|l| l.starts_with("TESTGUEST FAIL boot")),
        "{t}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn api_status_and_garbage() {
    if !require_kvm() {
        return;
    }
    let sock = tests::temp_path("api.sock");
    let mut vm = idle_vm(2, &["--api-socket".as_ref(), sock.as_os_str()]);
    let stream = UnixStream::connect(&sock).expect("API socket accepts");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut ask = |req: &str| {
        w.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    let garbage = ask("{\"action\": \n");
    assert_eq!(garbage["ok"], false);
    let unknown = ask("{\"action\":\"explode\"}\n");
    assert_eq!(unknown["ok"], false);
    assert!(unknown["error"].as_str().unwrap().contains("explode"));
    let status = ask("{\"action\":\"status\"}\n");
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["status"]["state"], "running");
    assert_eq!(status["status"]["vcpus"], 2);
    assert_eq!(status["status"]["memory_bytes"], 256u64 << 20);
    // Pause answers once every vCPU is out of the guest; resume runs them again.
    let running = ask("{\"action\":\"vcpus\"}\n");
    assert_eq!(
        running["ok"], false,
        "registers only while paused: {running}"
    );
    assert!(running["error"].as_str().unwrap().contains("pause"));
    let paused = ask("{\"action\":\"pause\"}\n");
    assert_eq!(paused["status"]["state"], "paused", "{paused}");
    // The registers of a paused VM: the BSP runs the test guest in long mode with paging.
    let regs = ask("{\"action\":\"vcpus\"}\n");
    let vcpus = regs["vcpus"].as_array().expect("vcpus");
    assert_eq!(vcpus.len(), 2, "{regs}");
    let hex = |v: &serde_json::Value| {
        u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    };
    let bsp = &vcpus[0];
    assert_eq!(bsp["index"], 0);
    assert_ne!(hex(&bsp["efer"]) & 0x400, 0, "EFER.LMA: {bsp}");
    assert_eq!(
        hex(&bsp["cr0"]) & 0x8000_0001,
        0x8000_0001,
        "CR0.PE|PG: {bsp}"
    );
    assert_ne!(hex(&bsp["rip"]), 0, "{bsp}");
    assert!(
        bsp["apic_isr"].is_array() && bsp["mp_state"].is_string(),
        "{bsp}"
    );
    let again = ask("{\"action\":\"pause\"}\n");
    assert_eq!(again["ok"], false, "pausing twice is refused: {again}");
    let resumed = ask("{\"action\":\"resume\"}\n");
    assert_eq!(resumed["status"]["state"], "running", "{resumed}");
    // A transcript of a live VM with an API socket carries its registers (for a guest
    // that stopped making progress) and leaves it running.
    let t = vm.transcript();
    assert!(
        t.contains("--- vCPUs (vmctl vcpus) ---") && t.contains("\"cr3\""),
        "{t}"
    );
    assert!(t.contains("--- vmm threads ---\nvmm state="), "{t}");
    assert_eq!(
        ask("{\"action\":\"status\"}\n")["status"]["state"],
        "running"
    );
    // The VM is unharmed by all that.
    vm.signal(libc::SIGTERM);
    let code = vm.wait_exit(DEADLINE).expect("exits").code();
    assert_eq!(code, Some(0), "{}", vm.transcript());
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn sigint_stops_the_vm_cleanly() {
    if !require_kvm() {
        return;
    }
    let mut vm = idle_vm(2, &[]);
    vm.signal(libc::SIGINT);
    let status = vm.wait_exit(DEADLINE).expect("exits after SIGINT");
    let t = vm.transcript();
    assert_eq!(status.code(), Some(0), "{t}");
    assert!(
        vm.stderr.iter().any(|l| l.contains("stopped by signal 2")),
        "{t}"
    );
}

#[test]
fn guest_reset_ends_the_vm() {
    if !require_kvm() {
        return;
    }
    for scenario in ["reset", "reset-i8042", "poweroff"] {
        let mut vm = RunArgs::testguest(scenario, 1, "64M").spawn();
        let status = vm.wait_exit(DEADLINE).expect("exits");
        let t = vm.transcript();
        assert_eq!(status.code(), Some(0), "{scenario}: {t}");
        let want = if scenario == "poweroff" {
            "powered off"
        } else {
            "reset"
        };
        assert!(
            vm.stderr.iter().any(|l| l.contains(want)),
            "{scenario}: {t}"
        );
    }
}
