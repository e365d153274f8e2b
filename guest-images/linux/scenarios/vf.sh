#!/bin/sh
# Linux's igbvf on an 82576 Virtual Function (8086:10CA) served by nicd over vfio-user,
# attached with QEMU's vfio-user-pci: igbvf binds, the netdev's permanent address is the
# admin MAC nicd gave it, the link comes up, the guest pings the peer (the host end of
# nicd's uplink TAP) and, when asked, sends a few MiB over TCP. With guest.vf_hold=1 it
# then takes commands from the console (below) until `done`. Every step prints a
# `GUEST VF ...` marker the host waits for.
#
# Kernel command line:
#   guest.vf_mac=LLADDR     the admin MAC the netdev must have (checked when given)
#   guest.vf_ip=A.B.C.D/N   the address to configure
#   guest.peer_ip=A.B.C.D   the address to ping once the carrier is up
#   guest.tcp_port=P guest.tcp_bytes=N   send N random bytes to peer_ip:P with nc and
#                           print their SHA-256 (the host compares)
#   guest.vf_wait=S         how long to wait for igbvf's netdev (default 20 s)
#   guest.vf_hold=1         then read commands from the console, one a line:
#                             ping IP          ->  GUEST VF PING IP OK
#                             carrier up|down  ->  GUEST VF CARRIER UP|DOWN (within 30 s)
#                             spoof MAC        ->  GUEST VF SPOOF SENT MAC (3 raw frames
#                                                  from MAC, with ethsend)
#                             stats            ->  GUEST VF STATS rx_packets=N rx_bytes=N
#                                                  tx_packets=N tx_bytes=N (the netdev's
#                                                  counters, as ip -s link shows them)
#                             done             ->  GUEST SCENARIO vf PASS
fail() {
  echo "--- igbvf's kernel messages"
  dmesg | grep -i -E 'igbvf|vfio|10ca' | tail -n 20
  echo "--- its interrupts"
  grep -E 'CPU|eth0|igbvf' /proc/interrupts
  echo "GUEST SCENARIO vf FAIL: $*"
  exit 1
}

arg() { # value of NAME=... on the kernel command line
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1"=*) echo "${w#*=}" ;; esac
  done
}

vf_mac=$(arg guest.vf_mac)
vf_ip=$(arg guest.vf_ip)
peer_ip=$(arg guest.peer_ip)
tcp_port=$(arg guest.tcp_port)
tcp_bytes=$(arg guest.tcp_bytes)
vf_wait=$(arg guest.vf_wait)
vf_wait=${vf_wait:-20}
hold=$(arg guest.vf_hold)

# 1. The VF and igbvf's netdev on it (igbvf probes when /init loads it; the netdev may
# come a moment later).
dev=""
net=""
tries=0
while :; do
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor" 2>/dev/null)" = "0x8086" ] && [ "$(cat "$d/device" 2>/dev/null)" = "0x10ca" ] &&
      dev=$d && break
  done
  if [ -n "$dev" ] && [ -d "$dev/net" ]; then
    net=$(ls "$dev/net" | head -n 1)
    [ -n "$net" ] && break
  fi
  tries=$((tries + 1))
  [ "$tries" -le $((vf_wait * 10)) ] || break
  usleep 100000
done
if [ -z "$dev" ]; then
  echo "--- PCI devices"
  for d in /sys/bus/pci/devices/*; do
    echo "$(basename "$d") [$(cat "$d/vendor"):$(cat "$d/device")] class $(cat "$d/class")"
  done
  fail "no igbvf device: no 8086:10ca PCI function appeared within $vf_wait s"
fi
drv=$(basename "$(readlink "$dev/driver" 2>/dev/null)" 2>/dev/null)
echo "GUEST VF DEVICE $(basename "$dev") driver=${drv:--}"
if [ -e "$dev/iommu_group" ]; then
  group=$(readlink "$dev/iommu_group")
  echo "GUEST VF IOMMU GROUP ${group##*/} devices=$(ls "$dev/iommu_group/devices" | tr '\n' ' ')"
fi
[ "$drv" = "igbvf" ] || fail "8086:10ca at $(basename "$dev") is not bound to igbvf (driver: ${drv:-none})"
[ -n "$net" ] || fail "igbvf bound $(basename "$dev") but registered no netdev within $vf_wait s"
echo "GUEST VF NETDEV $net"

