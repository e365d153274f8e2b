//! The VF side of the mailbox: VMBMEM and V2PMAILBOX.
//!
//! One 16-word buffer carries messages both ways. The VF takes the buffer (VFU), writes
//! its words and sets REQ (which drops VFU); the PF answers by acknowledging (PFACK) and
//! writing its reply (PFSTS); the VF takes the buffer again, reads and sets ACK. PFSTS,
//! PFACK and RSTD clear when V2PMAILBOX is read; RSTI (PF in reset) always reads 0 here:
//! the PF is a state machine that is never in reset.

use super::regs::{V2P_PFACK, V2P_PFSTS, V2P_PFU, V2P_R2C_BITS, V2P_RSTD, V2P_VFU, VMBMEM_WORDS};

/// Mailbox registers and who has seen what.
#[derive(Debug, Clone)]
pub(crate) struct Mailbox {
    /// VMBMEM.
    pub mem: [u32; VMBMEM_WORDS],
    /// The stored V2PMAILBOX bits: VFU, PFU, PFSTS, PFACK, RSTD.
    pub ctrl: u32,
    /// The PF posted a message the VF has not acknowledged yet.
    pub unread: bool,
    /// That unread message may be replaced by a ping: it is a ping itself, or a reply
    /// igbvf never reads.
    pub unread_replaceable: bool,
}

impl Default for Mailbox {
    fn default() -> Self {
        Self {
            mem: [0; VMBMEM_WORDS],
            // The PF finished its reset before the VF came to life.
            ctrl: V2P_RSTD,
            unread: false,
            unread_replaceable: false,
        }
    }
}

impl Mailbox {
    /// A V2PMAILBOX read: the value, then the read-to-clear bits cleared.
    pub fn read_ctrl(&mut self) -> u32 {
        let v = self.ctrl;
        self.ctrl &= !V2P_R2C_BITS;
        v
    }

    /// The VF's VFU bit as written: taken only while the PF does not hold the buffer.
    pub fn write_vfu(&mut self, val: u32) {
        if val & V2P_VFU == 0 {
            self.ctrl &= !V2P_VFU;
        } else if self.ctrl & V2P_PFU == 0 {
            self.ctrl |= V2P_VFU;
        }
    }

    /// Whether the VF holds the buffer.
    pub fn vf_holds(&self) -> bool {
        self.ctrl & V2P_VFU != 0
    }

    /// The PF acknowledges the VF's message.
    pub fn pf_ack(&mut self) {
        self.ctrl |= V2P_PFACK;
    }

    /// The PF posts `words` (the rest of VMBMEM keeps what it held) and sets PFSTS.
    /// `replaceable`: a ping may overwrite it before the VF reads it.
    pub fn pf_post(&mut self, words: &[u32], replaceable: bool) {
        for (slot, w) in self.mem.iter_mut().zip(words) {
            *slot = *w;
        }
        self.ctrl |= V2P_PFSTS;
        self.unread = true;
        self.unread_replaceable = replaceable;
    }

    /// The VF acknowledged the PF's message.
    pub fn vf_ack(&mut self) {
        self.unread = false;
        self.unread_replaceable = false;
    }
}
