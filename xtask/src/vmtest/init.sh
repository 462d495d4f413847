#!/bin/busybox sh
# /init of the vmtest initramfs (written by xtask/src/vmtest/initramfs.rs).
# Sets up what a node has (proc, sys, devtmpfs, tracefs, bpffs, cgroup2 alone
# at /sys/fs/cgroup, lo up), then runs the kernel check and the kernel test
# cases between markers xtask parses from the serial console, and powers off.
# NO_COLOR: the agent's log lines land in the console xtask reads.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root NO_COLOR=1

mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for controller in cpu memory pids io cpuset; do
    echo "+$controller" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
done
ip link set lo up
hostname "$(cat /etc/hostname)"

. /vmtest.env
uptime_s() { cut -d' ' -f1 /proc/uptime; }

echo "VMTEST-KERNEL $(uname -r)"
echo "VMTEST-UPTIME boot $(uptime_s)"
echo "VMTEST-CHECK-BEGIN"
# A verifier that does not finish would leave the cases no time: the check
# gets part of the VM's time (CHECK_SECONDS), then the cases run anyway.
timeout -s KILL "$CHECK_SECONDS" "$AGENT" kernel-check --output json
rc=$?
[ "$rc" = 137 ] && echo "VMTEST-CHECK-KILLED"
echo "VMTEST-CHECK-END rc=$rc"
echo "VMTEST-UPTIME check $(uptime_s)"
if [ -n "$TESTS" ]; then
    echo "VMTEST-TESTS-BEGIN"
    # TCG runs 10-30x slower than the machine: the harness stretches its
    # timeouts by this factor (agent/tests/support, SLOW_ENV).
    RUST_BACKTRACE=1 TOKENWATCH_TEST_SLOW=5 "$TESTS" --include-ignored --test-threads=1
    echo "VMTEST-TESTS-END rc=$?"
    echo "VMTEST-UPTIME tests $(uptime_s)"
fi
echo "VMTEST-DMESG-BEGIN"
dmesg
echo "VMTEST-DMESG-END"
echo "VMTEST-DONE"
poweroff -f
