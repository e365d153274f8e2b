//! MSI-X: the vector table and pending-bit array a function exposes in a BAR, the
//! per-vector and function masks, and delivery through an [`MsiSink`].
//!
//! A vector fires only when MSI-X is enabled, the function is not masked and the vector is
//! not masked; otherwise its pending bit is set, and it is delivered when the mask that
//! held it back is cleared (PCI 3.0, 6.8.2.9).

use std::sync::Arc;

use crate::interrupt::{ExternalVectors, MsiSink, MsixDelivery};
use crate::{debug_ratelimited, warn_ratelimited};

/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Vector control: masked.
const VECTOR_MASKED: u32 = 1;

/// One table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message address, low.
    pub addr_lo: u32,
    /// Message address, high.
    pub addr_hi: u32,
    /// Message data.
    pub data: u32,
    /// Vector control (bit 0: masked).
    pub control: u32,
}

impl Default for MsixEntry {
    fn default() -> Self {
        // Vectors come out of reset masked.
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

impl MsixEntry {
    /// The message address.
    pub fn address(&self) -> u64 {
        u64::from(self.addr_lo) | (u64::from(self.addr_hi) << 32)
    }

    fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }
}

/// The MSI-X state of a function.
pub struct Msix {
    table: Vec<MsixEntry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    delivery: MsixDelivery,
    /// External delivery: whether each vector's eventfd is connected to its route.
    connected: Vec<bool>,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("vectors", &self.table.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish_non_exhaustive()
    }
}

impl Msix {
    /// `vectors` vectors (1..=2048), all masked, injected through `sink`.
    pub fn new(vectors: u16, sink: Arc<dyn MsiSink>) -> Self {
        Self::with_delivery(vectors, MsixDelivery::Signal(sink))
    }

    /// `vectors` vectors (1..=2048), all masked, delivered by `delivery`.
    pub fn with_delivery(vectors: u16, delivery: MsixDelivery) -> Self {
        let n = usize::from(vectors.clamp(1, 2048));
        Self {
            table: vec![MsixEntry::default(); n],
            pending: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
            delivery,
            connected: vec![false; n],
        }
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        // At most 2048 entries (`with_delivery` clamps): this never saturates.
        u16::try_from(self.table.len()).unwrap_or(u16::MAX)
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.table.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size of the PBA in bytes.
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The entry of `vector`.
    pub fn entry(&self, vector: u16) -> Option<MsixEntry> {
        self.table.get(usize::from(vector)).copied()
    }

    /// Whether MSI-X is enabled in the capability.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the capability's function mask is set.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    fn is_pending(&self, v: usize) -> bool {
        self.pending[v / 64] & (1 << (v % 64)) != 0
    }

    fn set_pending(&mut self, v: usize, on: bool) {
        if on {
            self.pending[v / 64] |= 1 << (v % 64);
        } else {
            self.pending[v / 64] &= !(1 << (v % 64));
        }
    }

    /// The capability's Message Control was written: `enable` and `function_mask` bits.
    pub fn set_control(&mut self, enable: bool, function_mask: bool) {
        self.enabled = enable;
        self.function_masked = function_mask;
        self.deliver_unmasked_pending();
    }

    fn deliverable(&self, v: usize) -> bool {
        self.enabled && !self.function_masked && !self.table[v].masked()
    }

    fn deliver_unmasked_pending(&mut self) {
        if let MsixDelivery::External(ext) = &self.delivery {
            let ext = ext.clone();
            for vector in 0..self.vectors() {
                self.connect_external(&*ext, vector);
            }
            return;
        }
        for vector in 0..self.vectors() {
            let v = usize::from(vector);
            if self.is_pending(v) && self.deliverable(v) {
                self.set_pending(v, false);
                self.send(vector);
            }
        }
    }

    /// External delivery: connects `vector`'s eventfd to its route exactly while the
    /// vector may be delivered (what was raised meanwhile is then delivered by KVM).
    fn connect_external(&mut self, ext: &dyn ExternalVectors, vector: u16) {
        let v = usize::from(vector);
        let want = self.deliverable(v);
        if self.connected[v] == want {
            return;
        }
        match ext.set_masked(vector, !want) {
            Ok(()) => self.connected[v] = want,
            Err(err) => warn_ratelimited!("msix: vector {vector}: cannot (un)mask: {err}"),
        }
    }

    fn send(&self, vector: u16) {
        let e = self.table[usize::from(vector)];
        let r = match &self.delivery {
            MsixDelivery::Signal(sink) => sink.send_msi(e.address(), e.data),
            MsixDelivery::Routed(routes) => routes.trigger(vector),
            // The device raises its eventfds itself.
            MsixDelivery::External(_) => Ok(()),
        };
        if let Err(err) = r {
            warn_ratelimited!("msix: vector {vector}: {err}");
        }
    }

