//! CPUID for the guest: KVM's supported set, filtered for a VM (hypervisor bit, topology of
//! N vCPUs, no PMU), then shaped by a named template.
//!
//! Templates exist for migration between unlike hosts and for hosts whose KVM cannot run
//! everything the CPU can: on PVM (nested, software-assisted KVM) guest ring 0 is emulated
//! by an instruction emulator that has no VEX, XSAVE, CMPXCHG16B, POPCNT, RDRAND/RDSEED,
//! RDPID/RDTSCP, INVPCID, FSGSBASE or SMAP (CLAC/STAC), so the `nested-safe` template hides
//! them and a well-behaved guest does not use them.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use kvm_bindings::{KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

/// A named CPUID template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuTemplate {
    /// What the host's KVM supports, filtered for a VM.
    Host,
    /// [`CpuTemplate::Host`] without the features a software-assisted nested KVM cannot
    /// emulate in guest ring 0.
    NestedSafe,
}

impl CpuTemplate {
    /// The names accepted on the command line.
    pub const NAMES: &[&str] = &["host", "nested-safe"];

    /// The template for this host when the user names none: `nested-safe` on PVM.
    pub fn for_host() -> Self {
        if host_kvm_is_pvm() {
            CpuTemplate::NestedSafe
        } else {
            CpuTemplate::Host
        }
    }
}

impl FromStr for CpuTemplate {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "host" => Ok(CpuTemplate::Host),
            "nested-safe" | "pvm" => Ok(CpuTemplate::NestedSafe),
            _ => Err(()),
        }
    }
}

impl fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpuTemplate::Host => "host",
            CpuTemplate::NestedSafe => "nested-safe",
        })
    }
}

/// Whether /dev/kvm is PVM: the kvm_pvm module is loaded and the CPU has neither VMX nor SVM
/// (read with the CPUID instruction: one stat and two instructions, no /proc/cpuinfo).
pub fn host_kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists() && !host_has_hardware_virtualization()
}

/// CPUID.1:ECX.VMX or CPUID.80000001h:ECX.SVM.
fn host_has_hardware_virtualization() -> bool {
    use std::arch::x86_64::__cpuid;
    const L1_ECX_VMX: u32 = 1 << 5;
    const EXT1_ECX_SVM: u32 = 1 << 2;
    // Leaf 0x8000_0000 reports the highest extended leaf, checked before asking for
    // 0x8000_0001.
    let vmx = __cpuid(1).ecx & L1_ECX_VMX != 0;
    let svm =
        __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & EXT1_ECX_SVM != 0;
    vmx || svm
}

/// Bit positions, by leaf and register.
mod bits {
    pub const L1_ECX_FMA: u32 = 12;
    pub const L1_ECX_CX16: u32 = 13;
    pub const L1_ECX_POPCNT: u32 = 23;
    pub const L1_ECX_XSAVE: u32 = 26;
    pub const L1_ECX_OSXSAVE: u32 = 27;
    pub const L1_ECX_AVX: u32 = 28;
    pub const L1_ECX_F16C: u32 = 29;
    pub const L1_ECX_RDRAND: u32 = 30;
    pub const L1_ECX_HYPERVISOR: u32 = 31;
    pub const L1_EDX_HTT: u32 = 28;
    /// Leaf 7.0 EBX: FSGSBASE, BMI1, HLE, AVX2, BMI2, INVPCID, RTM, AVX512F, AVX512DQ,
    /// RDSEED, SMAP, AVX512IFMA, AVX512PF, AVX512ER, AVX512CD, AVX512BW, AVX512VL.
    pub const L7_EBX_HIDE: &[u32] = &[
        0, 3, 4, 5, 8, 10, 11, 16, 17, 18, 20, 21, 26, 27, 28, 30, 31,
    ];
    /// Leaf 7.0 ECX: AVX512VBMI, AVX512VBMI2, VAES, VPCLMULQDQ, AVX512VNNI, AVX512BITALG,
    /// AVX512VPOPCNTDQ, RDPID.
    pub const L7_ECX_HIDE: &[u32] = &[1, 6, 9, 10, 11, 12, 14, 22];
    /// Leaf 7.0 EDX: AVX512_4VNNIW, AVX512_4FMAPS, AVX512_VP2INTERSECT, AMX-BF16,
    /// AVX512_FP16, AMX-TILE, AMX-INT8.
    pub const L7_EDX_HIDE: &[u32] = &[2, 3, 8, 22, 23, 24, 25];
    pub const EXT1_EDX_PDPE1GB: u32 = 26;
    pub const EXT1_EDX_RDTSCP: u32 = 27;
}

