//! `vmm-bench`: benchmarks that print figures (never assertions).
//!
//! `vmm-bench boot [--runs N] [--vcpus N] [--memory 256M,4G] [--guest trivial|testguest]
//! [--compare firecracker=PATH,cloud-hypervisor=PATH]` starts whole VMM processes that boot
//! a trivial guest (one byte to COM1, then power-off) and prints wall time, CPU time and peak
//! RSS from process start to exit, as medians with min and max; with `--compare`, other
//! VMMs run the same guest in alternation with ours.
//!
//! `vmm-bench net [--frames N] [--sizes 64,1500] [--backends socket,tap]` has the test
//! guest's ring-3 virtio-net driver send N frames of each size as fast as it can, through
//! the seqpacket backend to a sink in this process, and through a TAP device into a network
//! namespace, and prints frames per second and Gbit/s (frame bytes, without the virtio
//! header), timed on the host between the guest's start and end markers.
//!
//! `vmm-bench nicd [--frames N] [--sizes 64,1500] [--paths vf-vf,vf-uplink] [--ring N]
//! [--rss-vfs 8,64,255]` drives nicd's VFs from this process (devices' igbvf driver over
//! vfio-user; no KVM) and prints its switching rate VF to VF and VF to uplink, its CPU
//! time per frame, and its RSS with N VFs idle and with a driver up on each.
//!
//! `vmm-bench vf [--frames N] [--sizes 64,1500] [--paths vf-uplink,vf-vf,synthetic]
//! [--scale N] [--scale-frames N]` has the test guest's ring-3 igbvf driver send through
//! a VF of nicd (to the uplink, or to a second guest's VF) and its virtio-net send through
//! the vmm (the synthetic path), and prints frames/s, Gbit/s and CPU per frame of the vmm's
//! vCPU thread, its other threads and nicd; `--scale N` runs N guests with a VF each at
//! once.
//!
//! `vmm-bench failover [--cycles N] [--frames N]` has the test guest play net_failover (a
//! stream of frames, one in flight, out of its VF while it has one, else its standby) to a
//! reflector on nicd's uplink while N attach/detach cycles run through the vmm's API, and
//! prints per switch the sequence's time, the frames lost and the longest gap in the
//! stream, and the frames lost while no switch happened.

mod boot;
mod failover;
mod net;
mod nicd;
mod trivial_guest;
mod vf;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "vmm-bench", about = "VMM benchmarks: print figures")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// virtio-net transmit throughput from the test guest.
    Net {
        /// Frames per measurement.
        #[arg(long, default_value_t = 200_000)]
        frames: u64,
        /// Frame sizes in bytes (60..=1514).
        #[arg(long, value_delimiter = ',', default_value = "64,1500")]
        sizes: Vec<u64>,
        /// Backends: socket, tap.
        #[arg(long, value_delimiter = ',', default_value = "socket,tap")]
        backends: Vec<String>,
        /// Also measure with the device behind the virtio-iommu (translated DMA).
        #[arg(long)]
        iommu: bool,
    },
    /// Start and stop whole VMM processes: wall time, CPU time and peak RSS.
    Boot(boot::Options),
    /// nicd's switching rate (VF to VF, VF to uplink) and RSS at N VFs.
    Nicd(nicd::Options),
    /// The VF path from test guests in vmm processes against the synthetic path; with
    /// --scale N, N guests with a VF each sending at once.
    Vf(vf::Options),
    /// Frames lost and the longest gap in a stream across VF attach/detach cycles.
    Failover(failover::Options),
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn main() -> std::process::ExitCode {
    match Cli::parse().bench {
        Bench::Boot(options) => boot::run(&options),
        Bench::Nicd(options) => nicd::run(&options),
        Bench::Vf(options) => vf::run(&options),
        Bench::Failover(options) => failover::run(&options),
        Bench::Net {
            frames,
            sizes,
            backends,
            iommu,
        } => net::run(frames, &sizes, &backends, iommu),
    }
}

/// The test guest built beside this binary (the same build), else guest-images/out's.
fn test_guest() -> PathBuf {
    let beside = sibling("testguest");
    if beside.exists() {
        beside
    } else {
        vmm::config::guest_images_dir().join(vmm::config::DEFAULT_KERNEL)
    }
}
