//! The microVM's configuration: the `vmm run` flags and the same settings as a JSON file.
//! Everything the user can get wrong is checked here, before any KVM object exists.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::boot::cpuid::CpuTemplate;
use crate::memory::layout;

/// Most vCPUs a VM may have: APIC IDs are 8 bits in the MADT and 0xFF is broadcast.
pub const MAX_VCPUS: u8 = 254;
/// Longest kernel command line (Linux's x86 COMMAND_LINE_SIZE).
pub const MAX_CMDLINE_LEN: usize = 2048;
/// Default memory size.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// Errors in the configuration: all of them are the user's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid JSON for a VM config.
    #[error("config file {path} is not a valid VM config")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A size that does not parse.
    #[error("invalid size `{0}`: expected a number of bytes with an optional K, M, G or T suffix")]
    Size(String),
    /// Memory below the minimum.
    #[error("memory size {0} is too small: the minimum is {min} MiB", min = layout::MIN_MEMORY >> 20)]
    MemoryTooSmall(ByteSize),
    /// Memory above the maximum.
    #[error("memory size {0} is too large: the maximum is {max} GiB", max = layout::MAX_MEMORY >> 30)]
    MemoryTooLarge(ByteSize),
    /// Memory that is not a whole number of pages.
    #[error("memory size {0} is not a multiple of 4 KiB")]
    MemoryUnaligned(ByteSize),
    /// A vCPU count out of range.
    #[error("{0} vCPUs requested: the count must be between 1 and {MAX_VCPUS}")]
    Vcpus(u32),
    /// An unknown CPU template name.
    #[error("unknown CPU template `{0}`: known templates are {known}", known = CpuTemplate::NAMES.join(", "))]
    CpuTemplate(String),
    /// A command line that Linux would truncate.
    #[error("kernel command line is {0} bytes long: the maximum is {max}", max = MAX_CMDLINE_LEN - 1)]
    CmdlineTooLong(usize),
    /// A command line with a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Too many root ports.
    #[error(
        "{0} PCIe root ports requested: at most {MAX_ROOT_PORTS} fit on bus 0 \
         ({max_iommu} with --iommu, which takes device 31)",
        max_iommu = MAX_ROOT_PORTS - 1
    )]
    RootPorts(u32),
    /// A malformed --net.
    #[error("invalid --net: {0}")]
    Net(String),
    /// A malformed --vf.
    #[error("invalid --vf: {0}")]
    Vf(String),
    /// A malformed MAC address.
    #[error("invalid MAC address `{0}`: expected six hex bytes like 52:54:00:12:34:56, unicast")]
    Mac(String),
    /// More PCI devices than root ports.
    #[error("{devices} PCI devices need as many root ports, but the VM has {ports}")]
    NotEnoughPorts {
        /// Devices.
        devices: usize,
        /// Ports.
        ports: u8,
    },
}

/// A size in bytes, written as `256M`, `1G`, `4096`...
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::Size(s.to_string());
        let t = s.trim();
        let t = t.strip_suffix(['b', 'B']).unwrap_or(t);
        let t = t.strip_suffix(['i']).unwrap_or(t);
        let (digits, shift) = match t.char_indices().last() {
            Some((i, 'k' | 'K')) => (&t[..i], 10),
            Some((i, 'm' | 'M')) => (&t[..i], 20),
            Some((i, 'g' | 'G')) => (&t[..i], 30),
            Some((i, 't' | 'T')) => (&t[..i], 40),
            _ => (t, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if b >= 1 << shift && b.is_multiple_of(1 << shift) {
                return write!(f, "{} {unit}", b >> shift);
            }
        }
        write!(f, "{b} bytes")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The settings of `vmm run`, as a JSON file holds them (every field optional).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfigFile {
    /// Kernel image (ELF vmlinux or bzImage).
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    pub vcpus: Option<u32>,
    /// Guest memory size.
    pub memory: Option<ByteSize>,
    /// CPU template name.
    pub cpu_template: Option<String>,
    /// Path of the API socket.
    pub api_socket: Option<PathBuf>,
    /// Number of PCIe root ports (each a hotplug slot).
    pub pcie_root_ports: Option<u32>,
    /// virtio-net devices.
    pub net: Option<Vec<NetSpec>>,
    /// Virtual Functions of an SR-IOV adapter served over vfio-user (nicd).
    pub vf: Option<Vec<VfSpec>>,
    /// A virtio-iommu on bus 0 translating for every root-port bus.
    pub iommu: Option<bool>,
}

/// A virtio-net device as the CLI (`socket=PATH,mac=MAC` or `tap=NAME,mac=MAC`) or the
/// config file (`{"socket": PATH, "mac": MAC}`) gives it.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// A unix seqpacket socket to connect to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub socket: Option<PathBuf>,
    /// A TAP device to open.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tap: Option<String>,
    /// nicd's synthetic socket: a synthetic port on the adapter's default VPort.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nicd: Option<PathBuf>,
    /// The MAC address, `xx:xx:xx:xx:xx:xx`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mac: Option<String>,
    /// Offer VIRTIO_NET_F_STANDBY: the failover standby of the guest's VF (same MAC).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub standby: bool,
    /// For a standby: whether the vmm gives the guest a VF again after nicd was away
    /// (`auto`, the default) or leaves it on the synthetic path (`off`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reattach: Option<Reattach>,
}

