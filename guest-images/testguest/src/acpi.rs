//! ACPI tables, read-only: RSDP, RSDT/XSDT, any table by signature, FADT's DSDT, MADT.
//!
//! Every table is checksum-checked when it is looked up, and every pointer bounds-checked
//! first, so a broken VMM yields an [`AcpiError`] rather than a fault.

use core::fmt;

use crate::phys::{self, le_u32, le_u64};

/// Where the RSDP is searched for (the BIOS read-only area).
pub const RSDP_SCAN: (u64, u64) = (0xe_0000, 0x10_0000);
/// Length of an ACPI 1.0 RSDP, covered by its first checksum.
const RSDP_V1_LEN: usize = 20;
/// Length of an ACPI 2.0+ RSDP, covered by its extended checksum.
const RSDP_V2_LEN: u32 = 36;
/// Length of the common table header.
pub const HEADER_LEN: usize = 36;
/// Longest table believed (a sanity bound against garbage lengths).
const MAX_TABLE_LEN: u32 = 16 << 20;

/// A 4-byte table signature, printable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub [u8; 4]);

impl fmt::Display for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            let c = if b.is_ascii_graphic() {
                char::from(b)
            } else {
                '?'
            };
            fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What is wrong with the ACPI tables.
#[derive(Debug, Clone, Copy)]
pub enum AcpiError {
    /// No RSDP with a valid checksum in the scanned area.
    NoRsdp,
    /// The RSDP at `addr` is malformed.
    BadRsdp { addr: u64, why: &'static str },
    /// A pointer to a table is 0 or outside mapped memory.
    BadPointer { what: &'static str, addr: u64 },
    /// A table's length field is implausible.
    BadLength { sig: Sig, addr: u64, len: u32 },
    /// A table's bytes do not sum to 0.
    Checksum { sig: Sig, addr: u64, sum: u8 },
    /// A table has another signature than its pointer promised.
    WrongSignature {
        addr: u64,
        expected: Sig,
        found: Sig,
    },
    /// The root table lists no table with this signature.
    Missing { sig: Sig },
    /// A MADT entry runs past the table or has a length below 2.
    BadMadtEntry { offset: usize, len: u8 },
    /// More local APIC entries than fit the list.
    TooManyApics,
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoRsdp => write!(
                f,
                "no RSDP with a valid checksum in {:#x}..{:#x}",
                RSDP_SCAN.0, RSDP_SCAN.1
            ),
            Self::BadRsdp { addr, why } => write!(f, "RSDP at {addr:#x}: {why}"),
            Self::BadPointer { what, addr } => {
                write!(f, "{what} points at {addr:#x}, outside guest memory")
            }
            Self::BadLength { sig, addr, len } => write!(f, "{sig} at {addr:#x} has length {len}"),
            Self::Checksum { sig, addr, sum } => {
                write!(
                    f,
                    "{sig} at {addr:#x}: checksum off (bytes sum to {sum:#04x})"
                )
            }
            Self::WrongSignature {
                addr,
                expected,
                found,
            } => {
                write!(f, "table at {addr:#x} is {found}, expected {expected}")
            }
            Self::Missing { sig } => write!(f, "no {sig} table in the XSDT/RSDT"),
            Self::BadMadtEntry { offset, len } => {
                write!(f, "MADT entry at offset {offset} has bad length {len}")
            }
            Self::TooManyApics => write!(f, "MADT lists more than {MAX_APICS} local APICs"),
        }
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// The Root System Description Pointer.
#[derive(Debug, Clone, Copy)]
pub struct Rsdp {
    /// Where it is.
    pub addr: u64,
    /// 0 for ACPI 1.0 (RSDT only), 2 and up for ACPI 2.0+ (XSDT).
    pub revision: u8,
    /// RSDT address.
    pub rsdt: u32,
    /// XSDT address (revision >= 2), else 0.
    pub xsdt: u64,
}

/// The first 16-byte aligned RSDP with a valid ACPI 1.0 checksum in [`RSDP_SCAN`].
pub fn scan_rsdp() -> Option<u64> {
    (RSDP_SCAN.0..RSDP_SCAN.1).step_by(16).find(|&addr| {
        phys::bytes(addr, RSDP_V1_LEN as u64)
            .is_some_and(|b| &b[..8] == b"RSD PTR " && checksum(b) == 0)
    })
}

/// The RSDP at `addr`, with both checksums checked.
pub fn rsdp_at(addr: u64) -> Result<Rsdp, AcpiError> {
    let bad = |why| AcpiError::BadRsdp { addr, why };
    let v1 = phys::bytes(addr, RSDP_V1_LEN as u64).ok_or(AcpiError::BadPointer {
        what: "RSDP pointer",
        addr,
    })?;
    if &v1[..8] != b"RSD PTR " {
        return Err(bad("no \"RSD PTR \" signature"));
    }
    if checksum(v1) != 0 {
        return Err(bad("ACPI 1.0 checksum (20 bytes) off"));
    }
    let revision = v1[15];
    let rsdt = le_u32(v1, 16);
    let mut xsdt = 0;
    if revision >= 2 {
        let v2 = phys::bytes(addr, u64::from(RSDP_V2_LEN)).ok_or(bad("cut off"))?;
        let len = le_u32(v2, 20);
        if !(RSDP_V2_LEN..=4096).contains(&len) {
            return Err(bad("length field below 36 or implausible"));
        }
        let full = phys::bytes(addr, u64::from(len)).ok_or(bad("cut off"))?;
        if checksum(full) != 0 {
            return Err(bad("extended checksum (36 bytes) off"));
        }
        xsdt = le_u64(v2, 24);
    }
    Ok(Rsdp {
        addr,
        revision,
        rsdt,
        xsdt,
    })
}

/// A system description table with a valid checksum.
#[derive(Debug, Clone, Copy)]
pub struct Sdt {
    /// Where it is.
    pub addr: u64,
    /// All of it, header included.
    pub bytes: &'static [u8],
}

impl Sdt {
    /// Its signature.
    pub fn sig(&self) -> Sig {
        Sig([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }

    /// Its length (header included).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// The table at `addr`, checked: mapped, plausible length, checksum, and the signature
/// `expected` if given. `what` names the pointer in errors.
pub fn sdt_at(addr: u64, expected: Option<&[u8; 4]>, what: &'static str) -> Result<Sdt, AcpiError> {
    let header =
        phys::bytes(addr, HEADER_LEN as u64).ok_or(AcpiError::BadPointer { what, addr })?;
    let sig = Sig([header[0], header[1], header[2], header[3]]);
    if let Some(expected) = expected
        && &sig.0 != expected
    {
        return Err(AcpiError::WrongSignature {
            addr,
            expected: Sig(*expected),
            found: sig,
        });
    }
    let len = le_u32(header, 4);
    if !(HEADER_LEN as u32..=MAX_TABLE_LEN).contains(&len) {
        return Err(AcpiError::BadLength { sig, addr, len });
    }
    let bytes = phys::bytes(addr, u64::from(len)).ok_or(AcpiError::BadPointer { what, addr })?;
    let sum = checksum(bytes);
    if sum != 0 {
        return Err(AcpiError::Checksum { sig, addr, sum });
    }
    Ok(Sdt { addr, bytes })
}

/// The XSDT (or, for an ACPI 1.0 RSDP, the RSDT): the list of all other tables but DSDT
/// and FACS.
#[derive(Debug, Clone, Copy)]
pub struct Root {
    /// The table itself.
    pub sdt: Sdt,
    /// 8 for the XSDT, 4 for the RSDT.
    entry_size: usize,
}

impl Root {
    /// The root table the RSDP points at: XSDT when there is one.
    pub fn from_rsdp(rsdp: &Rsdp) -> Result<Root, AcpiError> {
        if rsdp.revision >= 2 && rsdp.xsdt != 0 {
            let sdt = sdt_at(rsdp.xsdt, Some(b"XSDT"), "RSDP.XsdtAddress")?;
            Ok(Root { sdt, entry_size: 8 })
        } else {
            let sdt = sdt_at(u64::from(rsdp.rsdt), Some(b"RSDT"), "RSDP.RsdtAddress")?;
            Ok(Root { sdt, entry_size: 4 })
        }
    }

    /// The table addresses it lists.
    pub fn entries(&self) -> impl Iterator<Item = u64> + '_ {
        let body = &self.sdt.bytes[HEADER_LEN..];
        body.chunks_exact(self.entry_size).map(|e| {
            if e.len() == 8 {
                le_u64(e, 0)
            } else {
                u64::from(le_u32(e, 0))
            }
        })
    }

    /// Every table it lists, each checked.
    pub fn tables(&self) -> impl Iterator<Item = Result<Sdt, AcpiError>> + '_ {
        self.entries()
            .map(|addr| sdt_at(addr, None, "XSDT/RSDT entry"))
    }

    /// The first listed table with signature `sig`; errors from tables before it count.
    pub fn find(&self, sig: &[u8; 4]) -> Result<Option<Sdt>, AcpiError> {
        for table in self.tables() {
            let table = table?;
            if &table.sig().0 == sig {
                return Ok(Some(table));
            }
        }
        Ok(None)
    }
}

/// The DSDT address in a FADT: X_DSDT when the table is long enough and it is set,
/// else DSDT.
pub fn fadt_dsdt_addr(fadt: &Sdt) -> u64 {
    const DSDT: usize = 40;
    const X_DSDT: usize = 140;
    if fadt.len() >= X_DSDT + 8 {
        let x = le_u64(fadt.bytes, X_DSDT);
        if x != 0 {
            return x;
        }
    }
    u64::from(le_u32(fadt.bytes, DSDT))
}

/// A Generic Address Structure: where an ACPI register is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gas {
    /// Address space: [`GAS_SYSTEM_MEMORY`], [`GAS_SYSTEM_IO`], ...
    pub space: u8,
    /// Register width in bits.
    pub bit_width: u8,
    /// The address (a port number for system I/O).
    pub addr: u64,
}

/// GAS address space: memory.
pub const GAS_SYSTEM_MEMORY: u8 = 0;
/// GAS address space: I/O ports.
pub const GAS_SYSTEM_IO: u8 = 1;

impl fmt::Display for Gas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let space = match self.space {
            GAS_SYSTEM_MEMORY => "memory",
            GAS_SYSTEM_IO => "port",
            _ => "space?",
        };
        write!(f, "{space} {:#x} ({} bits)", self.addr, self.bit_width)
    }
}

