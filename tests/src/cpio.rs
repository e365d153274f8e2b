//! A writer of uncompressed `newc` cpio archives, the format the Linux kernel unpacks as an
//! initramfs. The nested KVM host gets its run-time payload (binaries, images, a script)
//! as such an archive appended to its initramfs, so nothing is rebuilt when only the
//! binaries change.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    Dir,
    File { mode: u32, data: Vec<u8> },
}

/// An archive being assembled: paths (relative, without a leading `/`) to members.
/// Parent directories are added for every file, since the kernel's unpacker does not
/// create them.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    members: BTreeMap<String, Member>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn add_parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            if !dir.is_empty() {
                self.members.entry(dir.to_string()).or_insert(Member::Dir);
            }
            at += i + 1;
        }
    }

    /// Adds a regular file with permission bits `mode` (e.g. 0o755).
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let path = path.trim_start_matches('/').to_string();
        assert!(!path.is_empty(), "empty cpio path");
        self.add_parents(&path);
        self.members.insert(
            path,
            Member::File {
                mode: mode & 0o7777,
                data,
            },
        );
    }

    /// The number of members, directories included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the archive has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Writes the archive: members sorted by path (so parents come first), owner root,
    /// mtime 0, then the trailer.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<u64> {
        let mut written = 0u64;
        for (ino, (path, member)) in (1u32..).zip(&self.members) {
            let (mode, data): (u32, &[u8]) = match member {
                Member::Dir => (0o040_755, &[]),
                Member::File { mode, data } => (0o100_000 | mode, data),
            };
            written += entry(w, ino, path, mode, data)?;
        }
        written += entry(w, 0, "TRAILER!!!", 0, &[])?;
        Ok(written)
    }
}

fn pad(w: &mut impl Write, len: u64) -> io::Result<u64> {
    let n = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..n as usize])?;
    Ok(n)
}

fn entry(w: &mut impl Write, ino: u32, name: &str, mode: u32, data: &[u8]) -> io::Result<u64> {
    let size = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio member over 4 GiB"))?;
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        maj = 0,
        min = 0,
        rmaj = 0,
        rmin = 0,
        namesize = name.len() + 1,
        check = 0,
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let mut n = (header.len() + name.len() + 1) as u64;
    n += pad(w, n)?;
    w.write_all(data)?;
    n += data.len() as u64;
    n += pad(w, n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a newc archive back into (name, mode, data) triples.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!((total - b.len()) % 4, 0, "member not 4-byte aligned");
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[110 + namesize - 1], 0);
            let data_at = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_at..data_at + size].to_vec();
            b = &b[(data_at + size).div_ceil(4) * 4..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn files_come_after_their_parent_directories() {
        let mut a = Archive::new();
        a.file("/payload/bin/vmm", 0o755, b"ELF".to_vec());
        a.file("lib64/ld.so", 0o644, vec![7; 5]);
        let mut buf = Vec::new();
        let n = a.write_to(&mut buf).unwrap();
        assert_eq!(n, buf.len() as u64);
        let got = parse(&buf);
        let names: Vec<_> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "lib64",
                "lib64/ld.so",
                "payload",
                "payload/bin",
                "payload/bin/vmm"
            ]
        );
        assert_eq!(got[0].1, 0o040_755);
        assert_eq!(got[1], ("lib64/ld.so".into(), 0o100_644, vec![7; 5]));
        assert_eq!(got[4].1, 0o100_755);
        assert_eq!(got[4].2, b"ELF");
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let mut buf = Vec::new();
        Archive::new().write_to(&mut buf).unwrap();
        assert!(parse(&buf).is_empty());
        assert_eq!(buf.len() % 4, 0);
    }
}
