//! The trivial guest of the boot benchmark, written as a tiny ELF: it prints one byte on
//! COM1 and asks to stop, in instructions that mean the same in 32-bit protected mode and
//! in 64-bit mode, so every VMM can start it its own way (64-bit entry at `e_entry`, or
//! 32-bit PVH entry from the Xen note).

/// Where the image is loaded and entered (1 MiB, where VMMs load kernels).
pub const LOAD_ADDR: u64 = 0x10_0000;
/// The byte it prints.
pub const MARKER: u8 = b'x';

/// The code: `out 0x3f8, 'x'`, then an ACPI S5 sleep (`out 0x600, 0x34`: SLP_TYP 5 with
/// SLP_EN, where our vmm and Cloud Hypervisor power off), then an i8042 reset (`out 0x64,
/// 0xfe`: Firecracker stops there; Cloud Hypervisor would reboot, hence the order), then
/// `hlt` forever.
const CODE: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, MARKER, // mov al, 'x'
    0xee,   // out dx, al
    0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
    0xb0, 0x34, // mov al, 0x34
    0xee, // out dx, al
    0x66, 0xba, 0x64, 0x00, // mov dx, 0x64
    0xb0, 0xfe, // mov al, 0xfe
    0xee, // out dx, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];

const EHDR_LEN: u16 = 64;
const PHDR_LEN: u16 = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The ELF image.
pub fn elf() -> Vec<u8> {
    let note_off = usize::from(EHDR_LEN) + 2 * usize::from(PHDR_LEN);
    // Note: namesz, descsz, type, "Xen\0", the 4-byte entry.
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    let code_off = note_off + note.len() + 4;
    let entry = LOAD_ADDR + code_off as u64;
    // The PVH entry is a 32-bit address; this one is a few hundred bytes above 1 MiB.
    let entry32 = u32::try_from(entry).expect("the entry point is below 4 GiB");
    note.extend_from_slice(&entry32.to_le_bytes());
    let total = code_off + CODE.len();

    let mut f = Vec::with_capacity(total);
    // e_ident: ELF, 64-bit, little endian, version 1, System V.
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&u64::from(EHDR_LEN).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&EHDR_LEN.to_le_bytes());
    f.extend_from_slice(&PHDR_LEN.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let phdr = |f: &mut Vec<u8>, kind: u32, flags: u32, off: usize, len: usize, align: u64| {
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&flags.to_le_bytes());
        f.extend_from_slice(&(off as u64).to_le_bytes());
        f.extend_from_slice(&(LOAD_ADDR + off as u64).to_le_bytes()); // p_vaddr
        f.extend_from_slice(&(LOAD_ADDR + off as u64).to_le_bytes()); // p_paddr
        f.extend_from_slice(&(len as u64).to_le_bytes()); // p_filesz
        f.extend_from_slice(&(len as u64).to_le_bytes()); // p_memsz
        f.extend_from_slice(&align.to_le_bytes());
    };
    // The whole file, read + execute, at 1 MiB.
    phdr(&mut f, PT_LOAD, 5, 0, total, 0x1000);
    phdr(&mut f, PT_NOTE, 4, note_off, note.len(), 4);
    f.extend_from_slice(&note);
    f.extend_from_slice(CODE);
    debug_assert_eq!(f.len(), total);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_loader_reads_it() {
        use linux_loader::loader::{KernelLoader, elf::Elf};
        use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let image = elf();
        let r = Elf::load(&mem, None, &mut std::io::Cursor::new(&image), None).unwrap();
        let entry = r.kernel_load.0;
        assert!(entry > LOAD_ADDR && entry < LOAD_ADDR + 0x200);
        let pvh = r.pvh_boot_cap;
        assert!(
            matches!(pvh, linux_loader::loader::elf::PvhBootCapability::PvhEntryPresent(a) if a.0 == entry),
            "{pvh:?}"
        );
        let mut code = [0u8; 7];
        mem.read_slice(&mut code, GuestAddress(entry)).unwrap();
        assert_eq!(code, [0x66, 0xba, 0xf8, 0x03, 0xb0, b'x', 0xee]);
    }
}
