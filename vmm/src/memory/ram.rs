//! Guest RAM: one memfd (so nicd can later map the same pages) mapped as the RAM ranges of
//! the layout.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{self, RamRange};

/// Errors creating guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("cannot create the guest memory file (memfd_create)")]
    Memfd(#[source] std::io::Error),
    /// Sizing the memfd failed.
    #[error("cannot size the guest memory file to {0} bytes")]
    Truncate(u64, #[source] std::io::Error),
    /// A size that does not fit the host's address space.
    #[error("guest memory size {0} does not fit this host's address space")]
    TooLarge(u64),
    /// Mapping failed.
    #[error("cannot map guest memory")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
}

/// The guest's RAM.
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    memfd: File,
    size: u64,
}

impl GuestRam {
    /// Creates `size` bytes of RAM laid out per [`layout::ram_ranges`].
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        // SAFETY: the name is a valid NUL-terminated string and the flags are valid; the
        // returned descriptor is checked before use.
        let fd = unsafe { libc::memfd_create(MEMFD_NAME.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created, is valid and is owned by nothing else.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd
            .set_len(size)
            .map_err(|e| MemoryError::Truncate(size, e))?;
        let mut ranges = Vec::new();
        let mut offset = 0u64;
        for RamRange { start, len } in layout::ram_ranges(size) {
            let len_usize = usize::try_from(len).map_err(|_| MemoryError::TooLarge(size))?;
            let file = memfd.try_clone().map_err(MemoryError::Memfd)?;
            ranges.push((
                GuestAddress(start),
                len_usize,
                Some(FileOffset::new(file, offset)),
            ));
            offset += len;
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(MemoryError::Mmap)?;
        Ok(Self { mem, memfd, size })
    }

    /// The mapped memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The memfd behind all of it.
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of guest RAM that are resident, i.e. that the guest (or the VMM) touched.
    pub fn resident_bytes(&self) -> u64 {
        const PAGE: usize = 4096;
        let mut total = 0u64;
        for region in self.mem.iter() {
            let len = region.len() as usize;
            let Ok(host) = self.mem.get_host_address(region.start_addr()) else {
                continue;
            };
            let mut vec = vec![0u8; len.div_ceil(PAGE)];
            // SAFETY: `host..host+len` is one mapping owned by `self.mem` for its lifetime,
            // page aligned, and `vec` has one byte per page of it.
            let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
            if rc == 0 {
                total += vec.iter().filter(|b| *b & 1 != 0).count() as u64 * PAGE as u64;
            }
        }
        total
    }
}

/// The name used for the memfd (shows in /proc/PID/maps).
pub const MEMFD_NAME: &CStr = c"guest-ram";

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_backed_and_laid_out() {
        let ram = GuestRam::new(64 << 20).unwrap();
        assert_eq!(ram.memory().num_regions(), 1);
        assert_eq!(ram.memfd().metadata().unwrap().len(), 64 << 20);
        let before = ram.resident_bytes();
        ram.memory()
            .write_obj(0xdead_beefu32, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(
            ram.memory()
                .read_obj::<u32>(GuestAddress(0x10_0000))
                .unwrap(),
            0xdead_beef
        );
        assert!(ram.resident_bytes() >= before + 4096);
        assert!(ram.memory().read_obj::<u8>(GuestAddress(64 << 20)).is_err());
    }
}
