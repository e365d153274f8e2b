#!/bin/sh
# The smallest Linux-guest scenario: user space runs, the machine is what we described.
uname -a
head -20 /proc/cpuinfo
ls /sys/bus/pci/devices
cat /proc/iomem
echo "GUEST SCENARIO smoke PASS"