    /// The device raises `vector`: delivered now, or left pending while masked. A vector
    /// out of range is ignored.
    pub fn notify(&mut self, vector: u16) {
        let v = usize::from(vector);
        if v >= self.table.len() {
            debug_ratelimited!("msix: vector {v} out of range");
            return;
        }
        if self.deliverable(v) {
            self.send(vector);
        } else {
            self.set_pending(v, true);
        }
    }

    /// A guest read of the table (`offset` into it; 4- or 8-byte aligned accesses).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        let Some((vector, field)) = self.table_slot(offset, data.len()) else {
            data.fill(0xff);
            return;
        };
        let e = &self.table[usize::from(vector)];
        let words = [e.addr_lo, e.addr_hi, e.data, e.control];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        data.copy_from_slice(&bytes[field..field + data.len()]);
    }

    /// A guest write of the table.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let Some((vector, field)) = self.table_slot(offset, data.len()) else {
            debug_ratelimited!("msix: bad table write at {offset:#x}, {} bytes", data.len());
            return;
        };
        let v = usize::from(vector);
        let mut bytes = [0u8; 16];
        let e = self.table[v];
        for (i, w) in [e.addr_lo, e.addr_hi, e.data, e.control].iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        bytes[field..field + data.len()].copy_from_slice(data);
        let word = |i: usize| {
            u32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ])
        };
        self.table[v] = MsixEntry {
            addr_lo: word(0),
            addr_hi: word(1),
            data: word(2),
            // Only the mask bit of vector control is writable.
            control: word(3) & VECTOR_MASKED,
        };
        let now = self.table[v];
        if (now.address(), now.data) != (e.address(), e.data) {
            let r = match &self.delivery {
                MsixDelivery::Routed(routes) => routes.set_route(vector, now.address(), now.data),
                MsixDelivery::External(ext) => ext.set_route(vector, now.address(), now.data),
                MsixDelivery::Signal(_) => Ok(()),
            };
            if let Err(err) = r {
                warn_ratelimited!("msix: route of vector {v}: {err}");
            }
        }
        if let MsixDelivery::External(ext) = &self.delivery {
            let ext = ext.clone();
            self.connect_external(&*ext, vector);
            return;
        }
        if e.masked() && !self.table[v].masked() && self.is_pending(v) && self.deliverable(v) {
            self.set_pending(v, false);
            self.send(vector);
        }
    }

    /// The vector and byte offset in its entry of an access, if well formed (4 or 8 bytes,
    /// naturally aligned, inside the table).
    fn table_slot(&self, offset: u64, len: usize) -> Option<(u16, usize)> {
        if !matches!(len, 4 | 8)
            || !offset.is_multiple_of(len as u64)
            || offset >= self.table_size()
        {
            return None;
        }
        let vector = u16::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        Some((vector, (offset % MSIX_ENTRY_SIZE) as usize))
    }

    /// A guest read of the PBA (read-only; writes are ignored).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        if !matches!(data.len(), 4 | 8)
            || !offset.is_multiple_of(data.len() as u64)
            || offset >= self.pba_size()
        {
            data.fill(0xff);
            return;
        }
        let i = (offset / 8) as usize;
        let mut bits = self.pending[i];
        if let MsixDelivery::External(ext) = &self.delivery {
            // A disconnected vector's eventfd holds what was raised meanwhile.
            for b in 0..64 {
                let v = i * 64 + b;
                if v < self.table.len() && !self.connected[v] {
                    let vector = u16::try_from(v).unwrap_or(u16::MAX);
                    if ext.is_pending(vector) {
                        bits |= 1 << b;
                    }
                }
            }
        }
        let word = bits.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&word[start..start + data.len()]);
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data
mod tests {
    use super::*;
    use crate::interrupt::msi_test_utils::{FakeExternal, RecordingMsi};

    fn msix(n: u16) -> (Msix, Arc<RecordingMsi>) {
        let sink = Arc::new(RecordingMsi::default());
        (Msix::new(n, sink.clone()), sink)
    }

    fn program(m: &mut Msix, v: u64, addr: u64, data: u32, masked: bool) {
        let base = v * MSIX_ENTRY_SIZE;
        m.table_write(base, &(addr as u32).to_le_bytes());
        m.table_write(base + 4, &((addr >> 32) as u32).to_le_bytes());
        m.table_write(base + 8, &data.to_le_bytes());
        m.table_write(base + 12, &u32::from(masked).to_le_bytes());
    }

    fn pba(m: &Msix) -> u64 {
        let mut b = [0u8; 8];
        m.pba_read(0, &mut b);
        u64::from_le_bytes(b)
    }

