//! The emulated SR-IOV adapter (Intel 82576): the physical function with its SR-IOV
//! capability and Virtual Functions ([`pf`]), and the Virtual Function model that Linux's
//! igbvf drives ([`igbvf`]).

pub mod igbvf;
pub mod pf;
