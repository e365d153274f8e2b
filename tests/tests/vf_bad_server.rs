//! Tier 2: a vfio-user server that misbehaves after bring-up (stops answering, sends
//! garbage) behind `vmm run --vf`: the vCPU that touched the device gets all ones after
//! the reply timeout (or at once), the vmm says why, removes the device from its slot by
//! surprise, and neither hangs (it answers its API) nor panics. The server is devices' toy device served from
//! this process.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use devices::vfio_user::toy::Toy;
use devices::vfio_user::{Server, Socket};
use tests::{RunArgs, VmProcess, require_kvm, temp_path, vmctl};

const DEADLINE: Duration = Duration::from_secs(120);
/// What the vmm sends before the guest runs: VERSION, DEVICE_GET_INFO, the config
/// region's info, the config read, 5 BAR region infos, IRQ info, SET_IRQS, the COMMAND
/// write of the BAR assignment, one DMA_MAP of the guest's RAM.
const BRING_UP: usize = 13;

#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Reads requests, never answers.
    Stall,
    /// Answers the next request with bytes that are no reply.
    Garbage,
}

/// Serves the toy on a socket at a fresh path until bring-up is done, then misbehaves.
fn bad_server(how: Misbehaviour) -> std::path::PathBuf {
    let path = temp_path("bad-vfio-user.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let sock = Socket::new(stream.try_clone().expect("clone"));
        let mut server = Server::new(Toy::new());
        for _ in 0..BRING_UP {
            if server.serve_one(&sock).is_err() {
                return;
            }
        }
        let mut s = stream;
        match how {
            Misbehaviour::Stall => {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
            Misbehaviour::Garbage => {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(&[0x5a; 64]);
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
        }
    });
    path
}

fn run(how: Misbehaviour) -> VmProcess {
    let sock = bad_server(how);
    let api = temp_path("bad-server-api.sock");
    let vf = format!("socket={}", sock.display());
    // The guest walks the PCI topology (touching the VF) and then waits on slot 2 for a
    // hot-add that does not come: alive while the test asks the vmm.
    let mut args = RunArgs::testguest("hotplug", 1, "256M");
    args.cmdline.push_str(" testguest.hotplug_port=2");
    let mut vm = args
        .with(&[
            "--vf".as_ref(),
            vf.as_ref(),
            "--api-socket".as_ref(),
            api.as_os_str(),
        ])
        .spawn();
    let failed = vm.wait_for_stderr(DEADLINE, |l| l.contains("the vfio-user server failed"));
    assert!(failed.is_some(), "{}", vm.transcript());
    let removed = vm.wait_for_stderr(DEADLINE, |l| l.contains("surprise-removed"));
    assert!(removed.is_some(), "{}", vm.transcript());
    // The vmm did not hang: it answers, and says what the slot lost.
    let (code, r) = vmctl(&api, &["device", "list"]);
    assert_eq!(code, 0, "{r:?}\n{}", vm.transcript());
    let slot = &r.slots.expect("slots")[0];
    assert!(slot.device.is_none(), "{slot:?}");
    assert!(
        slot.lost
            .as_deref()
            .is_some_and(|l| l.starts_with("vf0 lost")),
        "{slot:?}"
    );
    vm.kill();
    vm
}

#[test]
fn a_server_that_stops_answering_is_removed_after_the_reply_timeout() {
    if !require_kvm() {
        return;
    }
    let vm = run(Misbehaviour::Stall);
    let t = vm.transcript();
    assert!(
        vm.stderr.iter().any(|l| l.contains("sent nothing for")),
        "the log says the reply timed out\n{t}"
    );
}

#[test]
fn a_server_that_answers_garbage_is_removed_at_once() {
    if !require_kvm() {
        return;
    }
    let vm = run(Misbehaviour::Garbage);
    assert!(
        !vm.stderr.iter().any(|l| l.contains("panicked")),
        "{}",
        vm.transcript()
    );
}