/// The registers of the FADT that power management needs.
#[derive(Debug, Clone, Copy)]
pub struct Fadt(pub Sdt);

impl Fadt {
    const FLAGS: usize = 112;
    const FLAG_RESET_REG_SUP: u32 = 1 << 10;
    const FLAG_HW_REDUCED: u32 = 1 << 20;
    const RESET_REG: usize = 116;
    const RESET_VALUE: usize = 128;
    const PM1A_CNT_BLK: usize = 64;
    const SLEEP_CONTROL_REG: usize = 244;

    fn gas(&self, off: usize) -> Option<Gas> {
        let b = self.0.bytes.get(off..off + 12)?;
        let gas = Gas {
            space: b[0],
            bit_width: b[1],
            addr: le_u64(b, 4),
        };
        (gas.addr != 0).then_some(gas)
    }

    fn flags(&self) -> u32 {
        self.0
            .bytes
            .get(Self::FLAGS..Self::FLAGS + 4)
            .map_or(0, |b| le_u32(b, 0))
    }

    /// Hardware-reduced ACPI: sleep through SLEEP_CONTROL_REG, not PM1 blocks.
    pub fn hw_reduced(&self) -> bool {
        self.flags() & Self::FLAG_HW_REDUCED != 0
    }

    /// The reset register and the value to write, when the FADT offers one.
    pub fn reset_reg(&self) -> Option<(Gas, u8)> {
        if self.flags() & Self::FLAG_RESET_REG_SUP == 0 {
            return None;
        }
        let value = *self.0.bytes.get(Self::RESET_VALUE)?;
        Some((self.gas(Self::RESET_REG)?, value))
    }

