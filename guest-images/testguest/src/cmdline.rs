//! The kernel command line: `testguest.scenario=NAME[,NAME...]`, `testguest.mem=SIZE`;
//! other words are ignored.

use core::fmt;

use crate::bootparams::BootParams;
use crate::phys;

/// Key of the scenario list.
pub const SCENARIO_KEY: &str = "testguest.scenario";
/// Key of the memory size the VMM was given.
pub const MEM_KEY: &str = "testguest.mem";
/// How far to look for the terminating NUL when the zero page gives no cmdline_size.
const DEFAULT_MAX: u32 = 4096;
/// Never look further than this, whatever cmdline_size says.
const HARD_MAX: u32 = 1 << 20;

/// The command line, as text.
#[derive(Debug, Clone, Copy)]
pub struct Cmdline {
    text: &'static str,
}

/// Why the command line cannot be read.
#[derive(Debug, Clone, Copy)]
pub enum CmdlineError {
    /// hdr.cmd_line_ptr is 0.
    NoPointer,
    /// The pointer and size reach outside mapped memory.
    Unmapped { addr: u64, len: u32 },
    /// No NUL within the first `len` bytes.
    NotTerminated { addr: u64, len: u32 },
    /// A byte that is not printable ASCII.
    NotAscii { offset: usize, byte: u8 },
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoPointer => write!(f, "boot_params.hdr.cmd_line_ptr is 0"),
            Self::Unmapped { addr, len } => {
                write!(
                    f,
                    "command line at {addr:#x} (+{len:#x}) is outside guest memory"
                )
            }
            Self::NotTerminated { addr, len } => {
                write!(f, "command line at {addr:#x} has no NUL within {len} bytes")
            }
            Self::NotAscii { offset, byte } => {
                write!(
                    f,
                    "command line byte {offset} is {byte:#04x}, not printable ASCII"
                )
            }
        }
    }
}

impl Cmdline {
    /// The command line the zero page points at.
    pub fn from_boot_params(bp: &BootParams) -> Result<Self, CmdlineError> {
        let addr = bp.cmd_line_ptr();
        if addr == 0 {
            return Err(CmdlineError::NoPointer);
        }
        // cmdline_size is the longest command line without its NUL.
        let len = match bp.cmdline_size() {
            0 => DEFAULT_MAX,
            n => n.saturating_add(1).min(HARD_MAX),
        };
        // Nothing in the guest writes the command line.
        let bytes =
            phys::bytes(addr, u64::from(len)).ok_or(CmdlineError::Unmapped { addr, len })?;
        let end = bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(CmdlineError::NotTerminated { addr, len })?;
        let bytes = &bytes[..end];
        if let Some(offset) = bytes
            .iter()
            .position(|&b| !(b == b' ' || b.is_ascii_graphic()))
        {
            return Err(CmdlineError::NotAscii {
                offset,
                byte: bytes[offset],
            });
        }
        let text = core::str::from_utf8(bytes).map_err(|e| CmdlineError::NotAscii {
            offset: e.valid_up_to(),
            byte: bytes[e.valid_up_to()],
        })?;
        Ok(Cmdline { text })
    }

    /// The whole line.
    pub fn as_str(&self) -> &'static str {
        self.text
    }

    /// Values of every `key=value` word, in order.
    pub fn values(&self, key: &'static str) -> impl Iterator<Item = &'static str> + Clone {
        self.text.split_ascii_whitespace().filter_map(move |word| {
            word.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        })
    }

    /// The scenario names, in order: every `testguest.scenario=` word, split at commas.
    pub fn scenarios(&self) -> impl Iterator<Item = &'static str> + Clone {
        self.values(SCENARIO_KEY)
            .flat_map(|v| v.split(','))
            .filter(|name| !name.is_empty())
    }

    /// The value of `testguest.mem=` (the last one wins), unparsed.
    pub fn mem(&self) -> Option<&'static str> {
        self.values(MEM_KEY).last()
    }
}

/// Parses a size: decimal bytes, or with a K, M or G suffix (either case), e.g. `256M`.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Parses a MAC address: six two-digit hex bytes separated by colons, e.g.
/// `02:00:00:00:00:fe`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