fn clear(reg: &mut u32, bits: &[u32]) {
    for b in bits {
        *reg &= !(1 << b);
    }
}

fn set_bit(reg: &mut u32, bit: u32, on: bool) {
    if on {
        *reg |= 1 << bit;
    } else {
        *reg &= !(1 << bit);
    }
}

/// Bits needed to hold `n - 1`: the APIC-ID shift of a level with `n` members.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The extended-topology subleaves (leaf 0xB or 0x1F) of one vCPU: one thread per core,
/// `n` cores in one package.
fn topology_leaf(function: u32, apic_id: u32, n: u32) -> Vec<kvm_cpuid_entry2> {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    vec![
        // SMT level: one thread, no shift.
        entry(0, 0, 1, 1),
        // Core level: n cores; the package is the next level up.
        entry(1, id_bits(n), n, 2),
        // Terminator.
        entry(2, 0, 0, 0),
    ]
}

/// The first and last leaf of the processor brand string (48 bytes, 16 per leaf).
const BRAND_LEAVES: std::ops::RangeInclusive<u32> = 0x8000_0002..=0x8000_0004;

/// The host CPU's brand string leaves (EAX, EBX, ECX, EDX of 0x8000_0002..=0x8000_0004),
/// or None when the CPU has none. KVM's supported CPUID zeroes these leaves, so without
/// this a Linux guest shows "model name: <family>/<model>".
pub fn host_brand() -> Option<[[u32; 4]; 3]> {
    use std::arch::x86_64::__cpuid;
    // CPUID is unprivileged, has no side effects and exists on every x86-64 CPU.
    if __cpuid(0x8000_0000).eax < *BRAND_LEAVES.end() {
        return None;
    }
    let mut brand = [[0u32; 4]; 3];
    for (regs, leaf) in brand.iter_mut().zip(BRAND_LEAVES) {
        let r = __cpuid(leaf);
        *regs = [r.eax, r.ebx, r.ecx, r.edx];
    }
    Some(brand)
}

/// Filters KVM's supported CPUID for vCPU `vcpu_id` of `num_vcpus` under `template`,
/// with the host's brand string ([`host_brand`]).
pub fn vcpu_cpuid(
    supported: &[kvm_cpuid_entry2],
    template: CpuTemplate,
    vcpu_id: u8,
    num_vcpus: u8,
) -> Vec<kvm_cpuid_entry2> {
    vcpu_cpuid_with_brand(supported, template, vcpu_id, num_vcpus, host_brand())
}