/// What the vmm does when nicd comes back after the guest lost its VF with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reattach {
    /// Claim a free VF and hot-add it (the failover attach), retrying with backoff.
    #[default]
    Auto,
    /// Nothing: the guest stays on its synthetic path until told otherwise.
    Off,
}

impl std::fmt::Display for Reattach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reattach::Auto => "auto",
            Reattach::Off => "off",
        })
    }
}

impl FromStr for NetSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let mut spec = NetSpec::default();
        for part in s.split(',') {
            let bad = || ConfigError::Net(format!("`{part}` in `{s}`"));
            if part == "standby" {
                spec.standby = true;
                continue;
            }
            let (key, value) = part.split_once('=').ok_or_else(bad)?;
            if value.is_empty() {
                return Err(bad());
            }
            match key {
                "socket" => spec.socket = Some(PathBuf::from(value)),
                "tap" => spec.tap = Some(value.to_string()),
                "nicd" => spec.nicd = Some(PathBuf::from(value)),
                "mac" => spec.mac = Some(value.to_string()),
                "reattach" => {
                    spec.reattach = Some(match value {
                        "auto" => Reattach::Auto,
                        "off" => Reattach::Off,
                        _ => return Err(bad()),
                    });
                }
                _ => return Err(bad()),
            }
        }
        Ok(spec)
    }
}

/// A MAC address.
pub type Mac = [u8; 6];

/// Parses `xx:xx:xx:xx:xx:xx`; rejects multicast addresses (a NIC's own address is
/// unicast).
pub fn parse_mac(s: &str) -> Result<Mac, ConfigError> {
    let bad = || ConfigError::Mac(s.to_string());
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(bad());
    }
    Ok(mac)
}

/// A Virtual Function to assign, as the CLI (`socket=PATH`) or the config file
/// (`{"socket": PATH}`) gives it: the vfio-user socket nicd serves the VF on.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VfSpec {
    /// The VF's vfio-user socket.
    pub socket: PathBuf,
}

impl FromStr for VfSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let mut socket = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("socket", v)) if !v.is_empty() && socket.is_none() => {
                    socket = Some(PathBuf::from(v));
                }
                _ => return Err(ConfigError::Vf(format!("`{part}` in `{s}`"))),
            }
        }
        socket
            .map(|socket| VfSpec { socket })
            .ok_or_else(|| ConfigError::Vf(format!("`{s}`: give socket=PATH")))
    }
}

/// Where a virtio-net device's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// A unix seqpacket socket.
    Socket(PathBuf),
    /// A TAP device.
    Tap(String),
    /// A synthetic port of nicd (its synthetic socket).
    Nicd(PathBuf),
}

/// A checked virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The backend.
    pub backend: NetBackendConfig,
    /// The MAC address.
    pub mac: Mac,
    /// Offers VIRTIO_NET_F_STANDBY.
    pub standby: bool,
    /// For a standby of nicd: the VF re-attach policy.
    pub reattach: Reattach,
}

