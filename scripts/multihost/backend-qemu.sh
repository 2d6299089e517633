# shellcheck shell=bash disable=SC2034 # sets what lib.sh and the tests read
# qemu backend: every host is a real virtual machine. A small Debian root filesystem
# (mmdebstrap, from Debian's packages only: the kernel, containerd, runc, dropbear) is built
# once and cached; each VM boots it directly (-kernel/-initrd) from its own copy-on-write
# overlay, with a minimal init instead of systemd. Each VM has two NICs on two bridges in a
# network namespace this run creates (the "lab", where the registry and the client live):
#   eth0  10.77.0.0/24  the cluster's network: the one `cut_off` takes down (its tap)
#   eth1  10.78.0.0/24  management (ssh from the harness), never cut
# Accelerator: KVM when a probe guest boots under it, else TCG (software emulation);
# WARREN_QEMU_ACCEL=kvm|tcg forces one. Cache: WARREN_QEMU_CACHE (/var/cache/warren-qemu).

NETNS_PREFIX=${NETNS_PREFIX:-wmq$$}
LAB_NS=$NETNS_PREFIX-lab
LAB_ADDR=10.77.0.1
QEMU_CACHE=${WARREN_QEMU_CACHE:-/var/cache/warren-qemu}
QEMU_MEM_MB=${WARREN_QEMU_MEM_MB:-768}
GUEST_DIR=/var/lib/warren-test
GUEST_PACKAGES=linux-image-amd64,initramfs-tools,kmod,containerd,runc,iproute2,dropbear-bin,procps,curl,ca-certificates

