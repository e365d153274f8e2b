#!/usr/bin/env python3
"""Extracts the ELF vmlinux from a bzImage (what Linux's scripts/extract-vmlinux does).

The bzImage carries the kernel compressed; find the payload by its magic, decompress it,
and keep the first candidate that is an ELF64 image.
Usage: extract-vmlinux.py BZIMAGE OUT
"""
import gzip
import lzma
import subprocess
import sys

MAGICS = [
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("xz", b"\xfd7zXZ\x00"),
    ("gzip", b"\x1f\x8b\x08"),
]


def decompress(kind, data):
    if kind == "gzip":
        try:
            return gzip.GzipFile(fileobj=__import__("io").BytesIO(data)).read()
        except (OSError, EOFError):
            return None
    if kind == "xz":
        try:
            return lzma.LZMADecompressor().decompress(data)
        except lzma.LZMAError:
            return None
    # zstd: the tool stops at the end of the frame; trailing bytes make it complain, which
    # is fine as long as the output is a complete ELF.
    r = subprocess.run(["zstd", "-dc"], input=data, capture_output=True)
    return r.stdout or None


def main():
    src, out = sys.argv[1], sys.argv[2]
    data = open(src, "rb").read()
    for kind, magic in MAGICS:
        pos = data.find(magic)
        while pos != -1:
            image = decompress(kind, data[pos:])
            if image and image[:4] == b"\x7fELF" and image[4] == 2:
                with open(out, "wb") as f:
                    f.write(image)
                print(f"extract-vmlinux: {kind} payload at offset {pos}: {len(image)} bytes")
                return 0
            pos = data.find(magic, pos + 1)
    print(f"extract-vmlinux: no compressed ELF kernel found in {src}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
