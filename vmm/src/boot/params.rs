//! The zero page (`boot_params`) of the Linux x86 boot protocol: setup header, command
//! line, initrd, e820 map and RSDP address.

use devices::GuestMemory;
use devices::bits::{hi32, lo32};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress};

use super::loader::{BootError, LoadedKernel};
use crate::memory::layout::{self, E820Entry};

/// "HdrS": the setup header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// An "undefined" boot loader id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Kernel alignment Linux expects when there is no setup header (16 MiB).
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// Loadflags: the kernel is loaded high.
const LOADED_HIGH: u8 = 0x01;

/// What goes into the zero page.
#[derive(Debug, Clone)]
pub struct BootInfo<'a> {
    /// The kernel.
    pub kernel: &'a LoadedKernel,
    /// Length of the command line, without the NUL.
    pub cmdline_len: usize,
    /// Initrd address and size.
    pub initrd: Option<(GuestAddress, u64)>,
    /// The E820 map.
    pub e820: &'a [E820Entry],
    /// The RSDP.
    pub rsdp: GuestAddress,
}

/// Builds the zero page. Pure, so tests can inspect it.
pub fn build_boot_params(info: &BootInfo<'_>) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = info.kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = BOOT_FLAG;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = const { layout::addr32(layout::CMDLINE_START) };
    // Below MAX_CMDLINE_LEN (the config checks it): this never saturates.
    params.hdr.cmdline_size = u32::try_from(info.cmdline_len).unwrap_or(u32::MAX);
    if let Some((addr, size)) = info.initrd {
        // The loader keeps the initrd below initrd_addr_max, a 32-bit address, so the high
        // halves (the ext_ fields of boot protocol 2.12) are 0.
        params.hdr.ramdisk_image = lo32(addr.0);
        params.ext_ramdisk_image = hi32(addr.0);
        params.hdr.ramdisk_size = lo32(size);
        params.ext_ramdisk_size = hi32(size);
    }
    params.acpi_rsdp_addr = info.rsdp.0;
    let n = info.e820.len().min(params.e820_table.len());
    for (slot, e) in params.e820_table.iter_mut().zip(&info.e820[..n]) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    // At most the table's 128 slots: this never saturates.
    params.e820_entries = u8::try_from(n).unwrap_or(u8::MAX);
    params
}

/// Writes the zero page at [`layout::ZERO_PAGE_START`].
pub fn write_boot_params(mem: &GuestMemory, params: &boot_params) -> Result<(), BootError> {
    mem.write_obj(*params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(|e| BootError::GuestWrite("the zero page", e))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data
mod tests {
    use super::*;
    use vm_memory::ByteValued;

    #[test]
    fn zero_page_fields_for_elf() {
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            end: 0x200_0000,
            setup_header: None,
        };
        let e820 = layout::e820_map(256 << 20);
        let info = BootInfo {
            kernel: &kernel,
            cmdline_len: 42,
            initrd: Some((GuestAddress(0xf00_0000), 0x1234)),
            e820: &e820,
            rsdp: GuestAddress(layout::RSDP_START),
        };
        let p = build_boot_params(&info);
        let bytes = p.as_slice();
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        assert_eq!(
            u64::from_le_bytes(bytes[0x70..0x78].try_into().unwrap()),
            0xe_0000
        );
        assert_eq!(bytes[0x1e8] as usize, e820.len());
        assert_eq!(u16::from_le_bytes([bytes[0x1fe], bytes[0x1ff]]), 0xaa55);
        assert_eq!(u32_at(0x202), HDRS_MAGIC);
        assert_eq!(bytes[0x210], 0xff);
        assert_eq!(u32_at(0x218), 0xf00_0000);
        assert_eq!(u32_at(0x21c), 0x1234);
        assert_eq!(u32_at(0x228), layout::CMDLINE_START as u32);
        assert_eq!(u32_at(0x238), 42);
        // First e820 entry at 0x2d0: 20 bytes each.
        let e1 = 0x2d0 + 20 * 2;
        assert_eq!(
            u64::from_le_bytes(bytes[e1..e1 + 8].try_into().unwrap()),
            1 << 20
        );
        assert_eq!(u32_at(e1 + 16), layout::E820_RAM);

        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_params(&mem, &p).unwrap();
        let rsdp: u64 = mem
            .read_obj(GuestAddress(layout::ZERO_PAGE_START + 0x70))
            .unwrap();
        assert_eq!(rsdp, 0xe_0000);
    }
}
