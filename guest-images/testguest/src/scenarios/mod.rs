//! The scenario registry. A scenario is a named check, run on the BSP in ring 3, that
//! prints exactly one `TESTGUEST PASS <name>` or `TESTGUEST FAIL <name>: <reason>` line
//! (printed here, from its result) and any number of `TESTGUEST INFO <name>: ...` lines.
//!
//! To add one: write `fn run(ctx: &Ctx) -> Result<(), Fail>` in a new module here, and add
//! a line to [`SCENARIOS`]. Hardware helpers and drivers belong in their own top-level
//! modules (serial, acpi, lapic, smp, pcie, virtio_net, igbvf, pciehp, ...), not in the
//! scenario; PCI register names come from `pcie::regs`.

use core::fmt;

use crate::bootparams::BootParams;
use crate::cmdline::Cmdline;

mod acpi;
mod boot;
mod failover;
mod hotplug;
mod ioapic;
mod iommu;
mod lifecycle;
mod pci_enum;
mod smp;
mod timer;
mod vf;
mod virtio_net;

/// A scenario: its name on the command line and its body.
#[derive(Debug)]
pub struct Scenario {
    /// Name, as in `testguest.scenario=NAME`.
    pub name: &'static str,
    /// Body: Ok passes, Err fails with the reason.
    pub run: fn(&Ctx) -> Result<(), Fail>,
}

/// Every scenario, by name.
pub static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot",
        run: boot::run,
    },
    Scenario {
        name: "smp",
        run: smp::run,
    },
    Scenario {
        name: "timer",
        run: timer::run,
    },
    Scenario {
        name: "acpi",
        run: acpi::run,
    },
    Scenario {
        name: "ioapic",
        run: ioapic::run,
    },
    Scenario {
        name: "pci-enum",
        run: pci_enum::run,
    },
    Scenario {
        name: "virtio-net",
        run: virtio_net::run,
    },
    Scenario {
        name: "msix",
        run: virtio_net::msix,
    },
    Scenario {
        name: "net-bench",
        run: virtio_net::bench,
    },
    Scenario {
        name: "vf-net",
        run: vf::net,
    },
    Scenario {
        name: "vf-reflect",
        run: vf::reflect,
    },
    Scenario {
        name: "vf-config",
        run: vf::config,
    },
    Scenario {
        name: "vf-bench",
        run: vf::bench,
    },
    Scenario {
        name: "vf-hotplug",
        run: vf::hotplug,
    },
    Scenario {
        name: "vf-sink",
        run: vf::sink,
    },
    Scenario {
        name: "vf-iommu",
        run: vf::iommu,
    },
    Scenario {
        name: "vf-admin",
        run: vf::admin,
    },
    Scenario {
        name: "failover",
        run: failover::run,
    },
    Scenario {
        name: "hotplug",
        run: hotplug::run,
    },
    Scenario {
        name: "iommu-requests",
        run: iommu::run,
    },
    Scenario {
        name: "iommu-map",
        run: iommu::map_scenario,
    },
    Scenario {
        name: "iommu-fault",
        run: iommu::fault_scenario,
    },
    Scenario {
        name: "iommu-isolation",
        run: iommu::isolation_scenario,
    },
    Scenario {
        name: "idle",
        run: lifecycle::idle,
    },
    Scenario {
        name: "reset",
        run: lifecycle::reset,
    },
    Scenario {
        name: "reset-i8042",
        run: lifecycle::reset_i8042,
    },
    Scenario {
        name: "poweroff",
        run: lifecycle::poweroff,
    },
];

/// What a scenario gets: what the VMM handed over, and a way to print INFO lines.
#[derive(Debug)]
pub struct Ctx {
    /// The running scenario's name.
    pub name: &'static str,
    /// The zero page.
    pub boot_params: BootParams,
    /// The command line.
    pub cmdline: Cmdline,
}

impl Ctx {
    /// Prints `TESTGUEST INFO <name>: <args>`.
    pub fn info(&self, args: fmt::Arguments) {
        crate::println!("TESTGUEST INFO {}: {}", self.name, args);
    }
}

/// Prints an INFO line for the running scenario: `info!(ctx, "format", args...)`.
macro_rules! info {
    ($ctx:expr, $($arg:tt)*) => { $ctx.info(format_args!($($arg)*)) };
}
pub(crate) use info;

/// Why a scenario failed: a one-line reason (truncated if very long).
pub struct Fail {
    buf: [u8; 240],
    len: usize,
}

impl Fail {
    /// A failure with the formatted reason.
    pub fn new(args: fmt::Arguments) -> Self {
        let mut fail = Fail {
            buf: [0; 240],
            len: 0,
        };
        if fmt::Write::write_fmt(&mut fail, args).is_err() {
            // Full: mark the cut.
            fail.len = fail.buf.len() - 3;
            fail.buf[fail.len..].copy_from_slice(b"...");
            fail.len = fail.buf.len();
        }
        fail
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        // write_str only stores whole str pieces that fit, so this is valid UTF-8, except
        // after a cut mid-character, which from_utf8 reports up to.
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl fmt::Write for Fail {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() { Err(fmt::Error) } else { Ok(()) }
    }
}

impl fmt::Debug for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Any displayable error is a reason to fail.
impl<E: fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail::new(format_args!("{e}"))
    }
}

/// `Err(Fail)` with a formatted reason: `return Err(fail!("x is {}", x))`.
macro_rules! fail {
    ($($arg:tt)*) => { $crate::scenarios::Fail::new(format_args!($($arg)*)) };
}
pub(crate) use fail;

/// Fails the scenario with the formatted reason unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err($crate::scenarios::fail!($($arg)*));
        }
    };
}
pub(crate) use ensure;

/// Runs the scenario called `name` and prints its verdict; returns whether it passed.
pub fn run(name: &'static str, boot_params: BootParams, cmdline: Cmdline) -> bool {
    let Some(scenario) = SCENARIOS.iter().find(|s| s.name == name) else {
        crate::println!("TESTGUEST FAIL {name}: unknown scenario");
        return false;
    };
    let ctx = Ctx {
        name,
        boot_params,
        cmdline,
    };
    match (scenario.run)(&ctx) {
        Ok(()) => {
            crate::println!("TESTGUEST PASS {name}");
            true
        }
        Err(fail) => {
            crate::println!("TESTGUEST FAIL {name}: {}", fail.reason());
            false
        }
    }
}

/// Displays the items of an iterator separated by `sep`: `Join(ids.iter(), ", ")`.
pub struct Join<I>(pub I, pub &'static str);

impl<I> fmt::Display for Join<I>
where
    I: Iterator + Clone,
    I::Item: fmt::Display,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.clone().enumerate() {
            if i > 0 {
                f.write_str(self.1)?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}