/// [`vcpu_cpuid`] with the brand string given: pure, so unit tests call it with
/// synthetic tables. Both templates pass the brand through (it names the CPU; it enables
/// nothing), in leaves 0x8000_0002..=0x8000_0004, which are added when KVM's table lacks
/// them but its highest extended leaf (0x8000_0000 EAX) covers them.
pub fn vcpu_cpuid_with_brand(
    supported: &[kvm_cpuid_entry2],
    template: CpuTemplate,
    vcpu_id: u8,
    num_vcpus: u8,
    brand: Option<[[u32; 4]; 3]>,
) -> Vec<kvm_cpuid_entry2> {
    let apic_id = u32::from(vcpu_id);
    let n = u32::from(num_vcpus);
    let nested_safe = template == CpuTemplate::NestedSafe;
    let mut out = Vec::with_capacity(supported.len() + 6);
    for e in supported {
        let mut e = *e;
        match (e.function, e.index) {
            (0x1, _) => {
                // EBX: initial APIC ID, logical processors per package, CLFLUSH line in
                // 8-byte units.
                e.ebx = (apic_id << 24) | ((n & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
                set_bit(&mut e.ecx, bits::L1_ECX_HYPERVISOR, true);
                set_bit(&mut e.edx, bits::L1_EDX_HTT, n > 1);
                if nested_safe {
                    clear(
                        &mut e.ecx,
                        &[
                            bits::L1_ECX_FMA,
                            bits::L1_ECX_CX16,
                            bits::L1_ECX_POPCNT,
                            bits::L1_ECX_XSAVE,
                            bits::L1_ECX_OSXSAVE,
                            bits::L1_ECX_AVX,
                            bits::L1_ECX_F16C,
                            bits::L1_ECX_RDRAND,
                        ],
                    );
                }
            }
            (0x4, _) => {
                // Cores per package in EAX[31:26]; caches shared by all cores only at L3.
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((n - 1) & 0x3f) << 26);
            }
            (0x7, 0) if nested_safe => {
                clear(&mut e.ebx, bits::L7_EBX_HIDE);
                clear(&mut e.ecx, bits::L7_ECX_HIDE);
                clear(&mut e.edx, bits::L7_EDX_HIDE);
            }
            (0x7, _) if nested_safe => {
                // Subleaf 1 and up: AVX-VNNI, AVX512-BF16, AVX-IFMA and newer; none needed.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            // No virtual PMU is set up: say so.
            (0xa, _) => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            // Rebuilt below from our own topology.
            (0xb | 0x1f, _) => continue,
            // No XSAVE means no XSAVE state components either.
            (0xd, _) if nested_safe => continue,
            (0x8000_0001, _) if nested_safe => {
                clear(&mut e.edx, &[bits::EXT1_EDX_PDPE1GB, bits::EXT1_EDX_RDTSCP]);
            }
            // Set below from the host's brand string, when it has one.
            (f, _) if BRAND_LEAVES.contains(&f) && brand.is_some() => continue,
            _ => {}
        }
        out.push(e);
    }
    let max_ext = supported
        .iter()
        .find(|e| e.function == 0x8000_0000)
        .map_or(0, |e| e.eax);
    if let Some(brand) = brand
        && max_ext >= *BRAND_LEAVES.end()
    {
        for (function, [eax, ebx, ecx, edx]) in BRAND_LEAVES.zip(brand) {
            out.push(kvm_cpuid_entry2 {
                function,
                eax,
                ebx,
                ecx,
                edx,
                ..Default::default()
            });
        }
    }
    for leaf in [0xb, 0x1f] {
        if supported.iter().any(|e| e.function == leaf) {
            out.extend(topology_leaf(leaf, apic_id, n));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, ecx: u32, ebx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn find(t: &[kvm_cpuid_entry2], f: u32, i: u32) -> Option<kvm_cpuid_entry2> {
        t.iter().copied().find(|e| e.function == f && e.index == i)
    }

    fn host_like() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0x0, 0, 0, 0, 0),
            leaf(0x1, 0, 0x7ffa_3223, 0x0001_0800, 0x178b_fbff),
            leaf(0x4, 0, 0, 0, 0),
            leaf(0x4, 3, 0, 0, 0),
            leaf(0x7, 0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff),
            leaf(0x7, 1, 0, 0, 0),
            leaf(0xa, 0, 1, 1, 1),
            leaf(0xb, 0, 0, 0, 0),
            leaf(0xd, 0, 0, 0, 0),
            leaf(0xd, 1, 0, 0, 0),
            leaf(0x8000_0001, 0, 0, 0, 0xffff_ffff),
        ]
    }

    #[test]
    fn topology_and_hypervisor_bit() {
        let out = vcpu_cpuid(&host_like(), CpuTemplate::Host, 3, 4);
        let l1 = find(&out, 1, 0).unwrap();
        assert_eq!(l1.ebx >> 24, 3, "initial APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor");
        assert_ne!(l1.edx & (1 << 28), 0, "HTT with more than one vCPU");
        let core = find(&out, 0xb, 1).unwrap();
        assert_eq!(
            (core.eax, core.ebx & 0xffff, (core.ecx >> 8) & 0xff),
            (2, 4, 2)
        );
        assert_eq!(core.edx, 3);
        assert_eq!(find(&out, 0xb, 0).unwrap().ebx, 1);
        assert_eq!(find(&out, 0xb, 2).unwrap().ecx >> 8, 0, "terminator");
        assert_eq!(find(&out, 0x4, 0).unwrap().eax >> 26, 3);
        assert_eq!(find(&out, 0xa, 0).unwrap().eax, 0, "no PMU");
        // No 0x1F on this host: none invented.
        assert!(find(&out, 0x1f, 0).is_none());
        // Host keeps AVX.
        assert_ne!(l1.ecx & (1 << bits::L1_ECX_AVX), 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let out = vcpu_cpuid(&host_like(), CpuTemplate::Host, 0, 1);
        assert_eq!(find(&out, 1, 0).unwrap().edx & (1 << 28), 0);
        assert_eq!(find(&out, 0xb, 1).unwrap().eax, 0);
    }

    #[test]
    fn nested_safe_hides_what_pvm_cannot_emulate() {
        let out = vcpu_cpuid(&host_like(), CpuTemplate::NestedSafe, 0, 2);
        let l1 = find(&out, 1, 0).unwrap();
        for b in [12, 13, 23, 26, 27, 28, 29, 30] {
            assert_eq!(l1.ecx & (1 << b), 0, "leaf 1 ECX bit {b}");
        }
        let l7 = find(&out, 7, 0).unwrap();
        for b in [0, 3, 5, 8, 10, 16, 18, 20, 30, 31] {
            assert_eq!(l7.ebx & (1 << b), 0, "leaf 7 EBX bit {b}");
        }
        assert_eq!(l7.ecx & (1 << 22), 0, "RDPID");
        assert_ne!(l7.ebx & (1 << 29), 0, "SHA (not VEX) stays");
        assert!(find(&out, 0xd, 0).is_none() && find(&out, 0xd, 1).is_none());
        let ext = find(&out, 0x8000_0001, 0).unwrap();
        assert_eq!(ext.edx & (3 << 26), 0, "1 GiB pages and RDTSCP");
    }

    fn brand(text: &str) -> [[u32; 4]; 3] {
        let mut bytes = [0u8; 48];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        let mut out = [[0u32; 4]; 3];
        for (i, chunk) in bytes.chunks(4).enumerate() {
            out[i / 4][i % 4] = u32::from_le_bytes(chunk.try_into().unwrap());
        }
        out
    }

    fn brand_text(t: &[kvm_cpuid_entry2]) -> String {
        let mut bytes = Vec::new();
        for leaf in BRAND_LEAVES {
            let e = find(t, leaf, 0).expect("brand leaf");
            for r in [e.eax, e.ebx, e.ecx, e.edx] {
                bytes.extend(r.to_le_bytes());
            }
        }
        String::from_utf8(bytes)
            .unwrap()
            .trim_end_matches('\0')
            .into()
    }

    #[test]
    fn brand_string_passes_through() {
        let mut table = host_like();
        // KVM lists the brand leaves zeroed, and 0x8000_0000 covers them.
        table.push(kvm_cpuid_entry2 {
            function: 0x8000_0000,
            eax: 0x8000_0008,
            ..Default::default()
        });
        for f in BRAND_LEAVES {
            table.push(leaf(f, 0, 0, 0, 0));
        }
        let name = "AMD EPYC Processor";
        for template in [CpuTemplate::Host, CpuTemplate::NestedSafe] {
            let out = vcpu_cpuid_with_brand(&table, template, 1, 2, Some(brand(name)));
            assert_eq!(brand_text(&out), name, "{template}");
            for f in BRAND_LEAVES {
                assert_eq!(out.iter().filter(|e| e.function == f).count(), 1);
            }
        }
        // Leaves missing from KVM's table are added when 0x8000_0000 covers them...
        table.retain(|e| !BRAND_LEAVES.contains(&e.function));
        let out = vcpu_cpuid_with_brand(&table, CpuTemplate::Host, 0, 1, Some(brand(name)));
        assert_eq!(brand_text(&out), name);
        // ...and not otherwise.
        table.retain(|e| e.function != 0x8000_0000);
        let out = vcpu_cpuid_with_brand(&table, CpuTemplate::Host, 0, 1, Some(brand(name)));
        assert!(find(&out, 0x8000_0002, 0).is_none());
        // No host brand: KVM's leaves stay as they are.
        let out = vcpu_cpuid_with_brand(&host_like(), CpuTemplate::Host, 0, 1, None);
        assert!(find(&out, 0x8000_0002, 0).is_none());
    }

    #[test]
    fn host_brand_reads_this_cpu() {
        // Every x86-64 CPU this runs on has a brand string of printable ASCII.
        let b = host_brand().expect("a brand string");
        let bytes: Vec<u8> = b.iter().flatten().flat_map(|r| r.to_le_bytes()).collect();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim_end_matches('\0').trim();
        assert!(!text.is_empty());
        assert!(text.bytes().all(|c| (0x20..0x7f).contains(&c)), "{text:?}");
    }

    #[test]
    fn names() {
        for n in CpuTemplate::NAMES {
            assert_eq!(n.parse::<CpuTemplate>().unwrap().to_string(), *n);
        }
        assert!("AVX".parse::<CpuTemplate>().is_err());
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(5), 3);
        assert_eq!(id_bits(254), 8);
    }
}