host_octet() {
  case $1 in
    m*) echo $((10 + ${1#m})) ;;
    w*) echo $((20 + ${1#w})) ;;
  esac
}
host_addr() { echo "10.77.0.$(host_octet "$1")"; }
mgmt_addr() { echo "10.78.0.$(host_octet "$1")"; }
hostdir() { echo "$GUEST_DIR"; }
on_client() { nsenter --net="/run/netns/$LAB_NS" -- "$@"; }
ssh_opts() {
  echo -i "$QEMU_CACHE/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR -o ConnectTimeout=5 -o ServerAliveInterval=5 \
    -o ControlMaster=auto -o "ControlPath=$RUN_DIR/ssh-%h" -o ControlPersist=120
}
# Runs a command on a VM over the management network; arguments keep their quoting.
on() {
  local h=$1; shift
  # shellcheck disable=SC2046
  on_client ssh $(ssh_opts) "root@$(mgmt_addr "$h")" "$(printf '%q ' "$@")"
}
copy_to() {
  # shellcheck disable=SC2046,SC2016
  # Synced: a hard power-off must not leave an empty file (found: an operator credential lost).
  on_client ssh $(ssh_opts) "root@$(mgmt_addr "$1")" "cat > $(printf '%q' "$GUEST_DIR/$3") && sync $(printf '%q' "$GUEST_DIR/$3")" <"$2"
}
copy_from() {
  # shellcheck disable=SC2046
  on_client ssh $(ssh_opts) "root@$(mgmt_addr "$1")" "cat $(printf '%q' "$GUEST_DIR/$2")" >"$3"
}
# A cut is the VM's cluster NIC's tap going down: nothing in or out, as with a pulled cable.
cut_off() { on_client ip link set "td-$1" down; }
heal() { on_client ip link set "td-$1" up; }
containerd_socket() { echo /run/containerd/containerd.sock; }
client_tls_dir() { echo "$RUN_DIR/admin"; }

# A hard power-off: the VM's process is killed, nothing is flushed.
power_off() {
  [[ ${2:-} == check ]] && return 0
  local pid; pid=$(cat "$RUN_DIR/qemu-$1.pid")
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$RUN_DIR/ssh-$(mgmt_addr "$1")"
}
power_on() {
  boot_vm "$1"
  wait_until 600 "$1 to boot again" on "$1" true
}

need_qemu_packages() {
  local need=()
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  command -v qemu-img >/dev/null || need+=(qemu-utils)
  command -v ssh >/dev/null || need+=(openssh-client)
  if [[ ${#need[@]} -gt 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2; }
  fi
}

# The guest's init: mounts, addresses from the kernel command line, dropbear, containerd on
# workers; then reaps orphans forever.
guest_init() {
  cat <<'INIT'
#!/bin/bash
# (the initramfs may have mounted some of these already)
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p"; }
hostname "$(arg warren.host)"
# No udev: the NICs' driver is loaded here, and the NICs waited for.
modprobe virtio_net
for _ in $(seq 1 100); do [ -e /sys/class/net/eth1 ] && break; sleep 0.1; done
ip link set lo up
ip addr add "$(arg warren.ip)" dev eth0 && ip link set eth0 up
ip addr add "$(arg warren.mgmt)" dev eth1 && ip link set eth1 up
mkdir -p /var/lib/warren-test /etc/dropbear
dropbear -R -E -p 22 2>/var/log/dropbear.log
if [ "$(arg warren.containerd)" = 1 ]; then
  modprobe overlay
  containerd >/var/log/containerd.log 2>&1 &
fi
echo "warren-init: $(hostname) up"
while true; do wait; sleep 1; done
INIT
}

# Two cached layers: the Debian tree (mmdebstrap's tarball, redone when the package list
# changes) and the disk image made from it (redone when the init or the tree changes).
build_image() {
  mkdir -p "$QEMU_CACHE"
  local t0; t0=$(date +%s)
  if [[ ! -f $QEMU_CACHE/base.tar || $(cat "$QEMU_CACHE/base.packages" 2>/dev/null) != "$GUEST_PACKAGES" ]]; then
    log "building the VM's Debian tree (mmdebstrap, Debian packages only; cached in $QEMU_CACHE)"
    rm -f "$QEMU_CACHE/base.tar" "$QEMU_CACHE/rootfs.img"
    mmdebstrap --variant=minbase --format=tar --include="$GUEST_PACKAGES" bookworm "$QEMU_CACHE/base.tar.part" \
      http://deb.debian.org/debian >&2
    mv "$QEMU_CACHE/base.tar.part" "$QEMU_CACHE/base.tar"
    echo "$GUEST_PACKAGES" >"$QEMU_CACHE/base.packages"
  fi
  local want; want=$( (guest_init; sha256sum "$QEMU_CACHE/base.tar") | sha256sum | cut -c1-16)
  if [[ -f $QEMU_CACHE/rootfs.img && $(cat "$QEMU_CACHE/image.stamp" 2>/dev/null) == "$want" ]]; then
    return
  fi
  log "making the VM disk image"
  local root="$QEMU_CACHE/root"
  rm -rf "$root" "$QEMU_CACHE/rootfs.img"
  mkdir -p "$root"
  tar -C "$root" -xf "$QEMU_CACHE/base.tar"
  guest_init >"$root/sbin/warren-init"
  chmod 755 "$root/sbin/warren-init"
  [[ -f $QEMU_CACHE/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f "$QEMU_CACHE/id_ed25519"
  mkdir -p "$root/root/.ssh"
  cp "$QEMU_CACHE/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
  chmod 700 "$root/root/.ssh"
  cp "$root"/boot/vmlinuz-* "$QEMU_CACHE/vmlinuz"
  cp "$root"/boot/initrd.img-* "$QEMU_CACHE/initrd.img"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/boot/initrd.img-*
  mkfs.ext4 -q -L root -d "$root" "$QEMU_CACHE/rootfs.img" 2G
  rm -rf "$root"
  echo "$want" >"$QEMU_CACHE/image.stamp"
  log "VM image made in $(( $(date +%s) - t0 )) s"
}

# KVM only if a guest really boots under it (here a KVM guest hangs after the BIOS).
pick_accel() {
  if [[ -n ${WARREN_QEMU_ACCEL:-} ]]; then QEMU_ACCEL=$WARREN_QEMU_ACCEL; return; fi
  QEMU_ACCEL=tcg
  [[ -w /dev/kvm ]] || return 0
  local out="$RUN_DIR/kvm-probe.log"
  timeout 30 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic -no-reboot \
    -kernel "$QEMU_CACHE/vmlinuz" -append "console=ttyS0 panic=-1 init=/bin/false" >"$out" 2>&1 || true
  grep -q "Linux version" "$out" && QEMU_ACCEL=kvm
  return 0
}

boot_vm() {
  local h=$1 o; o=$(host_octet "$h")
  local cpu=(); [[ $QEMU_ACCEL == kvm ]] && cpu=(-cpu host)
  local containerd=0; [[ $h == w* ]] && containerd=1
  on_client setsid qemu-system-x86_64 -accel "$QEMU_ACCEL" "${cpu[@]}" -m "$QEMU_MEM_MB" -smp 1 \
    -display none -monitor none -serial "file:$RUN_DIR/console-$h.log" -no-reboot \
    -kernel "$QEMU_CACHE/vmlinuz" -initrd "$QEMU_CACHE/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 quiet net.ifnames=0 init=/sbin/warren-init warren.host=$h warren.ip=$(host_addr "$h")/24 warren.mgmt=$(mgmt_addr "$h")/24 warren.containerd=$containerd" \
    -drive "file=$RUN_DIR/disk-$h.qcow2,if=virtio,format=qcow2" \
    -netdev "tap,id=data,ifname=td-$h,script=no,downscript=no" -device "virtio-net-pci,netdev=data,mac=52:54:00:77:00:$o" \
    -netdev "tap,id=mgmt,ifname=tm-$h,script=no,downscript=no" -device "virtio-net-pci,netdev=mgmt,mac=52:54:00:78:00:$o" \
    -pidfile "$RUN_DIR/qemu-$h.pid" </dev/null >"$RUN_DIR/qemu-$h.log" 2>&1 &
  wait_until 10 "qemu for $h to start" test -s "$RUN_DIR/qemu-$h.pid"
}

backend_up() {
  need_cmds ip nsenter
  need_qemu_packages
  build_image
  pick_accel
  log "qemu accelerator: $QEMU_ACCEL"
  echo "qemu accelerator: $QEMU_ACCEL" >>"${RESULTS_FILE:-/dev/null}"
  lab_up "$LAB_ADDR" 10.78.0.1
  local h t0; t0=$(date +%s)
  for h in "${HOSTS[@]}"; do
    on_client ip tuntap add "td-$h" mode tap
    on_client ip link set "td-$h" master br0 up
    on_client ip tuntap add "tm-$h" mode tap
    on_client ip link set "tm-$h" master br1 up
    qemu-img create -q -f qcow2 -b "$QEMU_CACHE/rootfs.img" -F raw "$RUN_DIR/disk-$h.qcow2"
    boot_vm "$h"
  done
  lab_registry_up
  for h in "${HOSTS[@]}"; do wait_until 900 "$h to boot (console: $RUN_DIR/console-$h.log)" on "$h" true; done
  log "5 VMs booted in $(( $(date +%s) - t0 )) s ($QEMU_ACCEL)"
  echo "qemu: 5 VMs booted in $(( $(date +%s) - t0 )) s ($QEMU_ACCEL)" >>"${RESULTS_FILE:-/dev/null}"
  for h in "${WORKERS[@]}"; do
    wait_until 60 "containerd on $h" on "$h" ctr version
  done
  for h in "${HOSTS[@]}"; do
    copy_to "$h" "$WARREN_BIN" warren
    on "$h" chmod 755 "$GUEST_DIR/warren"
  done
  WBIN=$GUEST_DIR/warren
  CLIENT_BIN=$WARREN_BIN
}

backend_down() {
  local h pid
  for h in "${HOSTS[@]}"; do
    [[ -f $RUN_DIR/qemu-$h.pid ]] || continue
    pid=$(cat "$RUN_DIR/qemu-$h.pid")
    kill -9 "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  done
  local r
  for r in "${RIG_STARTED[@]}"; do on_client "$REPO/scripts/rig.sh" stop "${r#*:}" || true; done
  RIG_STARTED=()
  for r in "${CREATED_NS[@]}"; do ip netns del "$r" 2>/dev/null || true; done
  CREATED_NS=()
}