    #[test]
    fn reset_state_is_masked() {
        let (m, _) = msix(3);
        let mut b = [0u8; 4];
        m.table_read(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        assert_eq!((m.table_size(), m.pba_size()), (48, 8));
    }

    #[test]
    fn delivery_and_masks() {
        let (mut m, sink) = msix(4);
        program(&mut m, 1, 0xfee0_0000, 0x4021, false);
        // Not enabled yet: pending.
        m.notify(1);
        assert_eq!(sink.count(), 0);
        assert_eq!(pba(&m), 0b10);
        // Enabling delivers the pending vector.
        m.set_control(true, false);
        assert_eq!(sink.count(), 1);
        assert_eq!(pba(&m), 0);
        m.notify(1);
        assert_eq!(
            *sink.0.lock().unwrap().last().unwrap(),
            (0xfee0_0000, 0x4021)
        );
        // Function mask holds it back.
        m.set_control(true, true);
        m.notify(1);
        assert_eq!((sink.count(), pba(&m)), (2, 0b10));
        m.set_control(true, false);
        assert_eq!((sink.count(), pba(&m)), (3, 0));
        // Vector mask, then unmask by a table write.
        m.table_write(16 + 12, &1u32.to_le_bytes());
        m.notify(1);
        assert_eq!(pba(&m), 0b10);
        m.table_write(16 + 12, &0u32.to_le_bytes());
        assert_eq!((sink.count(), pba(&m)), (4, 0));
    }

    #[derive(Default)]
    struct Routes(std::sync::Mutex<Vec<String>>);
    impl crate::interrupt::MsiRoutes for Routes {
        fn set_route(&self, vector: u16, address: u64, data: u32) -> std::io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("route {vector} {address:#x} {data:#x}"));
            Ok(())
        }
        fn trigger(&self, vector: u16) -> std::io::Result<()> {
            self.0.lock().unwrap().push(format!("fire {vector}"));
            Ok(())
        }
    }

    #[test]
    fn routed_delivery_follows_the_table() {
        let routes = Arc::new(Routes::default());
        let mut m = Msix::with_delivery(2, MsixDelivery::Routed(routes.clone()));
        program(&mut m, 1, 0xfee0_0000, 0x41, false);
        m.set_control(true, false);
        m.notify(1);
        // Rewriting the same message does not re-route.
        m.table_write(16 + 8, &0x41u32.to_le_bytes());
        assert_eq!(
            *routes.0.lock().unwrap(),
            vec![
                "route 1 0xfee00000 0x0",
                "route 1 0xfee00000 0x41",
                "fire 1"
            ]
        );
    }

    /// External vectors are connected exactly while deliverable; what the device raised
    /// meanwhile shows in the PBA and is delivered on connection.
    #[test]
    fn external_vectors_follow_enable_and_masks() {
        let out = Arc::new(FakeExternal::new(2));
        let mut m = Msix::with_delivery(2, MsixDelivery::External(out.clone()));
        program(&mut m, 1, 0xfee0_0000, 0x41, false);
        assert_eq!(
            out.take_log(),
            ["route 1 0xfee00000 0x0", "route 1 0xfee00000 0x41"],
            "routed, but not connected while MSI-X is off"
        );
        out.raise(1);
        assert_eq!(pba(&m), 0b10, "raised while off: pending");
        m.set_control(true, false);
        assert_eq!(out.take_log(), ["connect 1", "deliver 1"]);
        assert_eq!(pba(&m), 0);
        out.raise(1);
        assert_eq!(out.take_log(), ["deliver 1"]);
        // Function mask, then vector mask: disconnected once, reconnected once.
        m.set_control(true, true);
        out.raise(1);
        assert_eq!(pba(&m), 0b10);
        m.table_write(16 + 12, &1u32.to_le_bytes());
        m.set_control(true, false);
        assert_eq!(
            out.take_log(),
            ["disconnect 1"],
            "still masked by the vector"
        );
        m.table_write(16 + 12, &0u32.to_le_bytes());
        assert_eq!(out.take_log(), ["connect 1", "deliver 1"]);
        // Vector 0 was never unmasked: never connected.
        assert!(!out.connected.lock().unwrap()[0]);
    }

    #[test]
    fn table_accesses() {
        let (mut m, _) = msix(2);
        // 8-byte write of the address.
        m.table_write(16, &0x0000_0001_fee0_1000u64.to_le_bytes());
        assert_eq!(m.entry(1).unwrap().address(), 0x1_fee0_1000);
        let mut q = [0u8; 8];
        m.table_read(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_fee0_1000);
        // Reserved vector-control bits stay 0.
        m.table_write(12, &0xffff_fffeu32.to_le_bytes());
        assert_eq!(m.entry(0).unwrap().control, 0);
        // Malformed accesses: ignored / all ones, never a panic.
        let mut b = [0u8; 4];
        m.table_read(32, &mut b);
        assert_eq!(b, [0xff; 4]);
        m.table_read(2, &mut b);
        assert_eq!(b, [0xff; 4]);
        m.table_write(u64::MAX - 3, &[1, 2, 3, 4]);
        m.table_write(1, &[1, 2, 3, 4]);
        m.table_write(0, &[1, 2]);
        m.notify(7);
        m.pba_read(8, &mut b);
        assert_eq!(b, [0xff; 4]);
    }
}
