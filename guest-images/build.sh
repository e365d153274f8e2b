#!/usr/bin/env bash
# Builds the guest images into guest-images/out/, rebuilding only what changed.
#
#   guest-images/build.sh [testguest|linux|all]     (default: all)
#
# testguest: `cargo build --release -p testguest` (the ring-3 test guest, a workspace
#            member), copied to out/testguest.elf when it changed.
# linux:     out/vmlinux        ELF vmlinux extracted from Debian's 6.12 amd64 kernel
#                               package (the newest linux-image-6.12.*-amd64-unsigned in
#                               bookworm-backports or trixie)
#            out/vmlinux.config that package's boot/config-*
#            out/linux-version  the kernel release (uname -r)
#            out/initramfs.cpio.gz  busybox-static (bookworm), the modules virtio_iommu,
#                               failover, net_failover, virtio_net, igbvf (and what they
#                               need), guest-images/linux/init and
#                               guest-images/linux/scenarios/
#            out/initramfs.modules  the modules in the initramfs, in load order
#            cache/vmlinuz      the package's bzImage (for QEMU, which wants a bzImage)
#            out/nested-host.vmlinuz    the same bzImage, as the nested KVM host's kernel
#            out/nested-host.cpio.gz    the nested KVM host's initramfs: busybox, the
#                               modules kvm_amd (irqbypass, kvm, ccp, kvm-amd), tun, veth,
#                               bridge, and guest-images/nested-host/init
#            out/nested-host.modules    its modules, in load order
#            See guest-images/linux/README.md and guest-images/nested-host/README.md.
#
# Debian packages are fetched with `apt-get download` through a private apt configuration
# under cache/apt/ (the system's apt sources and state are not touched) and unpacked with
# dpkg-deb. Only missing host tools are installed on the system, from its own sources.
# The linux target is rebuilt when out/.linux.stamp (a hash of this script, linux/init,
# linux/extract-vmlinux.sh, linux/scenarios/*.sh, linux/tools/*.c, nested-host/init and the names, so
# versions, of the .debs used) no longer matches. The private package lists are refreshed once a day, so a new
# Debian kernel release is picked up (and rebuilt) then.
#
# Environment:
#   LINUX_IMAGE_PKG=linux-image-6.12.N+debNN-amd64-unsigned   use that kernel package
#   GUEST_IMAGES_OFFLINE=1   do not refresh the package lists (use the cached ones)
set -euo pipefail
umask 022
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
linux_dir="$here/linux"
nested_dir="$here/nested-host"
out="$here/out"
cache="$here/cache"
target=${1:-all}

# The modules the Linux scenarios need, in load order: virtio_iommu first, because every
# device its VIOT covers (root ports included) is probe-deferred until it is loaded.
# Their module dependencies (modules.dep) are added ahead of each. igbvf drives nicd's
# 82576 Virtual Functions (8086:10CA) in the QEMU tier (tests/tests/nicd_qemu.rs); it
# needs no other module in Debian's 6.12 (modinfo: empty depends=).
linux_modules=(virtio_iommu failover net_failover virtio_net igbvf)
# Reported as built in or module (the virtio core the above rely on).
linux_core_modules=(virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev)
# The nested KVM host's modules (guest-images/nested-host/): KVM for AMD (kvm_amd needs kvm
# and ccp, kvm needs irqbypass), TAP devices for --net tap=, and veth and bridge for
# network-namespace setups.
nested_host_modules=(kvm_amd tun veth bridge)
nested_host_core_modules=()
# What the linux target writes to out/.
linux_outputs=(vmlinux vmlinux.config linux-version initramfs.cpio.gz nested-host.cpio.gz
  nested-host.vmlinuz)

say() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

