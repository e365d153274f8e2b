#!/usr/bin/env bash
# Builds the guest images into guest-images/out/, rebuilding only what changed.
#
#   guest-images/build.sh [testguest|linux|all]     (default: all)
#
# testguest: the ring-3 test guest (workspace member guest-images/testguest), as
#            out/testguest.elf.
# linux:     out/vmlinux (ELF, extracted from Debian's 6.12 kernel package from
#            bookworm-backports), out/vmlinux.config, out/linux-version, and
#            out/initramfs.cpio.gz (busybox-static, the virtio_net / net_failover /
#            failover / virtio-iommu modules, guest-images/linux/init and scenarios).
#
# Debian packages are fetched with `apt-get download` through a private apt
# configuration under guest-images/cache/ (the system's apt sources are not touched) and
# unpacked with dpkg-deb; nothing is installed but host tools that are missing.
# Override the kernel package with LINUX_IMAGE_PKG=linux-image-...-amd64-unsigned.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out="$here/out"
cache="$here/cache"
target=${1:-all}

say() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

need_tools() {
  # tool:package pairs
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing host packages: ${missing[*]} (install them, or run as root)"
  say "installing host packages: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_testguest() {
  need_tools cargo:cargo
  say "building the test guest"
  (cd "$root" && cargo build --release -p testguest --quiet)
  mkdir -p "$out"
  local elf="$root/target/release/testguest"
  if ! cmp -s "$elf" "$out/testguest.elf"; then
    cp "$elf" "$out/testguest.elf"
    say "updated $out/testguest.elf"
  else
    say "testguest.elf is up to date"
  fi
}

# apt-get with a private configuration: bookworm-backports (the 6.12 kernel) and
# bookworm (busybox-static), lists and archives under cache/apt.
private_apt() {
  local apt="$cache/apt"
  mkdir -p "$apt/lists/partial" "$apt/archives/partial"
  cat > "$apt/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
SRC
  "$1" -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt" -o Dir::Cache::archives="$apt/archives" \
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root "${@:2}"
}

