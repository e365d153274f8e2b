#!/bin/sh
# Linux on the VMM's PCIe topology: the tree, pciehp on every root port, virtio_net up and
# answering a ping through the TAP backend (host side 10.0.2.2), and with guest.hotplug=1 a
# hot-added virtio-net that appears and then goes on an orderly removal the host drives.
fail() { echo "GUEST SCENARIO pcie FAIL: $*"; exit 1; }

arg() { # value of NAME=... on the kernel command line
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1"=*) echo "${w#*=}" ;; esac
  done
}

echo "--- PCI tree"
for d in /sys/bus/pci/devices/*; do
  drv=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
  echo "$(basename "$d") [$(cat "$d/vendor"):$(cat "$d/device")] class $(cat "$d/class") ${drv:--}"
done

ports=0
for d in /sys/bus/pci/devices/*; do
  [ "$(cat "$d/class")" = "0x060400" ] || continue
  ports=$((ports + 1))
  drv=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
  [ "$drv" = "pcieport" ] || fail "root port $(basename "$d") is driven by '${drv}', not pcieport"
done
[ "$ports" -ge 1 ] || fail "no root ports"
slots=$(ls /sys/bus/pci/slots 2>/dev/null | wc -l)
[ "$slots" -eq "$ports" ] || fail "$slots hotplug slots for $ports root ports (pciehp not bound?)"
echo "$ports root ports, all with pcieport and a pciehp slot: $(ls /sys/bus/pci/slots | tr '\n' ' ')"

net=""
for n in /sys/class/net/*; do
  [ "$(basename "$(readlink "$n/device/driver" 2>/dev/null)")" = "virtio_net" ] && net=$(basename "$n") && break
done
[ -n "$net" ] || fail "no virtio_net interface"
ip link set lo up
ip link set "$net" up || fail "cannot bring $net up"
ip addr add 10.0.2.15/24 dev "$net"
ping -c 3 -W 3 10.0.2.2 || fail "no answer from 10.0.2.2 through $net"
echo "$net up, 10.0.2.2 answers"

if [ "$(arg guest.hotplug)" = "1" ]; then
  before=$(ls /sys/class/net | wc -l)
  echo "GUEST HOTPLUG READY"
  i=0
  while [ "$(ls /sys/class/net | wc -l)" -le "$before" ]; do
    i=$((i + 1)); [ "$i" -le 60 ] || fail "no hot-added interface within 60 s"; sleep 1
  done
  echo "GUEST HOTPLUG ADDED $(ls /sys/class/net | tr '\n' ' ')"
  i=0
  while [ "$(ls /sys/class/net | wc -l)" -gt "$before" ]; do
    i=$((i + 1)); [ "$i" -le 60 ] || fail "the hot-added interface did not go within 60 s"; sleep 1
  done
  echo "GUEST HOTPLUG REMOVED"
fi
echo "GUEST SCENARIO pcie PASS"
