//! nicd: the emulated Intel 82576 SR-IOV adapter as a process of its own. It plays the
//! physical NIC and the PF driver of the management OS at once: the PF card with its SR-IOV
//! capability ([`devices::sriov::pf`]), the NIC switch ([`devices::nic_switch`]) with one
//! VPort per VF and the uplink, and every VF served over vfio-user on its own unix socket
//! ([`vf::VfDevice`] around [`devices::sriov::igbvf`]), to QEMU's `vfio-user-pci` or the
//! vmm. It never opens /dev/kvm. docs/nicd.md describes the model and the choices.
//!
//! - [`vf`]: one VF as a vfio-user device (regions, config space, MSI-X eventfds, DMA).
//! - [`fabric`]: the switch, the uplink and frames in flight, shared by the VFs' TX sinks.
//! - [`adapter`]: the VF ports, NumVFs, mailbox decisions applied to the switch, policy.
//! - [`event_loop`]: the one thread that serves it all.
//! - [`api`]: the management API (`vmctl nic ...`).

pub mod adapter;
pub mod api;
pub mod event_loop;
pub mod fabric;
pub mod synthetic;
pub mod vf;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use devices::nic_switch::{Switch, SwitchConfig};
use devices::pci::PciCard;
use devices::pci::sriov::{CTRL_ARI, SRIOV_CTRL};
use devices::sriov::pf::{PF_DEVFN, PfConfig, PfError, SriovPf};
use devices::sync::lock;
use devices::virtio::net::{NetBackend, SeqpacketBackend, TapBackend};

use adapter::{Adapter, Refusal};
use fabric::{Fabric, Uplink};
use vf::{CtlQueue, ShimFactory};

/// The most VFs an adapter offers (TotalVFs; ARI keeps them on the PF's bus).
pub const MAX_TOTAL_VFS: u16 = 255;

/// The physical port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkSpec {
    /// A TAP device (opened or created, with IFF_VNET_HDR).
    Tap(String),
    /// A unix seqpacket socket to connect to, one frame per message.
    Socket(PathBuf),
    /// No uplink.
    None,
}

impl FromStr for UplinkSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => Ok(Self::Tap(name.into())),
            Some(("socket", path)) if !path.is_empty() => Ok(Self::Socket(path.into())),
            None if s == "none" => Ok(Self::None),
            _ => Err(format!(
                "invalid uplink \"{s}\": expected tap=NAME, socket=PATH or none"
            )),
        }
    }
}

/// How nicd runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicdConfig {
    /// VFs enabled at start.
    pub vfs: u16,
    /// TotalVFs.
    pub total_vfs: u16,
    /// The physical port.
    pub uplink: UplinkSpec,
    /// Where VF k listens, as vf<k>.sock.
    pub socket_dir: PathBuf,
    /// The API socket.
    pub api_socket: PathBuf,
    /// The uplink's line rate in Mbit/s (the 82576's 1000); 0: no wire limit.
    pub uplink_mbps: u32,
}

