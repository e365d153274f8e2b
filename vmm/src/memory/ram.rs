//! Guest RAM: one memfd (so nicd can later map the same pages) mapped as the RAM ranges of
//! the layout.

use devices::GuestMemory;
use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::{FileOffset, GuestAddress};

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
    mem: GuestMemory,
    memfd: File,
    size: u64,
}

impl GuestRam {
    /// Creates `size` bytes of RAM laid out per [`layout::ram_ranges`].
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        // SAFETY: the name is a valid NUL-terminated string and the flags are valid; the
        // returned descriptor is checked before use.
        let fd = unsafe {
            libc::memfd_create(
                MEMFD_NAME.as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created, is valid and is owned by nothing else.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd
            .set_len(size)
            .map_err(|e| MemoryError::Truncate(size, e))?;
        // Its size is fixed from now on: a process the memfd is shared with (nicd, for a
        // VF's DMA) can rely on every mapped page staying (no SIGBUS from a shrink).
        // SAFETY: F_ADD_SEALS with constant seals on a descriptor this function owns.
        let rc = unsafe {
            libc::fcntl(
                memfd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        if rc != 0 {
            return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
        }
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
        let mem = GuestMemory::from_ranges_with_files(&ranges).map_err(MemoryError::Mmap)?;
        Ok(Self { mem, memfd, size })
    }

    /// The mapped memory.
    pub fn memory(&self) -> &GuestMemory {
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

    /// Gives up the mappings and keeps the memfd, for figures taken after the VM ends.
    pub fn into_memfd(self) -> File {
        self.memfd
    }
}

/// Bytes of guest RAM the guest or the VMM touched: the blocks allocated to the memfd, in
/// one fstat whatever the size (the pages mincore would find resident; guest RAM is not
/// swapped out here).
pub fn touched_bytes(memfd: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(memfd.metadata()?.blocks() * 512)
}

/// The name used for the memfd (shows in /proc/PID/maps).
pub const MEMFD_NAME: &CStr = c"guest-ram";

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn ram_is_backed_and_laid_out() {
        let ram = GuestRam::new(64 << 20).unwrap();
        assert_eq!(ram.memory().num_regions(), 1);
        assert_eq!(ram.memfd().metadata().unwrap().len(), 64 << 20);
        let before = touched_bytes(ram.memfd()).unwrap();
        ram.memory()
            .write_obj(0xdead_beefu32, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(
            ram.memory()
                .read_obj::<u32>(GuestAddress(0x10_0000))
                .unwrap(),
            0xdead_beef
        );
        assert!(touched_bytes(ram.memfd()).unwrap() >= before + 4096);
        assert!(ram.memory().read_obj::<u8>(GuestAddress(64 << 20)).is_err());
    }

    /// Resident bytes of the mappings by mincore, page by page: what the fstat figure
    /// stands in for.
    fn mincore_bytes(ram: &GuestRam) -> u64 {
        const PAGE: usize = 4096;
        let mut total = 0;
        for region in ram.memory().iter() {
            let len = region.len() as usize;
            let host = ram.memory().get_host_address(region.start_addr()).unwrap();
            let mut vec = vec![0u8; len.div_ceil(PAGE)];
            // SAFETY: `host..host+len` is one page-aligned mapping owned by `ram` for the
            // duration of the call, and `vec` has one byte per page of it.
            let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
            assert_eq!(rc, 0);
            total += vec.iter().filter(|b| *b & 1 != 0).count() as u64 * PAGE as u64;
        }
        total
    }

    /// The memfd's block count and mincore over the mappings agree, below and above the
    /// 32-bit hole (two regions of one file).
    #[test]
    fn touched_bytes_counts_what_mincore_counts() {
        let ram = GuestRam::new((3 << 30) + (256 << 20)).unwrap();
        assert_eq!(ram.memory().num_regions(), 2);
        assert_eq!(touched_bytes(ram.memfd()).unwrap(), mincore_bytes(&ram));
        for gpa in [
            0x1000u64,
            0x20_0000,
            0x20_0008,
            0x8000_0000,
            0x1_0000_0000,
            0x1_0800_0000,
        ] {
            ram.memory().write_obj(1u64, GuestAddress(gpa)).unwrap();
        }
        let touched = touched_bytes(ram.memfd()).unwrap();
        assert!(
            touched >= 5 * 4096,
            "five distinct pages written: {touched}"
        );
        assert_eq!(touched, mincore_bytes(&ram));
    }
}
