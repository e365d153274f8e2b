//! The emulated SR-IOV adapter (Intel 82576): its Virtual Function model and, later, the
//! PF, the NIC switch and the uplinks.

pub mod igbvf;
