//! The dirty-page log of guest memory as vm-memory sees it: one bit per page, set by every
//! write made through vm-memory (device DMA, the VMM's own writes), and nothing at all until
//! logging starts. Like KVM's dirty log, it is started when a migration begins (whose first
//! pass copies all memory anyway); before that, keeping a bitmap would cost every VM a
//! zeroed allocation of 32 KiB per GiB of RAM at start-up for nothing.

use std::sync::OnceLock;

use vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap, RefSlice, WithBitmapSlice};

/// A region's dirty-page log, allocated when logging starts.
#[derive(Debug, Default)]
pub struct DirtyLog {
    /// Bytes of the region it covers.
    len: usize,
    bitmap: OnceLock<AtomicBitmap>,
}

impl DirtyLog {
    /// Starts logging (idempotent): from now on writes through vm-memory set bits.
    pub fn start(&self) -> &AtomicBitmap {
        self.bitmap.get_or_init(|| AtomicBitmap::with_len(self.len))
    }

    /// The bitmap, once logging has started.
    pub fn bitmap(&self) -> Option<&AtomicBitmap> {
        self.bitmap.get()
    }
}

impl<'a> WithBitmapSlice<'a> for DirtyLog {
    type S = RefSlice<'a, Self>;
}

impl Bitmap for DirtyLog {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if let Some(b) = self.bitmap.get() {
            b.mark_dirty(offset, len);
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.bitmap.get().is_some_and(|b| b.dirty_at(offset))
    }

    fn slice_at(&self, offset: usize) -> <Self as WithBitmapSlice<'_>>::S {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for DirtyLog {
    fn with_len(len: usize) -> Self {
        Self {
            len,
            bitmap: OnceLock::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{
        Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
        MemoryRegionAddress,
    };

    use super::*;

    #[test]
    fn writes_are_logged_only_once_started() {
        let mem: GuestMemoryMmap<DirtyLog> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let region = mem.iter().next().unwrap();
        let log: &DirtyLog = (**region).bitmap();
        mem.write_slice(&[1; 8], GuestAddress(0x1000)).unwrap();
        assert!(log.bitmap().is_none(), "no bitmap before start");
        assert!(!log.dirty_at(0x1000));

        log.start();
        mem.write_slice(&[2; 8], GuestAddress(0x3000)).unwrap();
        assert!(log.dirty_at(0x3000));
        assert!(!log.dirty_at(0x1000), "written before start");
        assert!(!log.dirty_at(0x2000));
        // A write through a slice of the region (as DMA goes) is logged at its page.
        let s = region.get_slice(MemoryRegionAddress(0x5000), 16).unwrap();
        s.write_slice(&[3; 16], 0).unwrap();
        assert!(log.dirty_at(0x5000));
    }
}
