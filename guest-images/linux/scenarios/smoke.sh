#!/bin/sh
# The smallest Linux-guest scenario: user space runs, and the machine is what the VMM
# described (CPUs, PCI devices, the memory map).
echo "--- uname -a"
uname -a
echo "--- /proc/cpuinfo (head)"
head /proc/cpuinfo
echo "--- /sys/bus/pci/devices"
ls /sys/bus/pci/devices
echo "--- /proc/iomem"
cat /proc/iomem
echo "GUEST SCENARIO smoke PASS"