    /// SLEEP_CONTROL_REG (hardware-reduced ACPI).
    pub fn sleep_control_reg(&self) -> Option<Gas> {
        self.gas(Self::SLEEP_CONTROL_REG)
    }

    /// PM1a_CNT_BLK, an I/O port (fixed-hardware ACPI), 0 if none.
    pub fn pm1a_cnt_blk(&self) -> u32 {
        self.0
            .bytes
            .get(Self::PM1A_CNT_BLK..Self::PM1A_CNT_BLK + 4)
            .map_or(0, |b| le_u32(b, 0))
    }
}

/// SLP_TYPa of `\_S5_` in a DSDT: the first element of the package the name is bound to
/// (`Name (_S5_, Package () { SLP_TYPa, ... })`). A byte-level search, not an AML
/// interpreter: enough for a static package of constants.
pub fn s5_slp_typ(dsdt: &Sdt) -> Option<u8> {
    const NAME_OP: u8 = 0x08;
    const PACKAGE_OP: u8 = 0x12;
    let body = &dsdt.bytes[HEADER_LEN..];
    let at = body.windows(4).position(|w| w == b"_S5_")?;
    // NameOp, optionally a root prefix, then the name.
    let named = (at >= 1 && body[at - 1] == NAME_OP)
        || (at >= 2 && body[at - 1] == b'\\' && body[at - 2] == NAME_OP);
    let rest = body.get(at + 4..)?;
    if !named || *rest.first()? != PACKAGE_OP {
        return None;
    }
    // PkgLength: bits 7:6 of the lead byte count the bytes that follow it.
    let pkg_len_bytes = 1 + usize::from(rest.get(1)? >> 6);
    // Then NumElements (one byte), then the first element.
    let element = rest.get(1 + pkg_len_bytes + 1..)?;
    match *element.first()? {
        0x00 => Some(0),                 // ZeroOp
        0x01 => Some(1),                 // OneOp
        0x0a => element.get(1).copied(), // BytePrefix
        _ => None,
    }
}