impl NetSpec {
    /// Checks the spec; `index` numbers the default MAC.
    pub fn check(self, index: usize) -> Result<NetConfig, ConfigError> {
        let backend = match (self.socket, self.tap, self.nicd) {
            (Some(p), None, None) => NetBackendConfig::Socket(p),
            (None, Some(t), None) if !t.is_empty() && t.len() < 16 => NetBackendConfig::Tap(t),
            (None, Some(t), None) => {
                return Err(ConfigError::Net(format!("bad TAP name `{t}`")));
            }
            (None, None, Some(p)) => NetBackendConfig::Nicd(p),
            _ => {
                return Err(ConfigError::Net(
                    "give exactly one of socket=PATH, tap=NAME or nicd=PATH".into(),
                ));
            }
        };
        if self.reattach.is_some()
            && !(self.standby && matches!(backend, NetBackendConfig::Nicd(_)))
        {
            return Err(ConfigError::Net(
                "reattach= is for a standby on nicd: nicd=PATH,standby,reattach=auto|off".into(),
            ));
        }
        let mac = match self.mac {
            Some(m) => parse_mac(&m)?,
            None => default_mac(index),
        };
        Ok(NetConfig {
            backend,
            mac,
            standby: self.standby,
            reattach: self.reattach.unwrap_or_default(),
        })
    }
}

/// The default MAC of the net device numbered `index`: a locally administered address,
/// 52:54:00 followed by index + 1 in 24 bits. The count skips 0 as it wraps, so 2^24 - 1
/// devices in a row (hot-added and removed over a VM's life) get distinct addresses.
fn default_mac(index: usize) -> Mac {
    let [.., x, y, z] = (index % 0xff_ffff + 1).to_be_bytes();
    [0x52, 0x54, 0x00, x, y, z]
}

impl VmConfigFile {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// `self` with every field that `over` sets replaced (command-line flags win over the
    /// file).
    pub fn merged_with(self, over: VmConfigFile) -> VmConfigFile {
        VmConfigFile {
            kernel: over.kernel.or(self.kernel),
            initrd: over.initrd.or(self.initrd),
            cmdline: over.cmdline.or(self.cmdline),
            vcpus: over.vcpus.or(self.vcpus),
            memory: over.memory.or(self.memory),
            cpu_template: over.cpu_template.or(self.cpu_template),
            api_socket: over.api_socket.or(self.api_socket),
            pcie_root_ports: over.pcie_root_ports.or(self.pcie_root_ports),
            net: over.net.or(self.net),
            vf: over.vf.or(self.vf),
            iommu: over.iommu.or(self.iommu),
        }
    }
}

/// Which kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A kernel the user named.
    User(PathBuf),
    /// The default test guest (no `--kernel` given).
    DefaultImage(PathBuf),
}

impl KernelSource {
    /// The kernel image path.
    pub fn path(&self) -> &Path {
        match self {
            KernelSource::User(p) | KernelSource::DefaultImage(p) => p,
        }
    }
}

/// A checked VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: KernelSource,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs (1..=254).
    pub vcpus: u8,
    /// Guest memory in bytes.
    pub memory: u64,
    /// The CPU template; `None` picks one for the host.
    pub cpu_template: Option<CpuTemplate>,
    /// Path of the API socket.
    pub api_socket: Option<PathBuf>,
    /// Number of PCIe root ports.
    pub pcie_root_ports: u8,
    /// virtio-net devices, each in its own root port.
    pub net: Vec<NetConfig>,
    /// VFs, each in its own root port after the virtio-net devices.
    pub vf: Vec<VfSpec>,
    /// Whether the machine has a virtio-iommu (at 00:1f.0).
    pub iommu: bool,
}

/// Default number of PCIe root ports.
pub const DEFAULT_ROOT_PORTS: u8 = 4;
/// Most PCIe root ports (devices 1..=31 on bus 0).
pub const MAX_ROOT_PORTS: u8 = 31;

/// Where the project's guest images are: `$VMM_GUEST_IMAGES`, else guest-images/out of the
/// source tree this binary was built from.
pub fn guest_images_dir() -> PathBuf {
    std::env::var_os("VMM_GUEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/out"))
}

