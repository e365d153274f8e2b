//! Everything that talks to KVM: the VM (memory slots, irqchip, irqfds), vCPU threads and
//! their state machine, and the decoding of vCPU exits.

pub mod cpu_state;
pub mod exit;
pub mod irq_routing;
pub mod vcpu;
pub mod vm;

pub use cpu_state::CpuState;
pub use exit::{ExitAction, IoBus, StopReason, handle_exit};
pub use vcpu::{VcpuEvent, VcpuHandle, VcpuState};
pub use vm::{KvmError, Vm};
