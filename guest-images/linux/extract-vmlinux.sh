#!/usr/bin/env bash
# Extracts the uncompressed ELF vmlinux from a bzImage, as Linux's scripts/extract-vmlinux
# does: find the compressed payload by its magic bytes, decompress from there (the data
# after the payload only makes the decompressor complain), and keep the first result that
# is an ELF64 executable for x86-64.
#
#   extract-vmlinux.sh BZIMAGE OUT
#
# Needs grep (GNU, with -P), tail, readelf, and the decompressor of the kernel's format
# (Debian's 6.12 kernels use zstd; xz, gzip, lz4, bzip2, lzma and lzo are tried as well).
set -euo pipefail

die() { printf 'extract-vmlinux: error: %s\n' "$*" >&2; exit 1; }

[ "$#" -eq 2 ] || die "usage: extract-vmlinux.sh BZIMAGE OUT"
img=$1
out=$2
[ -r "$img" ] || die "cannot read $img"
command -v readelf >/dev/null 2>&1 || die "readelf (binutils) is needed"

tmp=$(mktemp "${out}.XXXXXX")
trap 'rm -f "$tmp"' EXIT

# An x86-64 ELF64 executable (vmlinux is ET_EXEC with e_entry at startup_64).
is_vmlinux() {
  local hdr
  hdr=$(LC_ALL=C readelf -h "$1" 2>/dev/null) || return 1
  grep -qE '^ *Class: +ELF64$' <<<"$hdr" &&
    grep -qE '^ *Type: +EXEC ' <<<"$hdr" &&
    grep -qE '^ *Machine: +Advanced Micro Devices X86-64$' <<<"$hdr"
}

# format | magic (PCRE byte escapes) | decompressor command
formats=(
  'zstd|\x28\xb5\x2f\xfd|zstd -dc'
  'xz|\xfd\x37\x7a\x58\x5a\x00|xz -dc'
  'gzip|\x1f\x8b\x08|gzip -dc'
  'lz4|\x02\x21\x4c\x18|lz4 -dc'
  'bzip2|\x42\x5a\x68|bzip2 -dc'
  'lzo|\x89\x4c\x5a\x4f|lzop -dc'
  'lzma|\x5d\x00\x00\x00|xz --format=lzma -dc'
)

tried=0
for f in "${formats[@]}"; do
  IFS='|' read -r name magic cmd <<<"$f"
  command -v "${cmd%% *}" >/dev/null 2>&1 || continue
  # Byte offsets of every occurrence of the magic (a few false positives are normal).
  offsets=$(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1 | head -n 64) || true
  for off in $offsets; do
    tried=$((tried + 1))
    # shellcheck disable=SC2086 # $cmd is a command and its flags
    tail -c "+$((off + 1))" "$img" | $cmd >"$tmp" 2>/dev/null || true
    if [ -s "$tmp" ] && is_vmlinux "$tmp"; then
      chmod 0644 "$tmp"
      mv "$tmp" "$out"
      trap - EXIT
      printf 'extract-vmlinux: %s payload at offset %d of %s: %d bytes of ELF64 vmlinux\n' \
        "$name" "$off" "$img" "$(stat -c %s "$out")" >&2
      exit 0
    fi
  done
done
die "no compressed ELF64 kernel found in $img ($tried candidate offsets tried)"