apt_updated=0
# have THING: THING is a command, or (starting with /) a file.
have() {
  case "$1" in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# need_tools COMMAND:PACKAGE...: installs, from the system's apt sources, the packages of
# the commands (or /files) that are missing.
need_tools() {
  local pair missing=()
  for pair in "$@"; do
    have "${pair%%:*}" || missing+=("${pair#*:}")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing host packages: ${missing[*]} (install them, or run as root)"
  command -v apt-get >/dev/null 2>&1 || die "missing host packages: ${missing[*]}, and no apt-get"
  say "installing missing host packages: ${missing[*]}"
  if [ "$apt_updated" -eq 0 ]; then
    apt-get update -qq || die "apt-get update failed"
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || die "could not install: ${missing[*]}"
  for pair in "$@"; do
    have "${pair%%:*}" || die "${pair%%:*} is still missing after installing ${pair#*:}"
  done
}

human() { numfmt --to=iec-i --suffix=B "$1"; }

# --- testguest --------------------------------------------------------------------------

build_testguest() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 ||
    die "cargo is missing: install the Rust toolchain (e.g. with rustup) and put cargo on PATH"
  say "testguest: cargo build --release -p testguest"
  (cd "$root" && cargo build --release -p testguest --quiet) || die "cargo build of testguest failed"
  local elf="$root/target/release/testguest"
  [ -f "$elf" ] || die "cargo did not produce $elf"
  mkdir -p "$out"
  if cmp -s "$elf" "$out/testguest.elf"; then
    say "testguest: out/testguest.elf is up to date"
  else
    cp "$elf" "$out/testguest.elf.tmp"
    mv "$out/testguest.elf.tmp" "$out/testguest.elf"
    say "testguest: updated out/testguest.elf"
  fi
  built+=("$out/testguest.elf")
}

# --- Debian packages through a private apt configuration --------------------------------

apt_dir="$cache/apt"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# private_apt apt-get|apt-cache ARGS... (private-apt.sh).
# shellcheck source=private-apt.sh
. "$here/private-apt.sh"

