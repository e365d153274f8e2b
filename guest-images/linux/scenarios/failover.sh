#!/bin/sh
# Linux's net_failover over a virtio-net STANDBY (the synthetic path through nicd's
# default VPort) and an igbvf VF of the same MAC: the failover master, its standby and its
# primary netdevs appear; the master gets the address, pings the peer (the host end of
# nicd's uplink TAP) and sends a TCP stream to it while the host detaches and attaches the
# VF (vmctl failover). Every step prints a `GUEST FAILOVER ...` marker the host waits for.
#
# Kernel command line:
#   guest.ip=A.B.C.D/N        the master's address
#   guest.peer_ip=A.B.C.D     the peer
#   guest.tcp_port=P guest.tcp_chunks=N [guest.tcp_gap_ms=G]   send N chunks of 64 KiB
#                             of random bytes to peer_ip:P, G ms apart (default 100),
#                             and print their SHA-256 at the end
# Console commands after `GUEST FAILOVER HOLD`, one a line:
#   primary present|absent  ->  GUEST FAILOVER PRIMARY PRESENT|ABSENT (within 60 s)
#   ping IP                 ->  GUEST FAILOVER PING IP OK
#   tcp wait                ->  GUEST FAILOVER TCP SENT bytes=N sha256=S (the stream ended)
#   stats                   ->  GUEST FAILOVER PING STATS N packets transmitted, M packets
#                               received, L% packet loss (the pings since the stream began)
#   done                    ->  GUEST SCENARIO failover PASS
fail() {
  echo "--- net devices"
  ip -d link 2>&1 | head -n 40
  dmesg | grep -i -E 'failover|igbvf|virtio_net' | tail -n 20
  echo "GUEST SCENARIO failover FAIL: $*"
  exit 1
}

arg() {
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1"=*) echo "${w#*=}" ;; esac
  done
}

ip_addr=$(arg guest.ip)
peer=$(arg guest.peer_ip)
port=$(arg guest.tcp_port)
chunks=$(arg guest.tcp_chunks)
gap_ms=$(arg guest.tcp_gap_ms)

# 1. The master: the netdev net_failover made (its lower devices are the standby and,
# when present, the primary).
master=""
t=0
while [ -z "$master" ]; do
  for n in /sys/class/net/*; do
    name=$(basename "$n")
    if ls "$n" 2>/dev/null | grep -q '^lower_'; then
      master=$name
      break
    fi
  done
  [ -n "$master" ] && break
  t=$((t + 1))
  [ "$t" -le 300 ] || fail "no net_failover master within 30 s"
  usleep 100000
done
lowers() { ls "/sys/class/net/$master" | sed -n 's/^lower_//p' | tr '\n' ' '; }
driver_of() { basename "$(readlink "/sys/class/net/$1/device/driver" 2>/dev/null)" 2>/dev/null; }
primary() {
  for l in $(lowers); do
    [ "$(driver_of "$l")" = "igbvf" ] && echo "$l"
  done
}
echo "GUEST FAILOVER MASTER $master lower: $(lowers) mac $(cat /sys/class/net/$master/address)"

ip link set lo up
ip link set "$master" up || fail "cannot bring $master up"
[ -z "$ip_addr" ] || ip addr add "$ip_addr" dev "$master" || fail "cannot add $ip_addr"

wait_primary() { # wait_primary present|absent SECONDS
  t=0
  while :; do
    p=$(primary)
    if [ "$1" = present ] && [ -n "$p" ] && [ "$(cat /sys/class/net/$p/carrier 2>/dev/null)" = 1 ]; then
      return 0
    fi
    [ "$1" = absent ] && [ -z "$p" ] && return 0
    t=$((t + 1))
    [ "$t" -le $(($2 * 10)) ] || return 1
    usleep 100000
  done
}

ping_peer() {
  t=0
  until ping -c 1 -W 1 "$1" >/dev/null 2>&1; do
    t=$((t + 1))
    [ "$t" -lt 20 ] || return 1
  done
}

if [ -n "$peer" ]; then
  ping_peer "$peer" || fail "no answer from $peer through $master"
  echo "GUEST FAILOVER PING $peer OK"
fi

# 2. The TCP stream, in the background.
if [ -n "$port" ]; then
  chunks=${chunks:-100}
  gap_us=$(( ${gap_ms:-100} * 1000 ))
  (
    i=0
    while [ "$i" -lt "$chunks" ]; do
      head -c 65536 /dev/urandom
      usleep "$gap_us"
      i=$((i + 1))
    done
  ) | tee /tmp/sent | nc "$peer" "$port" >/dev/null 2>&1 &
  nc_pid=$!
  echo "GUEST FAILOVER TCP STARTED chunks=$chunks"
  # And pings, five a second, for the loss across the switches (`ping stats`).
  ping -q -i 0.2 "$peer" >/tmp/ping.out 2>&1 &
  ping_pid=$!
fi

stty -echo 2>/dev/null
echo "GUEST FAILOVER HOLD"
while :; do
  read -t 600 -r cmd a1 || fail "no command from the host within 600 s"
  case "$cmd" in
    primary)
      wait_primary "$a1" 60 || fail "the primary is not $a1 after 60 s (lower: $(lowers))"
      echo "GUEST FAILOVER PRIMARY $(echo "$a1" | tr a-z A-Z) $(primary)" ;;
    ping)
      ping_peer "$a1" || fail "no answer from $a1"
      echo "GUEST FAILOVER PING $a1 OK" ;;
    stats)
      kill -INT "$ping_pid" 2>/dev/null
      wait "$ping_pid"
      echo "GUEST FAILOVER PING STATS $(grep 'packets transmitted' /tmp/ping.out)" ;;
    tcp)
      wait "$nc_pid"
      bytes=$(wc -c </tmp/sent)
      sum=$(sha256sum /tmp/sent | cut -d' ' -f1)
      echo "GUEST FAILOVER TCP SENT bytes=$bytes sha256=$sum" ;;
    done) break ;;
    "") ;;
    *) fail "unknown command '$cmd'" ;;
  esac
done
echo "GUEST SCENARIO failover PASS"