/// Why nicd could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NicdError {
    /// The uplink could not be opened.
    #[error("cannot open the uplink {0}")]
    Uplink(String, #[source] std::io::Error),
    /// The PF card could not be built.
    #[error("cannot build the PF")]
    Pf(#[source] PfError),
    /// The VFs could not be enabled.
    #[error("cannot enable {0} VFs: {1}")]
    Vfs(u16, Refusal),
    /// The API socket.
    #[error("API socket")]
    Api(#[source] crate::api::ApiError),
    /// The event loop or its descriptors.
    #[error("event loop")]
    EventLoop(#[source] std::io::Error),
    /// The synthetic socket.
    #[error("cannot listen on the synthetic socket")]
    Synthetic(#[source] std::io::Error),
}

fn open_uplink(spec: &UplinkSpec) -> Result<Option<Uplink>, NicdError> {
    let backend: Box<dyn NetBackend> = match spec {
        UplinkSpec::None => return Ok(None),
        UplinkSpec::Tap(name) => Box::new(
            TapBackend::open(name).map_err(|e| NicdError::Uplink(format!("tap={name}"), e))?,
        ),
        UplinkSpec::Socket(path) => Box::new(
            SeqpacketBackend::connect(path)
                .map_err(|e| NicdError::Uplink(format!("socket={}", path.display()), e))?,
        ),
    };
    Ok(Some(Uplink::new(backend)))
}

/// SIGINT/SIGTERM land here: the handler writes the eventfd (async-signal-safe).
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is 8 valid bytes; a bad fd only
        // yields an error.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// Builds the adapter of `cfg`, the PF with its capability, the switch and the VFs.
pub fn build(cfg: &NicdConfig) -> Result<Arc<Mutex<Adapter>>, NicdError> {
    let uplink = open_uplink(&cfg.uplink)?;
    let switch = Switch::new(SwitchConfig {
        total_vfs: cfg.total_vfs,
        uplink_mbps: cfg.uplink_mbps,
        ..SwitchConfig::default()
    });
    let fabric = Arc::new(Mutex::new(Fabric::new(switch, uplink)));
    let ctl = CtlQueue::default();
    let mut pf = SriovPf::new(
        PfConfig {
            total_vfs: cfg.total_vfs,
            vf_bars_prefetchable: true,
        },
        Box::new(ShimFactory(ctl.clone())),
    )
    .map_err(NicdError::Pf)?;
    // nicd's PF driver sets ARI Capable Hierarchy, as Linux does below an ARI-forwarding
    // port, so every VF RID stays on the PF's bus.
    let cap = pf.sriov().offset();
    let ctrl = pf.sriov().control(pf.pf_config());
    pf.config_write(PF_DEVFN, cap + SRIOV_CTRL, &(ctrl | CTRL_ARI).to_le_bytes());
    let adapter = Adapter::new(
        fabric,
        Arc::new(Mutex::new(pf)),
        ctl,
        cfg.socket_dir.clone(),
    );
    let adapter = Arc::new(Mutex::new(adapter));
    lock(&adapter)
        .set_num_vfs(cfg.vfs)
        .map_err(|e| NicdError::Vfs(cfg.vfs, e))?;
    lock(&adapter)
        .listen_synthetic(&cfg.api_socket)
        .map_err(NicdError::Synthetic)?;
    Ok(adapter)
}

/// Descriptors nicd holds with `total_vfs` VFs in use: per VF its listening socket, a
/// client, three MSI-X eventfds and a DMA map or two, plus the loop's own.
pub fn fds_needed(total_vfs: u16) -> u64 {
    u64::from(total_vfs) * 8 + 64
}

/// Lifts the soft open-file limit towards `needed` (at most the hard limit): 255 VFs in use
/// take about 2,000 descriptors, twice the usual soft limit of 1,024.
pub fn raise_fd_limit(needed: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) } != 0 || r.rlim_cur >= needed {
        return;
    }
    let want = needed.min(r.rlim_max);
    if want < needed {
        devices::warn_ratelimited!(
            "nicd: the open-file limit ({}) is below the {needed} descriptors all VFs in use \
             take: clients beyond it will be refused",
            r.rlim_max
        );
    }
    r.rlim_cur = want;
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const r) } != 0 {
        devices::warn_ratelimited!(
            "nicd: cannot raise the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs nicd until SIGTERM or SIGINT; `ready` is called once every socket listens.
pub fn run(cfg: &NicdConfig, ready: impl FnOnce()) -> Result<(), NicdError> {
    raise_fd_limit(fds_needed(cfg.total_vfs));
    let adapter = build(cfg)?;
    let api = crate::api::ApiServer::bind(&cfg.api_socket, api::NicdApi::new(adapter.clone()))
        .map_err(NicdError::Api)?;
    let io = |e: vmm_sys_util::errno::Error| {
        NicdError::EventLoop(std::io::Error::from_raw_os_error(e.errno()))
    };
    let signal = EventFd::new(EFD_NONBLOCK).map_err(NicdError::EventLoop)?;
    SIGNAL_EVENT_FD.store(std::os::fd::AsRawFd::as_raw_fd(&signal), Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal).map_err(io)?;
    }
    let done = Arc::new(AtomicBool::new(false));
    let nicd =
        event_loop::Nicd::new(adapter, api, signal, done.clone()).map_err(NicdError::EventLoop)?;
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(|e| NicdError::EventLoop(std::io::Error::other(format!("{e:?}"))))?;
    em.add_subscriber(Arc::new(Mutex::new(nicd)));
    ready();
    while !done.load(Ordering::SeqCst) {
        if let Err(e) = em.run() {
            SIGNAL_EVENT_FD.store(-1, Ordering::SeqCst);
            return Err(NicdError::EventLoop(std::io::Error::other(format!(
                "{e:?}"
            ))));
        }
    }
    SIGNAL_EVENT_FD.store(-1, Ordering::SeqCst);
    Ok(())
}
