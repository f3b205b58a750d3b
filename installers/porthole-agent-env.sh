#!/bin/sh
# porthole-agent-env COMMAND [ARG...]: run the agent (COMMAND) with the environment that tunes its own
# process, then exec it (the service manager keeps its PID). Installed as
# /usr/lib/porthole/porthole-agent-env; the unit, `porthole agent install` and the test bed start the
# agent through it. A variable already set (e.g. an Environment= line of a drop-in) is left as it is.
# The agent removes these variables from the commands it runs. Why each (docs/BENCHMARKS.md):

# Buffers of 64 KiB and more are mapped and unmapped instead of fragmenting malloc's heap, which then
# never shrinks: ~30 MiB less RSS after a command's large output.
: "${MALLOC_MMAP_THRESHOLD_=65536}"
# No JIT: under emulation (QEMU TCG) each page of code V8 compiles makes QEMU translate it again, and
# the interpreter alone moved files and output faster, used less CPU and ~6 MiB less memory.
: "${NODE_OPTIONS=--jitless}"
export MALLOC_MMAP_THRESHOLD_ NODE_OPTIONS

# On an emulated x86-64 CPU (QEMU without KVM: TCG) every SIMD instruction is a call into the
# emulator, and OpenSSL's plain x86-64 sha256 hashes ~1.4 times faster than its AVX2 or SSSE3 code
# (the sha256 of every file the agent moves). Masked: AVX and SSSE3 (CPUID 1 ECX bits 28 and 9),
# BMI1, AVX2, BMI2 and SHA (CPUID 7 EBX bits 3, 5, 8, 29). On real CPUs (KVM, Xen) nothing changes.
# QEMU without KVM: the firmware says QEMU and the guest has no kvm-clock (KVM always offers it).
emulated_x86() {
  [ "$(uname -m)" = x86_64 ] || return 1
  [ "$(cat /sys/class/dmi/id/sys_vendor 2>/dev/null)" = QEMU ] || return 1
  ! grep -qw kvm-clock /sys/devices/system/clocksource/clocksource0/available_clocksource 2>/dev/null
}
if [ -z "${OPENSSL_ia32cap+set}" ] && emulated_x86; then
  export OPENSSL_ia32cap='~0x1000020000000000:~0x20000128'
fi

exec "$@"
