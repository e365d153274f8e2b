#!/usr/bin/env python3
"""Packs a directory into a gzip'd newc cpio, reproducibly: sorted entries, owner root,
mtime 0, fixed inode numbers, gzip without a timestamp. No cpio binary needed.
Usage: mkinitramfs.py DIR OUT
"""
import gzip
import os
import stat
import sys


def entry(name, mode, data, ino, nlink=1):
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = head + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def main():
    root, out = sys.argv[1], sys.argv[2]
    paths = []
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            paths.append(os.path.relpath(os.path.join(d, n), root))
    blob = bytearray()
    for ino, rel in enumerate(sorted(paths), start=1):
        full = os.path.join(root, rel)
        st = os.lstat(full)
        perm = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            blob += entry(rel, stat.S_IFLNK | 0o777, os.readlink(full).encode(), ino)
        elif stat.S_ISDIR(st.st_mode):
            blob += entry(rel, stat.S_IFDIR | perm, b"", ino, 2)
        else:
            blob += entry(rel, stat.S_IFREG | perm, open(full, "rb").read(), ino)
    blob += entry("TRAILER!!!", 0, b"", 0)
    with open(out, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as g:
            g.write(bytes(blob))
    print(f"mkinitramfs: {len(paths)} entries, {os.path.getsize(out)} bytes -> {out}")


if __name__ == "__main__":
    main()