# 2. Its address: igbvf takes the PF's RESET reply MAC as dev_addr and perm_addr;
# addr_assign_type 0 (NET_ADDR_PERM) says so, 1 (random) means the PF gave none. (busybox
# has no ethtool -P; addr_assign_type is what sysfs shows of the permanent address.)
mac=$(cat "/sys/class/net/$net/address")
assign=$(cat "/sys/class/net/$net/addr_assign_type")
echo "GUEST VF MAC $mac assign_type=$assign"
[ "$assign" = "0" ] || fail "$net's address $mac is not the permanent one (addr_assign_type $assign; 1 = random: the PF gave no MAC)"
if [ -n "$vf_mac" ]; then
  want=$(echo "$vf_mac" | tr 'A-F' 'a-f')
  [ "$mac" = "$want" ] || fail "$net's permanent address is $mac, not the admin MAC $want"
fi

# 3. Up, and the carrier (igbvf sees STATUS.LU after the PF's link ping).
ip link set lo up
ip link set "$net" up || fail "cannot bring $net up"
echo "GUEST VF UP $net"

carrier_is() { # carrier_is 1|0 SECONDS: waits for /sys/class/net/$net/carrier
  t=0
  while [ "$(cat "/sys/class/net/$net/carrier" 2>/dev/null)" != "$1" ]; do
    t=$((t + 1))
    [ "$t" -le $(($2 * 10)) ] || return 1
    usleep 100000
  done
}
carrier_is 1 30 || fail "no carrier on $net within 30 s (operstate $(cat "/sys/class/net/$net/operstate"))"
echo "GUEST VF CARRIER UP"

[ -z "$vf_ip" ] || ip addr add "$vf_ip" dev "$net" || fail "cannot add $vf_ip to $net"
echo "GUEST VF ADDR ${vf_ip:-none}"

ping_peer() { # ping_peer IP: a first answer within 20 s (ARP included), then 3 in a row
  t=0
  until ping -c 1 -W 1 "$1" >/dev/null 2>&1; do
    t=$((t + 1))
    [ "$t" -lt 20 ] || return 1
  done
  ping -c 3 -W 2 "$1"
}

# 4. The peer answers.
if [ -n "$peer_ip" ]; then
  ping_peer "$peer_ip" || fail "no answer from $peer_ip through $net"
  echo "GUEST VF PING $peer_ip OK"
fi

# 5. TCP: random bytes to the host's listener (TSO and checksum offload on nicd's side).
if [ -n "$tcp_port" ]; then
  [ -n "$peer_ip" ] || fail "guest.tcp_port= needs guest.peer_ip="
  bytes=${tcp_bytes:-4194304}
  head -c "$bytes" /dev/urandom >/tmp/tcp.data || fail "cannot make $bytes random bytes"
  sum=$(sha256sum /tmp/tcp.data | cut -d' ' -f1)
  echo "GUEST VF TCP SENDING bytes=$bytes sha256=$sum"
  timeout 120 nc "$peer_ip" "$tcp_port" </tmp/tcp.data >/dev/null
  rc=$?
  # The host closes once it has every byte; nc may report that as an error.
  [ "$rc" -ne 143 ] || fail "the TCP transfer to $peer_ip:$tcp_port took over 120 s"
  echo "GUEST VF TCP SENT bytes=$bytes sha256=$sum nc=$rc"
  rm -f /tmp/tcp.data
fi

# 6. Commands from the host, one per console line.
if [ "$hold" = "1" ]; then
  stty -echo 2>/dev/null
  echo "GUEST VF HOLD"
  while :; do
    read -t 600 -r cmd a1 || fail "no command from the host within 600 s"
    case "$cmd" in
      ping)
        ping_peer "$a1" || fail "no answer from $a1 through $net"
        echo "GUEST VF PING $a1 OK" ;;
      carrier)
        case "$a1" in
          up) carrier_is 1 30 || fail "the carrier of $net did not come up within 30 s"
            echo "GUEST VF CARRIER UP" ;;
          down) carrier_is 0 30 || fail "the carrier of $net did not go down within 30 s"
            echo "GUEST VF CARRIER DOWN" ;;
          *) fail "bad command: carrier $a1" ;;
        esac ;;
      stats)
        st=/sys/class/net/$net/statistics
        echo "GUEST VF STATS rx_packets=$(cat $st/rx_packets) rx_bytes=$(cat $st/rx_bytes) tx_packets=$(cat $st/tx_packets) tx_bytes=$(cat $st/tx_bytes)" ;;
      spoof)
        # Frames from a MAC that is not the VF's, as a bridge or macvlan would send.
        ethsend "$net" ff:ff:ff:ff:ff:ff "$a1" 3 || fail "ethsend from $a1 failed"
        echo "GUEST VF SPOOF SENT $a1" ;;
      done) break ;;
      "") ;;
      *) fail "unknown command '$cmd'" ;;
    esac
  done
fi
echo "GUEST SCENARIO vf PASS"
