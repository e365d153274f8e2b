#!/usr/bin/env bash
# Installs QEMU 11 (Debian trixie-backports) into a private prefix, and runs it from there.
#
#   guest-images/qemu.sh [install]        install (or check) the prefix; print the versions
#   guest-images/qemu.sh path             print the wrapper's path (after installing)
#   guest-images/qemu.sh run ARGS...      run qemu-system-x86_64 ARGS... from the prefix
#   guest-images/qemu.sh --refresh        install again from fresh package lists
#
# Where: guest-images/cache/qemu/ (or $VMM_QEMU_DIR):
#   apt/      a private apt configuration: its own sources.list (trixie, trixie-updates,
#             trixie-security, trixie-backports), lists, state and archives; the default
#             release is trixie-backports (as with `-t trixie-backports`: backports are
#             NotAutomatic, so otherwise trixie's QEMU 10 would win)
#   debs/     the downloaded .debs
#   prefix/   every .deb unpacked with `dpkg -x` (a merged-/usr tree with its own libc)
#   bin/qemu-system-x86_64   the wrapper: runs the prefix's QEMU through the prefix's own
#             loader and libraries, with QEMU_MODULE_DIR and a qemu-bundle symlink so
#             it loads its own modules and data (see docs/testing.md)
#   .stamp    written last; while it matches this script, a run is a no-op (no network)
#
# The packages are qemu-system-x86, qemu-system-common, qemu-system-data, seabios,
# ipxe-qemu and their whole Depends/Pre-Depends closure, fetched with `apt-get download`
# and unpacked with `dpkg -x`: nothing is installed on this system and none of its
# packages is upgraded. Only missing host tools (apt, dpkg, the Debian archive keyring)
# are installed from the system's own apt sources. The same prefix serves every QEMU-based
# test tier (the nested KVM host, and nicd's VFs through QEMU's vfio-user client).
#
# Environment:
#   VMM_QEMU_DIR=DIR        use DIR instead of guest-images/cache/qemu
#   QEMU_SERIES=11          the upstream major version required (default 11)
set -euo pipefail
umask 022
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${VMM_QEMU_DIR:-$here/cache/qemu}
series=${QEMU_SERIES:-11}
apt_dir="$dir/apt"
prefix="$dir/prefix"
wrapper="$dir/bin/qemu-system-x86_64"
stamp="$dir/.stamp"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# The top-level packages; their dependency closure comes along.
packages=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
suites=(trixie trixie-updates trixie-backports)

say() { printf 'qemu.sh: %s\n' "$*" >&2; }
die() { printf 'qemu.sh: error: %s\n' "$*" >&2; exit 1; }

# private_apt: apt with only our sources and state (private-apt.sh).
apt_default_release=trixie-backports
# shellcheck source=private-apt.sh
. "$here/private-apt.sh"

need_host_tools() {
  local missing=()
  command -v apt-get >/dev/null 2>&1 || die "apt-get is missing: this script needs a Debian system"
  command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
  [ -r "$keyring" ] || missing+=(debian-archive-keyring)
  command -v sha256sum >/dev/null 2>&1 || missing+=(coreutils)
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing host packages: ${missing[*]} (install them, or run as root)"
  say "installing missing host packages (from the system's sources): ${missing[*]}"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || die "could not install: ${missing[*]}"
}

script_hash() { cat "$here/qemu.sh" "$here/private-apt.sh" | sha256sum | cut -d' ' -f1; }

print_versions() {
  local v
  v=$("$wrapper" --version | head -n 1) || die "the installed QEMU does not run: $wrapper --version failed"
  say "$v ($(cat "$dir/qemu-package-version"))"
  say "firmware: seabios $(cat "$dir/seabios-package-version"), via $wrapper"
}