/// The image booted when no kernel is given.
pub const DEFAULT_KERNEL: &str = "testguest.elf";
/// The command line of the default image.
pub const DEFAULT_CMDLINE: &str = "testguest.scenario=boot,smp,timer,acpi";

impl TryFrom<VmConfigFile> for VmConfig {
    type Error = ConfigError;

    fn try_from(f: VmConfigFile) -> Result<Self, ConfigError> {
        let (kernel, default_cmdline) = match f.kernel {
            Some(p) => (KernelSource::User(p), ""),
            None => (
                KernelSource::DefaultImage(guest_images_dir().join(DEFAULT_KERNEL)),
                DEFAULT_CMDLINE,
            ),
        };
        let cmdline = f.cmdline.unwrap_or_else(|| default_cmdline.to_string());
        if cmdline.len() >= MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(cmdline.len()));
        }
        if cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        let vcpus = f.vcpus.unwrap_or(1);
        let vcpus = u8::try_from(vcpus)
            .ok()
            .filter(|v| (1..=MAX_VCPUS).contains(v))
            .ok_or(ConfigError::Vcpus(vcpus))?;
        let memory = f.memory.unwrap_or(ByteSize(DEFAULT_MEMORY));
        if memory.0 < layout::MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(memory));
        }
        if memory.0 > layout::MAX_MEMORY {
            return Err(ConfigError::MemoryTooLarge(memory));
        }
        if !memory.0.is_multiple_of(4096) {
            return Err(ConfigError::MemoryUnaligned(memory));
        }
        let cpu_template = f
            .cpu_template
            .map(|name| name.parse().map_err(|_| ConfigError::CpuTemplate(name)))
            .transpose()?;
        let ports = f.pcie_root_ports.unwrap_or(u32::from(DEFAULT_ROOT_PORTS));
        let pcie_root_ports = u8::try_from(ports)
            .ok()
            .filter(|p| *p <= MAX_ROOT_PORTS)
            .ok_or(ConfigError::RootPorts(ports))?;
        let net = f
            .net
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, n)| n.check(i))
            .collect::<Result<Vec<_>, _>>()?;
        let iommu = f.iommu.unwrap_or(false);
        if iommu && pcie_root_ports >= MAX_ROOT_PORTS {
            return Err(ConfigError::RootPorts(u32::from(pcie_root_ports)));
        }
        let vf = f.vf.unwrap_or_default();
        if net.len() + vf.len() > usize::from(pcie_root_ports) {
            return Err(ConfigError::NotEnoughPorts {
                devices: net.len() + vf.len(),
                ports: pcie_root_ports,
            });
        }
        Ok(VmConfig {
            kernel,
            initrd: f.initrd,
            cmdline,
            vcpus,
            memory: memory.0,
            cpu_template,
            api_socket: f.api_socket,
            pcie_root_ports,
            net,
            vf,
            iommu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let ok = [
            ("4096", 4096),
            ("256M", 256 << 20),
            ("256MiB", 256 << 20),
            ("1G", 1 << 30),
            ("2g", 2 << 30),
            ("64k", 64 << 10),
            ("1T", 1 << 40),
        ];
        for (s, v) in ok {
            assert_eq!(s.parse::<ByteSize>().unwrap(), ByteSize(v), "{s}");
        }
        for s in [
            "",
            "M",
            "-1M",
            "1.5G",
            "12Q",
            "99999999999999999999G",
            "1 G",
        ] {
            assert!(s.parse::<ByteSize>().is_err(), "{s}");
        }
        assert_eq!(ByteSize(256 << 20).to_string(), "256 MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000 bytes");
    }

    fn file(json: &str) -> VmConfigFile {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn json_file_and_merge() {
        let f = file(r#"{"kernel":"k","vcpus":2,"memory":"512M","cmdline":"a"}"#);
        let cli = VmConfigFile {
            vcpus: Some(4),
            ..Default::default()
        };
        let c = VmConfig::try_from(f.merged_with(cli)).unwrap();
        assert_eq!(c.vcpus, 4);
        assert_eq!(c.memory, 512 << 20);
        assert_eq!(c.cmdline, "a");
        assert_eq!(c.kernel, KernelSource::User("k".into()));
        assert_eq!(
            file(r#"{"memory": 33554432}"#).memory,
            Some(ByteSize(32 << 20))
        );
        assert!(serde_json::from_str::<VmConfigFile>(r#"{"vcpu": 1}"#).is_err());
        assert!(serde_json::from_str::<VmConfigFile>(r#"{"memory": "lots"}"#).is_err());
    }

    #[test]
    fn net_specs() {
        let n: NetSpec = "socket=/tmp/s,mac=52:54:00:ab:cd:ef".parse().unwrap();
        let c = n.check(0).unwrap();
        assert_eq!(c.backend, NetBackendConfig::Socket("/tmp/s".into()));
        assert_eq!(c.mac, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        let t: NetSpec = "tap=tap0".parse().unwrap();
        assert_eq!(t.check(2).unwrap().mac, [0x52, 0x54, 0, 0, 0, 3]);
        for bad in ["", "socket", "socket=", "tap=a,color=red"] {
            assert!(bad.parse::<NetSpec>().is_err(), "{bad}");
        }
        // Parses, but names no backend and a bad MAC.
        let no_backend: NetSpec = "mac=1".parse().unwrap();
        assert!(no_backend.check(0).is_err());
        for bad in [
            "52:54:00:00:00",
            "52-54-00-00-00-01",
            "zz:54:00:00:00:01",
            "03:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        let long: NetSpec = "tap=abcdefghijklmnopq".parse().unwrap();
        assert!(long.check(0).is_err());
    }

    /// The n-th device's default MAC counts on in the last three bytes: no wrap (or
    /// overflow) after 255 devices, and the count skips 0 when it wraps after 2^24 - 1.
    #[test]
    fn default_macs_count_in_24_bits() {
        assert_eq!(default_mac(0), [0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(default_mac(254), [0x52, 0x54, 0, 0, 0, 0xff]);
        assert_eq!(default_mac(255), [0x52, 0x54, 0, 0, 1, 0]);
        assert_eq!(default_mac(256), [0x52, 0x54, 0, 0, 1, 1]);
        assert_eq!(default_mac(0xff_fffe), [0x52, 0x54, 0, 0xff, 0xff, 0xff]);
        assert_eq!(default_mac(0xff_ffff), [0x52, 0x54, 0, 0, 0, 1]);
        let t: NetSpec = "tap=tap0".parse().unwrap();
        assert_eq!(t.check(255).unwrap().mac, [0x52, 0x54, 0, 0, 1, 0]);
    }

    #[test]
    fn defaults_boot_the_test_guest() {
        let c = VmConfig::try_from(VmConfigFile::default()).unwrap();
        assert!(matches!(c.kernel, KernelSource::DefaultImage(_)));
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        assert_eq!((c.vcpus, c.memory), (1, DEFAULT_MEMORY));
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            r#"{"vcpus":0}"#,
            r#"{"vcpus":255}"#,
            r#"{"vcpus":4294967295}"#,
            r#"{"memory":"1M"}"#,
            r#"{"memory":"4T"}"#,
            r#"{"memory":4097}"#,
            r#"{"cpu_template":"nope"}"#,
            r#"{"pcie_root_ports":32}"#,
            r#"{"net":[{"mac":"52:54:00:00:00:01"}]}"#,
            r#"{"net":[{"socket":"/s","tap":"t"}]}"#,
            r#"{"net":[{"socket":"/s","mac":"01:00:00:00:00:01"}]}"#,
            r#"{"net":[{"socket":"/s"}],"pcie_root_ports":0}"#,
            r#"{"iommu":true,"pcie_root_ports":31}"#,
        ];
        for json in bad {
            assert!(VmConfig::try_from(file(json)).is_err(), "{json}");
        }
        let long = VmConfigFile {
            cmdline: Some("x".repeat(MAX_CMDLINE_LEN)),
            ..Default::default()
        };
        assert!(matches!(
            VmConfig::try_from(long),
            Err(ConfigError::CmdlineTooLong(_))
        ));
    }
}
