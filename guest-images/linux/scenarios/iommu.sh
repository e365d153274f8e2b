#!/bin/sh
# Linux behind the virtio-iommu: the driver binds from the initramfs module, every
# endpoint the VIOT covers gets its own IOMMU group, and virtio_net works behind it.
# Run with `vmm run --iommu --net ...` and guest.scenario=iommu.
fail() { echo "GUEST SCENARIO iommu FAIL: $*"; exit 1; }

iommu_dev=""
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/vendor")" = "0x1af4" ] && [ "$(cat "$d/device")" = "0x1057" ]; then
    iommu_dev=$d
  fi
done
[ -n "$iommu_dev" ] || fail "no virtio-iommu (1af4:1057) on the PCI bus"
# virtio-pci binds the PCI function; the virtio-iommu driver binds its virtio device.
ls "$iommu_dev"/virtio*/driver >/dev/null 2>&1 || fail "no driver on $iommu_dev"
drv=$(basename "$(readlink "$iommu_dev"/virtio*/driver)")
[ "$drv" = "virtio_iommu" ] || fail "$iommu_dev is driven by $drv, not virtio_iommu"
echo "virtio-iommu at $(basename "$iommu_dev"), driver $drv"

groups=$(ls /sys/kernel/iommu_groups 2>/dev/null | wc -l)
[ "$groups" -ge 1 ] || fail "no IOMMU groups"
for g in /sys/kernel/iommu_groups/*; do
  echo "iommu group $(basename "$g"): $(ls "$g/devices" | tr '\n' ' ')"
  [ "$(ls "$g/devices" | wc -l)" -eq 1 ] || fail "group $(basename "$g") holds more than one device"
done

net=""
for n in /sys/class/net/*; do
  [ "$(basename "$(readlink "$n/device/driver" 2>/dev/null)")" = "virtio_net" ] && net=$(basename "$n")
done
[ -n "$net" ] || fail "no virtio_net interface"
pcidev=$(basename "$(readlink -f "/sys/class/net/$net/device/..")")
[ -e "/sys/bus/pci/devices/$pcidev/iommu_group" ] || fail "$net ($pcidev) is not behind the IOMMU"
ip link set "$net" up || fail "cannot bring $net up"
echo "$net at $pcidev, iommu group $(basename "$(readlink "/sys/bus/pci/devices/$pcidev/iommu_group")")"
echo "GUEST SCENARIO iommu PASS"