/// MADT Local APIC flags: the processor is enabled.
pub const MADT_ENABLED: u32 = 1;

/// One MADT entry.
#[derive(Debug, Clone, Copy)]
pub enum MadtEntry {
    /// Type 0: Processor Local APIC.
    LocalApic { uid: u8, apic_id: u8, flags: u32 },
    /// Type 1: I/O APIC.
    IoApic { id: u8, addr: u32, gsi_base: u32 },
    /// Type 9: Processor Local x2APIC.
    LocalX2Apic { apic_id: u32, flags: u32, uid: u32 },
    /// Any other type.
    Other { kind: u8, len: u8 },
}

impl fmt::Display for MadtEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::LocalApic {
                uid,
                apic_id,
                flags,
            } => {
                write!(f, "lapic(uid {uid}, id {apic_id}, flags {flags:#x})")
            }
            Self::IoApic { id, addr, gsi_base } => {
                write!(f, "ioapic(id {id}, {addr:#x}, gsi {gsi_base})")
            }
            Self::LocalX2Apic {
                apic_id,
                flags,
                uid,
            } => {
                write!(f, "x2apic(uid {uid}, id {apic_id}, flags {flags:#x})")
            }
            Self::Other { kind, len } => write!(f, "type {kind} ({len} bytes)"),
        }
    }
}

/// The entries of a MADT; a malformed entry ends the walk with an error.
pub fn madt_entries(madt: &Sdt) -> impl Iterator<Item = Result<MadtEntry, AcpiError>> + '_ {
    // Header, local APIC address (u32), flags (u32), then entries.
    let mut offset = HEADER_LEN + 8;
    let bytes = madt.bytes;
    core::iter::from_fn(move || {
        if offset >= bytes.len() {
            return None;
        }
        let len = bytes.get(offset + 1).copied().unwrap_or(0);
        let end = offset + usize::from(len);
        if len < 2 || end > bytes.len() {
            let error = AcpiError::BadMadtEntry { offset, len };
            offset = bytes.len();
            return Some(Err(error));
        }
        let e = &bytes[offset..end];
        let entry = match (e[0], len) {
            (0, 8) => MadtEntry::LocalApic {
                uid: e[2],
                apic_id: e[3],
                flags: le_u32(e, 4),
            },
            (1, 12) => MadtEntry::IoApic {
                id: e[2],
                addr: le_u32(e, 4),
                gsi_base: le_u32(e, 8),
            },
            (9, 16) => MadtEntry::LocalX2Apic {
                apic_id: le_u32(e, 4),
                flags: le_u32(e, 8),
                uid: le_u32(e, 12),
            },
            (kind, len) => MadtEntry::Other { kind, len },
        };
        offset = end;
        Some(Ok(entry))
    })
}

/// Most local APICs [`ApicIds`] holds.
pub const MAX_APICS: usize = 256;

/// The APIC IDs of the enabled processors a MADT lists, in table order.
#[derive(Debug, Clone)]
pub struct ApicIds {
    ids: [u32; MAX_APICS],
    len: usize,
}

impl ApicIds {
    /// The enabled local APIC and x2APIC entries of `madt`.
    pub fn from_madt(madt: &Sdt) -> Result<Self, AcpiError> {
        let mut list = ApicIds {
            ids: [0; MAX_APICS],
            len: 0,
        };
        for entry in madt_entries(madt) {
            let id = match entry? {
                MadtEntry::LocalApic { apic_id, flags, .. } if flags & MADT_ENABLED != 0 => {
                    u32::from(apic_id)
                }
                MadtEntry::LocalX2Apic { apic_id, flags, .. } if flags & MADT_ENABLED != 0 => {
                    apic_id
                }
                _ => continue,
            };
            if list.len == MAX_APICS {
                return Err(AcpiError::TooManyApics);
            }
            list.ids[list.len] = id;
            list.len += 1;
        }
        Ok(list)
    }

    /// The IDs.
    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..self.len]
    }

    /// The first ID that appears twice, if any.
    pub fn first_duplicate(&self) -> Option<u32> {
        let ids = self.as_slice();
        ids.iter()
            .enumerate()
            .find(|&(i, id)| ids[..i].contains(id))
            .map(|(_, &id)| id)
    }
}

/// The MADT, through the scanned RSDP and its root table. (The `acpi` scenario walks the
/// tables step by step instead, to check each.)
pub fn madt() -> Result<Sdt, AcpiError> {
    let rsdp = rsdp_at(scan_rsdp().ok_or(AcpiError::NoRsdp)?)?;
    let root = Root::from_rsdp(&rsdp)?;
    root.find(b"APIC")?
        .ok_or(AcpiError::Missing { sig: Sig(*b"APIC") })
}
