//! Loading the kernel (ELF vmlinux or bzImage, through linux-loader) and the initrd.

use devices::GuestMemory;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{KernelLoader, bzimage::BzImage, elf::Elf};
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::memory::layout;

/// Errors loading what the guest boots: all caused by the images or sizes the user gave.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened or read.
    #[error("cannot read kernel {path}")]
    KernelFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    KernelFormat(PathBuf),
    /// linux-loader refused the image.
    #[error("cannot load kernel {path}")]
    KernelLoad {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// An ELF kernel whose entry is not in 64-bit RAM above 1 MiB.
    #[error("kernel {path}: entry point {entry:#x} is outside guest RAM")]
    KernelEntry {
        /// The file.
        path: PathBuf,
        /// The entry point.
        entry: u64,
    },
    /// The initrd cannot be opened or read.
    #[error("cannot read initrd {path}")]
    InitrdFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit.
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest RAM between the kernel (ends at \
         {kernel_end:#x}) and {limit:#x}: give the VM more memory"
    )]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// End of the kernel image.
        kernel_end: u64,
        /// Highest address the initrd may reach.
        limit: u64,
    },
    /// Writing the command line failed.
    #[error("cannot place the kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line into memory failed.
    #[error("cannot write the kernel command line to guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// Writing boot structures failed.
    #[error("cannot write {0} to guest memory")]
    GuestWrite(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts, in 64-bit mode.
    pub entry: GuestAddress,
    /// First byte past the kernel image.
    pub end: u64,
    /// The bzImage setup header, for the zero page (None for ELF).
    pub setup_header: Option<setup_header>,
}

/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

fn is_elf(file: &mut File) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0))?;
    let n = file.read(&mut magic)?;
    Ok(n == 4 && magic == *b"\x7fELF")
}

fn is_bzimage(file: &mut File) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0x202))?;
    let n = file.read(&mut magic)?;
    Ok(n == 4 && magic == *b"HdrS")
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, BootError> {
    let file_err = |source| BootError::KernelFile {
        path: path.to_path_buf(),
        source,
    };
    let load_err = |source| BootError::KernelLoad {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(file_err)?;
    if !file.metadata().map_err(file_err)?.is_file() {
        return Err(file_err(std::io::Error::from(
            std::io::ErrorKind::InvalidInput,
        )));
    }
    let himem = Some(GuestAddress(layout::HIMEM_START));
    if is_elf(&mut file).map_err(file_err)? {
        let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
        if !mem.address_in_range(r.kernel_load) {
            return Err(BootError::KernelEntry {
                path: path.to_path_buf(),
                entry: r.kernel_load.0,
            });
        }
        Ok(LoadedKernel {
            entry: r.kernel_load,
            end: r.kernel_end,
            setup_header: None,
        })
    } else if is_bzimage(&mut file).map_err(file_err)? {
        let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
        Ok(LoadedKernel {
            entry: GuestAddress(r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
            end: r.kernel_end,
            setup_header: r.setup_header,
        })
    } else {
        Err(BootError::KernelFormat(path.to_path_buf()))
    }
}

/// Where an initrd of `size` bytes goes: page aligned, as high as possible below `limit`
/// (exclusive) and above the kernel. Pure, for tests.
pub fn initrd_address(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !0xfff;
    (start >= kernel_end.next_multiple_of(0x1000)).then_some(start)
}

/// Loads the initrd at `path` at the top of low RAM; returns its address and size.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel: &LoadedKernel,
    ram_size: u64,
) -> Result<(GuestAddress, u64), BootError> {
    let file_err = |source| BootError::InitrdFile {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(file_err)?;
    let meta = file.metadata().map_err(file_err)?;
    if !meta.is_file() {
        return Err(file_err(std::io::Error::from(
            std::io::ErrorKind::InvalidInput,
        )));
    }
    let size = meta.len();
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(layout::INITRD_ADDR_MAX);
    let limit = layout::low_ram_end(ram_size).min(addr_max.saturating_add(1));
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        kernel_end: kernel.end,
        limit,
    };
    let addr = initrd_address(size, kernel.end, limit).ok_or_else(too_large)?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    let mut slice = mem
        .get_slice(GuestAddress(addr), len)
        .map_err(|e| BootError::GuestWrite("the initrd", e))?;
    file.read_exact_volatile(&mut slice)
        .map_err(|e| BootError::GuestWrite("the initrd", e.into()))?;
    Ok((GuestAddress(addr), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-loader-{}-{name}", std::process::id()));
        File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    #[test]
    fn initrd_placement() {
        assert_eq!(
            initrd_address(0x1000, 0x20_0000, 0x100_0000),
            Some(0xff_f000)
        );
        assert_eq!(
            initrd_address(0x1001, 0x20_0000, 0x100_0000),
            Some(0xff_e000)
        );
        assert_eq!(initrd_address(0x100_0000, 0x20_0000, 0x100_0000), None);
        assert_eq!(initrd_address(u64::MAX, 0, 0x100_0000), None);
        // Exactly fits above the (page-rounded) kernel end.
        assert_eq!(initrd_address(0x1000, 0x1_0001, 0x1_1fff), None);
        assert_eq!(initrd_address(0x1000, 0x1_0001, 0x1_2000), Some(0x1_1000));
    }

    #[test]
    fn rejects_garbage_and_missing_kernels() {
        let m = mem();
        let p = temp("garbage", &[0x55; 4096]);
        assert!(matches!(
            load_kernel(&m, &p),
            Err(BootError::KernelFormat(_))
        ));
        let p2 = temp("empty", &[]);
        assert!(matches!(
            load_kernel(&m, &p2),
            Err(BootError::KernelFormat(_))
        ));
        let truncated_elf = temp("elf", b"\x7fELF\x02\x01\x01");
        assert!(matches!(
            load_kernel(&m, &truncated_elf),
            Err(BootError::KernelLoad { .. })
        ));
        assert!(matches!(
            load_kernel(&m, Path::new("/nonexistent/vmlinux")),
            Err(BootError::KernelFile { .. })
        ));
        assert!(matches!(
            load_kernel(&m, Path::new("/")),
            Err(BootError::KernelFile { .. })
        ));
        for f in [p, p2, truncated_elf] {
            std::fs::remove_file(f).unwrap();
        }
    }

    #[test]
    fn initrd_too_large_is_an_error() {
        let m = mem();
        let kernel = LoadedKernel {
            entry: GuestAddress(0x10_0000),
            end: 0x20_0000,
            setup_header: None,
        };
        let p = temp("initrd", &vec![7u8; 8192]);
        let (addr, size) = load_initrd(&m, &p, &kernel, 32 << 20).unwrap();
        assert_eq!((addr.0, size), ((32 << 20) - 8192, 8192));
        // The same initrd in a guest whose RAM ends right after the kernel.
        assert!(matches!(
            load_initrd(&m, &p, &kernel, 0x20_1000),
            Err(BootError::InitrdTooLarge { .. })
        ));
        std::fs::remove_file(p).unwrap();
    }
}