install() {
  if [ "${1:-}" != refresh ] && [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$(script_hash)" ] &&
    [ -x "$wrapper" ]; then
    say "QEMU in ${dir#"$PWD"/} is up to date"
    print_versions
    return 0
  fi
  need_host_tools
  rm -f "$stamp"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/state" \
    "$apt_dir/cache" "$dir/debs"
  : >"$apt_dir/state/status" # nothing is installed, so the whole closure is listed
  local s
  {
    for s in "${suites[@]}"; do
      printf 'deb [signed-by=%s] http://deb.debian.org/debian %s main\n' "$keyring" "$s"
    done
    printf 'deb [signed-by=%s] http://deb.debian.org/debian-security trixie-security main\n' \
      "$keyring"
  } >"$apt_dir/sources.list"
  say "refreshing the private package lists (${suites[*]} trixie-security) in ${apt_dir#"$PWD"/}"
  private_apt apt-get update -qq >/dev/null || die "apt-get update of the private lists failed"

  local qver
  qver=$(private_apt apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')
  case "$qver" in
    1:"$series".* | "$series".*) ;;
    *) die "trixie-backports offers qemu-system-x86 '${qver:-nothing}', not QEMU $series.x" ;;
  esac

  # The closure: every package named by Depends/Pre-Depends, recursively. Virtual
  # packages (<name>) are skipped: their providers are listed too.
  local closure=() p
  while read -r p; do
    closure+=("$p")
  done < <(private_apt apt-cache depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances "${packages[@]}" |
    grep -v '^[ <]' | sort -u)
  [ "${#closure[@]}" -gt 5 ] || die "apt-cache depends listed only: ${closure[*]}"

  # Download what is missing (apt-get download skips nothing, so check the cache first).
  local want=() have ver f
  for p in "${closure[@]}"; do
    ver=$(private_apt apt-cache policy "$p" | awk '/Candidate:/ { print $2 }')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate version of $p"
    have=""
    for f in "$dir/debs/${p}_"*.deb; do
      [ -f "$f" ] || continue
      if [ "$(dpkg-deb -f "$f" Version)" = "$ver" ]; then have=$f; else rm -f "$f"; fi
    done
    [ -n "$have" ] || want+=("$p=$ver")
  done
  if [ "${#want[@]}" -gt 0 ]; then
    say "downloading ${#want[@]} of ${#closure[@]} packages (QEMU $qver and its closure)"
    (cd "$dir/debs" && private_apt apt-get download -qq "${want[@]}" >/dev/null) ||
      die "apt-get download failed"
  fi
  # Exactly one .deb per package of the closure.
  local debs=()
  for p in "${closure[@]}"; do
    f=$(compgen -G "$dir/debs/${p}_*.deb" | head -n 1) || true
    [ -n "$f" ] || die "no .deb of $p in $dir/debs after downloading"
    debs+=("$f")
  done
  for f in "$dir/debs/"*.deb; do
    local keep=0 d
    for d in "${debs[@]}"; do [ "$d" = "$f" ] && keep=1; done
    [ "$keep" = 1 ] || rm -f "$f"
  done

  say "unpacking ${#debs[@]} packages into ${prefix#"$PWD"/}"
  rm -rf "$prefix.tmp"
  mkdir -p "$prefix.tmp"
  for f in "${debs[@]}"; do
    dpkg -x "$f" "$prefix.tmp" || die "dpkg -x $(basename "$f") failed"
  done
  local lib="$prefix.tmp/usr/lib/x86_64-linux-gnu"
  [ -x "$prefix.tmp/usr/bin/qemu-system-x86_64" ] || die "the packages have no usr/bin/qemu-system-x86_64"
  [ -e "$prefix.tmp/usr/lib64/ld-linux-x86-64.so.2" ] || die "the prefix has no usr/lib64/ld-linux-x86-64.so.2"
  # QEMU run through ld.so takes the loader's directory as its own; with `qemu-bundle`
  # there it finds its data, firmware and modules in the prefix, not the system's.
  ln -sfn ../../.. "$lib/qemu-bundle"
  rm -rf "$prefix"
  mv "$prefix.tmp" "$prefix"

  mkdir -p "$dir/bin"
  cat >"$wrapper.tmp" <<'EOF'
#!/bin/sh
# Written by guest-images/qemu.sh: QEMU from its private prefix, through the prefix's own
# loader and libraries (never the system's).
P=$(cd "$(dirname "$0")/../prefix" && pwd) || exit 127
L=$P/usr/lib/x86_64-linux-gnu
QEMU_MODULE_DIR=$L/qemu exec "$P/usr/lib64/ld-linux-x86-64.so.2" --library-path "$L" \
  "$P/usr/bin/qemu-system-x86_64" "$@"
EOF
  chmod 0755 "$wrapper.tmp"
  mv "$wrapper.tmp" "$wrapper"
  printf '%s\n' "$qver" >"$dir/qemu-package-version"
  private_apt apt-cache policy seabios | awk '/Candidate:/ { print $2 }' >"$dir/seabios-package-version"
  # A smoke check: QEMU loads, finds its accelerator and the EPYC model.
  "$wrapper" -accel help | grep -qx tcg || die "the installed QEMU lists no TCG accelerator"
  "$wrapper" -cpu help | grep -q "EPYC " || die "the installed QEMU has no EPYC CPU model"
  { script_hash; basename -a "${debs[@]}"; } >"$stamp"
  print_versions
}

case "${1:-install}" in
  install) install ;;
  --refresh) install refresh ;;
  path)
    install >/dev/null 2>&1 || install
    printf '%s\n' "$wrapper"
    ;;
  run)
    shift
    [ -x "$wrapper" ] || install >&2
    exec "$wrapper" "$@"
    ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' ;;
  *) die "unknown command '$1' (install, path, run ARGS..., --refresh)" ;;
esac