setup_private_apt() {
  if [ ! -r "$keyring" ]; then
    [ "$(id -u)" -eq 0 ] || die "$keyring is missing: install debian-archive-keyring"
    say "installing debian-archive-keyring (for $keyring)"
    apt-get update -qq && apt_updated=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-archive-keyring >/dev/null ||
      die "could not install debian-archive-keyring"
    [ -r "$keyring" ] || die "$keyring is still missing"
  fi
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/state" "$apt_dir/cache"
  [ -f "$apt_dir/state/status" ] || : >"$apt_dir/state/status"
  local sources
  sources=$(printf 'deb [signed-by=%s] http://deb.debian.org/debian %s main\n' \
    "$keyring" bookworm "$keyring" bookworm-backports "$keyring" trixie)
  if [ ! -f "$apt_dir/sources.list" ] || [ "$(cat "$apt_dir/sources.list")" != "$sources" ]; then
    printf '%s\n' "$sources" >"$apt_dir/sources.list"
    rm -f "$apt_dir/lists/"*Packages* # the suites changed: fetch the lists again
  fi
  local fresh
  fresh=$(find "$apt_dir/lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n 1)
  if [ -n "$fresh" ]; then
    return 0
  fi
  if [ "${GUEST_IMAGES_OFFLINE:-0}" = 1 ]; then
    say "GUEST_IMAGES_OFFLINE=1: not refreshing the package lists"
    return 0
  fi
  say "refreshing the private package lists (bookworm, bookworm-backports, trixie) in cache/apt"
  if ! private_apt apt-get update -qq >/dev/null; then
    if find "$apt_dir/lists" -maxdepth 1 -name '*_Packages*' | grep -q .; then
      say "warning: apt-get update failed; using the package lists from the last update"
    else
      die "apt-get update failed and there are no cached package lists"
    fi
  fi
}

# deb_version PACKAGE SUITE: the version of PACKAGE in SUITE ("" if none).
deb_version() {
  private_apt apt-cache madison "$1" 2>/dev/null |
    awk -F'|' -v s=" $2/main " 'index($3, s) { gsub(/ /, "", $2); print $2; exit }'
}

# fetch_deb PACKAGE VERSION: prints the path of PACKAGE_VERSION_amd64.deb in cache/debs,
# downloading it unless it is there already.
fetch_deb() {
  local pkg=$1 ver=$2 debs="$cache/debs" file f
  mkdir -p "$debs"
  file=""
  for f in "$debs/${pkg}_"*.deb; do
    [ -f "$f" ] || continue
    if [ "$(dpkg-deb -f "$f" Version)" = "$ver" ]; then
      file=$f
    else
      say "removing the outdated $(basename "$f")"
      rm -f "$f"
    fi
  done
  if [ -z "$file" ]; then
    local size
    size=$(private_apt apt-cache show "$pkg=$ver" 2>/dev/null | awk '/^Size:/ { print $2; exit }')
    say "downloading $pkg $ver ($(human "${size:-0}"))"
    (cd "$debs" && private_apt apt-get download -qq "$pkg=$ver" >/dev/null) ||
      die "apt-get download $pkg=$ver failed"
    for f in "$debs/${pkg}_"*.deb; do
      [ -f "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && file=$f
    done
    [ -n "$file" ] || die "the download of $pkg $ver left no .deb in $debs"
  fi
  printf '%s\n' "$file"
}

# --- linux ------------------------------------------------------------------------------

# choose_kernel: sets kpkg and kver_deb (package name and version).
choose_kernel() {
  kpkg=${LINUX_IMAGE_PKG:-}
  if [ -z "$kpkg" ]; then
    kpkg=$(private_apt apt-cache pkgnames linux-image-6.12. |
      grep -E '^linux-image-6\.12\.[0-9]+\+deb1[23](\.[0-9]+)?-amd64-unsigned$' | sort -V | tail -n 1) ||
      true
    [ -n "$kpkg" ] || die "no linux-image-6.12.*-amd64-unsigned in bookworm-backports or trixie"
  fi
  kver_deb=""
  local suite f
  for suite in trixie bookworm-backports bookworm; do
    kver_deb=$(deb_version "$kpkg" "$suite")
    [ -z "$kver_deb" ] || break
  done
  if [ -z "$kver_deb" ]; then
    # Gone from the mirror (Debian keeps only the newest): a cached copy still does.
    for f in "$cache/debs/${kpkg}_"*.deb; do
      [ -f "$f" ] && kver_deb=$(dpkg-deb -f "$f" Version)
    done
    [ -n "$kver_deb" ] || die "package $kpkg is not available in bookworm-backports or trixie"
    say "warning: $kpkg is no longer in the package lists; using the cached $kver_deb"
  fi
}

# module_path NAME: the path (relative to the modules directory) of module NAME in
# modules.dep or modules.builtin; "-" and "_" are the same in module names.
module_path() {
  local re="/${1//[-_]/[-_]}\\.ko(\\.xz|\\.zst|\\.gz)?\$"
  cut -d: -f1 "$2" | grep -E "$re" | head -n 1 || true
}

build_linux() {
  need_tools apt-get:apt dpkg-deb:dpkg cpio:cpio gzip:gzip zstd:zstd xz:xz-utils \
    readelf:binutils depmod:kmod modinfo:kmod numfmt:coreutils sha256sum:coreutils gcc:gcc \
    /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev
  mkdir -p "$out" "$cache"
  setup_private_apt
  local kpkg kver_deb bver kdeb bdeb
  choose_kernel
  bver=$(deb_version busybox-static bookworm)
  [ -n "$bver" ] || die "busybox-static is not available in bookworm"
  kdeb=$(fetch_deb "$kpkg" "$kver_deb")
  bdeb=$(fetch_deb busybox-static "$bver")
  local f
  for f in "$cache/debs/"*.deb; do
    if [ -f "$f" ] && [ "$f" != "$kdeb" ] && [ "$f" != "$bdeb" ]; then
      say "removing the unused $(basename "$f")"
      rm -f "$f"
    fi
  done

  local stamp
  stamp=$({
    cat "$here/build.sh" "$linux_dir/init" "$linux_dir/extract-vmlinux.sh" \
      "$linux_dir"/scenarios/*.sh "$linux_dir"/tools/*.c "$nested_dir/init"
    basename "$kdeb"
    basename "$bdeb"
  } | sha256sum | cut -d' ' -f1)
  local uptodate=1
  for f in "${linux_outputs[@]}" initramfs.modules nested-host.modules; do
    [ -f "$out/$f" ] || uptodate=0
  done
  [ -f "$cache/vmlinuz" ] || uptodate=0
  if [ "$uptodate" = 1 ] && [ "$(cat "$out/.linux.stamp" 2>/dev/null)" = "$stamp" ]; then
    say "linux: out/vmlinux, out/initramfs.cpio.gz and out/nested-host.* are up to date ($(cat "$out/linux-version"))"
    built+=("${linux_outputs[@]/#/$out/}")
    return 0
  fi
  rm -f "$out/.linux.stamp"

  local work="$cache/work"
  rm -rf "$work"
  mkdir -p "$work/kernel" "$work/busybox"
  say "linux: unpacking $(basename "$kdeb")"
  dpkg-deb -x "$kdeb" "$work/kernel"
  dpkg-deb -x "$bdeb" "$work/busybox"

  # The kernel release, from the modules directory (lib/modules or usr/lib/modules).
  local moddir kver
  moddir=$(find "$work/kernel" -mindepth 3 -maxdepth 4 -type d -path '*lib/modules/6.12*' | head -n 1)
  [ -n "$moddir" ] || die "no lib/modules/6.12* in $(basename "$kdeb")"
  kver=$(basename "$moddir")
  [ -f "$work/kernel/boot/vmlinuz-$kver" ] || die "no boot/vmlinuz-$kver in $(basename "$kdeb")"
  [ -f "$work/kernel/boot/config-$kver" ] || die "no boot/config-$kver in $(basename "$kdeb")"

  # 1. vmlinux from the bzImage.
  say "linux: extracting vmlinux from boot/vmlinuz-$kver"
  "$linux_dir/extract-vmlinux.sh" "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinux"
  local hdr
  hdr=$(readelf -h "$work/vmlinux")
  grep -qE '^ *Class: +ELF64$' <<<"$hdr" || die "the extracted vmlinux is not ELF64"
  grep -qE '^ *Type: +EXEC ' <<<"$hdr" || die "the extracted vmlinux is not an executable"
  say "linux: vmlinux entry point $(awk '/Entry point address:/ { print $4 }' <<<"$hdr")"

  # 2. Modules: modules.dep for the unpacked tree (the package leaves it to depmod at
  # install time); kmod's depmod -b wants BASE/lib/modules.
  local kroot="$work/kernel"
  case "$moddir" in
    "$work/kernel/usr/lib/modules/"*)
      if [ ! -e "$work/kernel/lib" ]; then ln -s usr/lib "$work/kernel/lib"; fi ;;
  esac
  depmod -b "$kroot" "$kver" || die "depmod failed on the unpacked modules"
  [ -s "$moddir/modules.dep" ] || die "depmod wrote no modules.dep"
  [ -f "$moddir/modules.builtin" ] || die "the package has no modules.builtin"

  local order=() builtin=() name path
  resolve_modules linux_modules linux_core_modules
  local guest_order=("${order[@]}") guest_builtin=("${builtin[@]}")
  order=()
  builtin=()
  resolve_modules nested_host_modules nested_host_core_modules
  local host_order=("${order[@]}") host_builtin=("${builtin[@]}")

  # 3. The initramfs trees: the guest's, and the nested KVM host's.
  local ir="$work/initramfs" hr="$work/nested-host"
  make_initramfs "$ir" "$linux_dir/init" "${guest_order[@]}"
  install -m 0755 "$linux_dir"/scenarios/*.sh "$ir/scenarios/"
  # Small tools busybox lacks, static so they need no libraries in the guest.
  for f in "$linux_dir"/tools/*.c; do
    gcc -static -O2 -Wall -o "$ir/bin/$(basename "$f" .c)" "$f" ||
      die "cannot build $(basename "$f") (gcc with static glibc: libc6-dev)"
  done
  make_initramfs "$hr" "$nested_dir/init" "${host_order[@]}"
  write_cpio "$ir" "$work/initramfs.cpio.gz"
  write_cpio "$hr" "$work/nested-host.cpio.gz"

  mv "$work/vmlinux" "$out/vmlinux"
  mv "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
  mv "$work/nested-host.cpio.gz" "$out/nested-host.cpio.gz"
  cp "$work/kernel/boot/config-$kver" "$out/vmlinux.config"
  cp "$work/kernel/boot/vmlinuz-$kver" "$cache/vmlinuz"
  cp "$work/kernel/boot/vmlinuz-$kver" "$out/nested-host.vmlinuz"
  printf '%s\n' "$kver" >"$out/linux-version"
  cp "$ir/etc/modules.order" "$out/initramfs.modules"
  cp "$hr/etc/modules.order" "$out/nested-host.modules"
  printf '%s\n' "$stamp" >"$out/.linux.stamp"
  rm -rf "$work"
  say "linux: kernel $kver from $(basename "$kdeb"), busybox from $(basename "$bdeb")"
  say "linux: built in: ${guest_builtin[*]:-none}"
  say "linux: modules in the initramfs (load order): $(tr '\n' ' ' <"$out/initramfs.modules")"
  say "nested host: built in: ${host_builtin[*]:-none}"
  say "nested host: modules (load order): $(tr '\n' ' ' <"$out/nested-host.modules")"
  built+=("${linux_outputs[@]/#/$out/}" "$cache/vmlinuz")
}

# resolve_modules NAMES_ARRAY CORE_ARRAY: appends to `order` the module files (relative to
# $moddir) of the modules named in the array NAMES_ARRAY, each after its dependencies (from
# modules.dep), and to `builtin` those built into the kernel; the modules named in
# CORE_ARRAY are only reported when built in, or loaded first when modular.
resolve_modules() {
  local -n names=$1 core=$2
  local name path
  add_module() { # PATH relative to $moddir: its dependencies first, then itself
    local m=$1 dep deps seen
    for seen in "${order[@]}"; do [ "$seen" = "$m" ] && return 0; done
    read -ra deps <<<"$(awk -F': ' -v m="$m" '$1 == m { print $2 }' "$moddir/modules.dep")"
    for dep in "${deps[@]}"; do
      add_module "$dep"
    done
    order+=("$m")
  }
  for name in "${names[@]}"; do
    path=$(module_path "$name" "$moddir/modules.dep")
    if [ -n "$path" ]; then
      add_module "$path"
    elif [ -n "$(module_path "$name" "$moddir/modules.builtin")" ]; then
      builtin+=("$name")
    else
      die "module $name is neither a module nor built into $kver"
    fi
  done
  for name in "${core[@]}"; do
    if [ -n "$(module_path "$name" "$moddir/modules.builtin")" ]; then
      builtin+=("$name")
    elif path=$(module_path "$name" "$moddir/modules.dep") && [ -n "$path" ]; then
      # A module here (not so in Debian's 6.12): load it too, before the others.
      local rest=("${order[@]}")
      order=()
      add_module "$path"
      for path in "${rest[@]}"; do add_module "$path"; done
    fi
  done
}

# make_initramfs DIR INIT MODULE...: a busybox tree in DIR with INIT as /init and the
# modules (paths relative to $moddir, in load order) decompressed into /lib/modules, their
# order in /etc/modules.order.
make_initramfs() {
  local ir=$1 init=$2
  shift 2
  mkdir -p "$ir"/{bin,dev,etc,lib/modules,proc,root,run,scenarios,sys,tmp,usr}
  ln -s bin "$ir/sbin"
  ln -s ../bin "$ir/usr/bin"
  ln -s ../bin "$ir/usr/sbin"
  install -m 0755 "$work/busybox/bin/busybox" "$ir/bin/busybox"
  local applet applets
  applets=$("$ir/bin/busybox" --list) || die "cannot run busybox to list its applets"
  for applet in $applets; do
    [ "$applet" = busybox ] || ln -s busybox "$ir/bin/$applet"
  done
  for applet in sh mount insmod cttyhack setsid poweroff ip; do
    [ -L "$ir/bin/$applet" ] || die "busybox has no $applet applet"
  done
  # /dev/console, so that the kernel gives /init a console before devtmpfs is mounted.
  mknod -m 0600 "$ir/dev/console" c 5 1 2>/dev/null ||
    say "warning: cannot mknod dev/console (not root?): /init opens it after mounting devtmpfs"

  : >"$ir/etc/modules.order"
  local m base
  for m in "$@"; do
    base=$(basename "$m")
    case "$base" in
      *.ko.xz) xz -dc "$moddir/$m" >"$ir/lib/modules/${base%.xz}"; base=${base%.xz} ;;
      *.ko.zst) zstd -qdc "$moddir/$m" >"$ir/lib/modules/${base%.zst}"; base=${base%.zst} ;;
      *.ko.gz) gzip -dc "$moddir/$m" >"$ir/lib/modules/${base%.gz}"; base=${base%.gz} ;;
      *.ko) cp "$moddir/$m" "$ir/lib/modules/$base" ;;
      *) die "unexpected module file $m" ;;
    esac
    local vermagic
    vermagic=$(modinfo -F vermagic "$ir/lib/modules/$base")
    [ "${vermagic%% *}" = "$kver" ] || die "$base has vermagic '$vermagic', not $kver"
    printf '%s\n' "$base" >>"$ir/etc/modules.order"
  done
  printf '%s\n' "$kver" >"$ir/etc/linux-version"
  install -m 0755 "$init" "$ir/init"
}

# write_cpio DIR FILE: a reproducible gzip'd newc archive of DIR: sorted names, owner root,
# mtime 0, renumbered inodes, gzip -n.
write_cpio() {
  find "$1" -exec touch -h -d @0 {} +
  (cd "$1" && find . -mindepth 1 -printf '%P\n' | sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$2"
}

built=()
case "$target" in
  testguest) build_testguest ;;
  linux) build_linux ;;
  all) build_testguest; build_linux ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown target '$target' (testguest, linux or all)" ;;
esac

for f in "${built[@]}"; do
  printf '%10s  %s\n' "$(human "$(stat -c %s "$f")")" "${f#"$root"/}"
done
