//! The 16-byte header every vfio-user message starts with, and the command numbers.

use super::codec::DecodeError;

/// Size of the header on the wire.
pub const HEADER_SIZE: usize = 16;

/// Bits 0-3 of the flags: the message type.
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Message type: a command.
pub const TYPE_COMMAND: u32 = 0;
/// Message type: a reply.
pub const TYPE_REPLY: u32 = 1;
/// The sender wants no reply to this command.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// The reply reports an error; the error field holds the errno.
pub const FLAG_ERROR: u32 = 1 << 5;

/// Command numbers (the spec's table; 14 was QEMU's old dirty-pages command).
pub mod cmd {
    /// VFIO_USER_VERSION.
    pub const VERSION: u16 = 1;
    /// VFIO_USER_DMA_MAP.
    pub const DMA_MAP: u16 = 2;
    /// VFIO_USER_DMA_UNMAP.
    pub const DMA_UNMAP: u16 = 3;
    /// VFIO_USER_DEVICE_GET_INFO.
    pub const DEVICE_GET_INFO: u16 = 4;
    /// VFIO_USER_DEVICE_GET_REGION_INFO.
    pub const GET_REGION_INFO: u16 = 5;
    /// VFIO_USER_DEVICE_GET_REGION_IO_FDS.
    pub const GET_REGION_IO_FDS: u16 = 6;
    /// VFIO_USER_DEVICE_GET_IRQ_INFO.
    pub const GET_IRQ_INFO: u16 = 7;
    /// VFIO_USER_DEVICE_SET_IRQS.
    pub const SET_IRQS: u16 = 8;
    /// VFIO_USER_REGION_READ.
    pub const REGION_READ: u16 = 9;
    /// VFIO_USER_REGION_WRITE.
    pub const REGION_WRITE: u16 = 10;
    /// VFIO_USER_DMA_READ (server to client; not implemented here).
    pub const DMA_READ: u16 = 11;
    /// VFIO_USER_DMA_WRITE (server to client; not implemented here).
    pub const DMA_WRITE: u16 = 12;
    /// VFIO_USER_DEVICE_RESET.
    pub const DEVICE_RESET: u16 = 13;
    /// VFIO_USER_REGION_WRITE_MULTI (not negotiated by this implementation).
    pub const REGION_WRITE_MULTI: u16 = 15;
}

/// The message header, as on the wire (little-endian, the host's order on x86 and arm64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// The sender's message id; a reply echoes the command's.
    pub id: u16,
    /// The command number (see [`cmd`]); a reply repeats it.
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// Type, no-reply and error bits.
    pub flags: u32,
    /// The errno of an error reply; reserved (0) otherwise.
    pub error: u32,
}

impl Header {
    /// A command header for a message of `size` bytes in all.
    pub fn command(id: u16, command: u16, size: u32, no_reply: bool) -> Self {
        let flags = TYPE_COMMAND | if no_reply { FLAG_NO_REPLY } else { 0 };
        Self {
            id,
            command,
            size,
            flags,
            error: 0,
        }
    }

    /// A reply header for a message of `size` bytes in all.
    pub fn reply(id: u16, command: u16, size: u32) -> Self {
        Self {
            id,
            command,
            size,
            flags: TYPE_REPLY,
            error: 0,
        }
    }

    /// An error reply header: header only, with `errno`.
    pub fn error_reply(id: u16, command: u16, errno: u32) -> Self {
        Self {
            id,
            command,
            size: crate::vfio_user::messages::wire_len(HEADER_SIZE),
            flags: TYPE_REPLY | FLAG_ERROR,
            error: errno,
        }
    }

    /// The type bits (0 command, 1 reply, others invalid).
    pub fn msg_type(&self) -> u32 {
        self.flags & FLAG_TYPE_MASK
    }

    /// True for a command message.
    pub fn is_command(&self) -> bool {
        self.msg_type() == TYPE_COMMAND
    }

    /// True for a reply message.
    pub fn is_reply(&self) -> bool {
        self.msg_type() == TYPE_REPLY
    }

    /// True when the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// True for an error reply.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// Payload size the header announces (0 when `size` is below the header's own size,
    /// which [`Header::decode`] refuses anyway).
    pub fn payload_len(&self) -> usize {
        usize::try_from(self.size)
            .unwrap_or(usize::MAX)
            .saturating_sub(HEADER_SIZE)
    }

    /// The 16 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    /// Parses a header; refuses a short buffer and a size smaller than the header.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let b: &[u8; HEADER_SIZE] = bytes
            .get(..HEADER_SIZE)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Truncated {
                what: "header",
                need: HEADER_SIZE,
                have: bytes.len(),
            })?;
        let h = Self {
            id: u16::from_le_bytes([b[0], b[1]]),
            command: u16::from_le_bytes([b[2], b[3]]),
            size: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        };
        if (h.size as usize) < HEADER_SIZE {
            return Err(DecodeError::SizeBelowHeader { size: h.size });
        }
        Ok(h)
    }
}