fetch_deb() { # package -> path of the .deb in cache/debs
  local pkg=$1 debs="$cache/debs"
  mkdir -p "$debs"
  local ver
  ver=$(private_apt apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "package $pkg is not available"
  local file
  file=$(find "$debs" -maxdepth 1 -name "${pkg}_*.deb" -print | head -n 1)
  if [ -z "$file" ] || [ "$(dpkg-deb -f "$file" Version)" != "$ver" ]; then
    rm -f "$debs/${pkg}"_*.deb
    say "downloading $pkg $ver"
    (cd "$debs" && private_apt apt-get download -qq "$pkg" >/dev/null)
    file=$(find "$debs" -maxdepth 1 -name "${pkg}_*.deb" -print | head -n 1)
  fi
  [ -f "$file" ] || die "download of $pkg failed"
  echo "$file"
}

build_linux() {
  need_tools apt-get:apt dpkg-deb:dpkg python3:python3 zstd:zstd xz:xz-utils sha256sum:coreutils depmod:kmod
  mkdir -p "$out" "$cache"
  # Refresh the package lists at most once a day.
  if [ -z "$(find "$cache/apt/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -n 1)" ]; then
    say "updating the private package lists"
    private_apt apt-get update -qq >/dev/null
  fi
  local kpkg=${LINUX_IMAGE_PKG:-}
  if [ -z "$kpkg" ]; then
    kpkg=$(private_apt apt-cache pkgnames linux-image-6.12 \
      | grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' | sort -V | tail -n 1)
    [ -n "$kpkg" ] || die "no linux-image-6.12.*-amd64-unsigned in bookworm-backports"
  fi
  local kdeb bdeb
  kdeb=$(fetch_deb "$kpkg")
  bdeb=$(fetch_deb busybox-static)

  local stamp
  stamp=$(cat "$here/build.sh" "$here/linux/init" "$here/linux/extract-vmlinux.py" \
    "$here/linux/mkinitramfs.py" "$here"/linux/scenarios/* \
    <(basename "$kdeb") <(basename "$bdeb") | sha256sum | cut -d' ' -f1)
  if [ -f "$out/.linux.stamp" ] && [ "$(cat "$out/.linux.stamp")" = "$stamp" ] \
    && [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.cpio.gz" ]; then
    say "vmlinux and initramfs.cpio.gz are up to date ($(cat "$out/linux-version"))"
    return 0
  fi

  local work="$cache/work"
  rm -rf "$work"
  mkdir -p "$work/kernel" "$work/busybox" "$work/initramfs"
  say "unpacking $(basename "$kdeb")"
  dpkg-deb -x "$kdeb" "$work/kernel"
  dpkg-deb -x "$bdeb" "$work/busybox"
  local kver
  kver=$(basename "$(find "$work/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)")
  [ -n "$kver" ] || die "no modules in $kdeb"

  python3 "$here/linux/extract-vmlinux.py" "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinux"
  readelf -h "$work/vmlinux" | grep -q 'ELF64' || die "extracted vmlinux is not ELF64"
  cp "$work/kernel/boot/config-$kver" "$out/vmlinux.config"

  # The initramfs.
  local ir="$work/initramfs"
  mkdir -p "$ir/bin" "$ir/sbin" "$ir/etc" "$ir/proc" "$ir/sys" "$ir/dev" "$ir/tmp" \
    "$ir/lib/modules" "$ir/scenarios"
  cp "$work/busybox/bin/busybox" "$ir/bin/busybox"
  for applet in $("$ir/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ir/bin/$applet"
  done
  # Modules, with their dependencies first. The package has no modules.dep (depmod runs
  # at install time), so make one for the unpacked tree.
  local mdir="$work/kernel/lib/modules/$kver"
  depmod -b "$work/kernel" "$kver"
  local order=()
  add_module() { # path relative to $mdir
    local m=$1 dep
    for seen in "${order[@]:-}"; do [ "$seen" = "$m" ] && return 0; done
    for dep in $(awk -F': ' -v m="$m" '$1 == m { print $2 }' "$mdir/modules.dep"); do
      add_module "$dep"
    done
    order+=("$m")
  }
  for name in virtio_net net_failover failover virtio-iommu; do
    local path
    path=$(awk -F: '{print $1}' "$mdir/modules.dep" | grep -E "/${name}\.ko(\.xz|\.zst)?$" | head -n 1)
    [ -n "$path" ] || die "module $name is not in $kpkg"
    add_module "$path"
  done
  : > "$ir/etc/modules.order"
  for m in "${order[@]}"; do
    local base
    base=$(basename "$m")
    case "$base" in
      *.ko.xz) xz -dc "$mdir/$m" > "$ir/lib/modules/${base%.xz}"; base=${base%.xz} ;;
      *.ko.zst) zstd -qdc "$mdir/$m" > "$ir/lib/modules/${base%.zst}"; base=${base%.zst} ;;
      *) cp "$mdir/$m" "$ir/lib/modules/$base" ;;
    esac
    echo "$base" >> "$ir/etc/modules.order"
  done
  install -m 0755 "$here/linux/init" "$ir/init"
  install -m 0755 "$here"/linux/scenarios/*.sh "$ir/scenarios/"
  python3 "$here/linux/mkinitramfs.py" "$ir" "$work/initramfs.cpio.gz"

  mv "$work/vmlinux" "$out/vmlinux"
  mv "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
  echo "$kver" > "$out/linux-version"
  echo "$stamp" > "$out/.linux.stamp"
  rm -rf "$work"
  say "linux $kver: modules (load order) ${order[*]##*/}"
  ls -l "$out/vmlinux" "$out/initramfs.cpio.gz"
}

case "$target" in
  testguest) build_testguest ;;
  linux) build_linux ;;
  all) build_testguest; build_linux ;;
  *) die "unknown target '$target' (testguest, linux or all)" ;;
esac
