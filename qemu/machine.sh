# shellcheck shell=bash
# The arrays are used by the script that sources this; the commas are QEMU's, not bash's.
# shellcheck disable=SC2034,SC2054
# The QEMU machine the kernel runs on, as bash arrays. Sourced by scripts/qemu-run, the only
# place that assembles a QEMU command line; qemu/README.md explains every choice.

# SMMUv3 in front of the PCIe root bus; GICv3 (system-register CPU interface, >8 CPUs).
QEMU_MACHINE_ARGS=(-M virt,iommu=smmuv3,gic-version=3)
# FEAT_TLBIRANGE and 16-bit ASIDs. Two CPUs for the concurrent-flush tests (QEMU_SMP=N for
# another count, 1..8: the kernel's limit). 1 GiB of RAM.
QEMU_CPU_ARGS=(-cpu max -smp "${QEMU_SMP:-2}" -m 1G)
# Console on stdio, no default NIC (it would take 00:01.0 from edu), semihosting for the
# exit status.
QEMU_IO_ARGS=(-nographic -nic none -semihosting)
# edu at 00:01.0 (StreamID 8). The full dma_mask: by default edu truncates bus addresses to
# 28 bits before they reach the SMMU.
QEMU_DEVICE_ARGS=(-device edu,dma_mask=0xffffffffffffffff)

# Deterministic virtual time: with sleep=off a CPU idle in WFI warps virtual time to the next
# timer (edu's 100 ms DMA timer completes at once). Each instruction counts 2^shift ns.
QEMU_ICOUNT_DEFAULT_SHIFT=7

# Checks QEMU_SMP (unset means 2).
check_smp() {
    case ${QEMU_SMP:-2} in
        [1-8]) ;;
        *)
            echo "QEMU_SMP must be a CPU count 1..8, not '$QEMU_SMP'" >&2
            return 1
            ;;
    esac
}

# Sets QEMU_ICOUNT_ARGS from QEMU_ICOUNT=on|off|<shift 0..10> (unset means on).
set_icount_args() {
    case ${QEMU_ICOUNT:-on} in
        off) QEMU_ICOUNT_ARGS=() ;;
        on) QEMU_ICOUNT_ARGS=(-icount "shift=$QEMU_ICOUNT_DEFAULT_SHIFT,sleep=off") ;;
        [0-9] | 10) QEMU_ICOUNT_ARGS=(-icount "shift=$QEMU_ICOUNT,sleep=off") ;;
        *)
            echo "QEMU_ICOUNT must be on, off or a shift 0..10, not '$QEMU_ICOUNT'" >&2
            return 1
            ;;
    esac
}
