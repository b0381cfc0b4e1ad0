// Boot entry for the primary and secondary CPUs (AArch64).
//
// Runs with the MMU off at the physical load address while the image is linked in the upper
// half (VA = LINEAR_BASE + PA): only PC-relative addressing (adr/adrp) is used until the MMU is
// on, then control branches to the linked (virtual) address of the Rust entry.
//
// Bootstrap translation: one level-0 table and one level-1 table mapping the first 4 GiB of the
// physical address space with 1 GiB blocks (Arm ARM D8.3: level-1 block descriptors with the
// 4 KiB granule). The same level-0 table is installed in TTBR0 (identity map, needed for the
// instruction that turns the MMU on) and TTBR1 (VA 0xFFFF_0000_xxxx_xxxx indexes L0[0] too).
// GiB 0 holds the devices (Device-nGnRE, XN), GiBs 1-3 RAM (Normal WB, inner shareable). The
// kernel replaces these with its final W^X tables early in kernel_init.

.equ LINEAR_BASE_HI,   0xFFFF          // LINEAR_BASE = 0xFFFF << 48
.equ MAIR_VALUE,       0x04FF          // Attr0 = Normal WB RAWA, Attr1 = Device-nGnRE
.equ BLOCK_NORMAL,     0x701           // block | AttrIndx 0 | SH inner | AF
.equ BLOCK_DEVICE_LO,  0x405           // block | AttrIndx 1 | AF
.equ BLOCK_DEVICE_HI,  0x0060          // PXN | UXN (bits 53, 54) >> 48
// TCR_EL1: T0SZ = T1SZ = 16 (48-bit VAs), 4 KiB granules, table walks inner shareable WBWA.
// IPS and AS are filled in at run time from ID_AA64MMFR0_EL1.
.equ TCR_BASE_LO,      0x3510          // T0SZ=16 IRGN0=01 ORGN0=01 SH0=11 TG0=00
.equ TCR_BASE_HI,      0xB510          // T1SZ=16 IRGN1=01 ORGN1=01 SH1=11 TG1=10 (bits 31:16)
// SCTLR_EL1 RES1 bits (v8.0: 11, 20, 22, 23, 28, 29) plus M, C, SA, I.
.equ SCTLR_MMU_OFF,    0x30D00800
.equ SCTLR_MMU_ON,     0x30D0180D
.equ FDT_MAGIC_LE,     0xEDFE0DD0      // 0xD00DFEED stored big-endian, read little-endian

// Drop from EL2 to EL1 if entered at EL2 (QEMU `virtualization=on`); no-op at EL1.
// EL3 (`secure=on`) is not supported: the CPU reports it through semihosting and stops.
.macro DROP_TO_EL1
    mrs     x9, CurrentEL
    ubfx    x9, x9, #2, #2
    cmp     x9, #1
    b.eq    1f
    cmp     x9, #2
    b.ne    __boot_unsupported_el
    mov     x9, #(1 << 31)              // HCR_EL2.RW: EL1 is AArch64; nothing trapped to EL2
    msr     hcr_el2, x9
    mov     x9, #3                      // CNTHCTL_EL2: EL1 may use the physical timer/counter
    msr     cnthctl_el2, x9
    msr     cntvoff_el2, xzr
    mov     x9, #0x33FF                 // CPTR_EL2: no FP/SIMD traps
    msr     cptr_el2, x9
    msr     hstr_el2, xzr
    mrs     x9, midr_el1
    msr     vpidr_el2, x9
    mrs     x9, mpidr_el1
    msr     vmpidr_el2, x9
    mrs     x9, id_aa64pfr0_el1         // GIC system registers implemented?
    ubfx    x9, x9, #24, #4
    cbz     x9, 2f
    mrs     x9, S3_4_C12_C9_5           // ICC_SRE_EL2: SRE | DFB | DIB | Enable (EL1 may use them)
    orr     x9, x9, #0xF
    msr     S3_4_C12_C9_5, x9
    isb
2:  ldr     x9, =SCTLR_MMU_OFF
    msr     sctlr_el1, x9
    mov     x9, #0x3C5                  // SPSR: EL1h, DAIF masked
    msr     spsr_el2, x9
    adr     x9, 1f
    msr     elr_el2, x9
    eret
1:
.endm

// Enable FP/SIMD at EL1 before any Rust runs: aarch64-unknown-none code uses the FP registers
// (e.g. in core::fmt), and CPACR_EL1.FPEN resets to "trap".
.macro ENABLE_FP
    mov     x9, #(3 << 20)
    msr     cpacr_el1, x9
    isb
.endm

// Program MAIR/TCR, install \ttbr0 / \ttbr1, invalidate this CPU's TLB and turn the MMU on.
.macro ENABLE_MMU ttbr0, ttbr1
    ldr     x9, =MAIR_VALUE
    msr     mair_el1, x9
    mov     x9, #TCR_BASE_LO
    movk    x9, #TCR_BASE_HI, lsl #16
    mrs     x10, id_aa64mmfr0_el1
    ubfx    x11, x10, #0, #4            // PARange
    cmp     x11, #5                     // with 4 KiB granules and TCR.DS = 0, outputs are
    mov     x12, #5                     // at most 48 bits: clamp IPS to 0b101
    csel    x11, x11, x12, ls
    bfi     x9, x11, #32, #3            // TCR.IPS
    ubfx    x11, x10, #4, #4            // ASIDBits: 0b0010 = 16 bits
    cmp     x11, #2
    cset    x11, eq
    bfi     x9, x11, #36, #1            // TCR.AS
    msr     tcr_el1, x9
    msr     ttbr0_el1, \ttbr0
    msr     ttbr1_el1, \ttbr1
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x9, =SCTLR_MMU_ON
    msr     sctlr_el1, x9
    isb
.endm

.section .text.boot, "ax"
.global _start
_start:
    mov     x19, x0                     // DTB address (0 when QEMU loads an ELF)
    mrs     x20, CurrentEL              // the exception level QEMU entered at, for the log
    DROP_TO_EL1
    ENABLE_FP

    // Clear .bss and the bootstrap table area (physical addresses: MMU is off).
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __boot_tables_end
    add     x2, x2, :lo12:__boot_tables_end
3:  cmp     x1, x2
    b.hs    4f
    stp     xzr, xzr, [x1], #16
    b       3b
4:
    // Find the DTB: x0 if the loader passed one, else the start of the 2 MiB below the image,
    // where QEMU places it for an ELF kernel (linker.ld loads the image at RAM base + 2 MiB).
    cbnz    x19, 5f
    adrp    x1, __image_start
    sub     x1, x1, #0x200000
    ldr     w2, [x1]
    ldr     w3, =FDT_MAGIC_LE
    cmp     w2, w3
    csel    x19, x1, xzr, eq
5:
    // Bootstrap tables: L0[0] -> L1; L1[0] device block; L1[1..3] normal blocks.
    adrp    x1, __boot_l0
    adrp    x2, __boot_l1
    orr     x3, x2, #3                  // table descriptor
    str     x3, [x1]
    mov     x3, #BLOCK_DEVICE_LO
    movk    x3, #BLOCK_DEVICE_HI, lsl #48
    str     x3, [x2]
    mov     x4, #1
6:  lsl     x3, x4, #30
    mov     x5, #BLOCK_NORMAL
    orr     x3, x3, x5
    str     x3, [x2, x4, lsl #3]
    add     x4, x4, #1
    cmp     x4, #4
    b.lo    6b
    dsb     ish

    ENABLE_MMU x1, x1

    ldr     x1, =__boot_stack_top       // linked (virtual) addresses from here on
    mov     sp, x1
    mov     x0, x19                     // DTB physical address (0 if none was found)
    adrp    x1, _start                  // physical load address of the image
    ubfx    x2, x20, #2, #2             // entry exception level
    ldr     x3, =kernel_init
    br      x3

// Secondary CPUs: PSCI CPU_ON enters here with the MMU off and x0 = the physical address of a
// SecondaryBoot block (kernel/src/_arch/aarch64/cpu/smp.rs) holding TTBR1, stack and entry.
.global _secondary_start
_secondary_start:
    mov     x19, x0
    DROP_TO_EL1
    ENABLE_FP
    ldr     x20, [x19, #0]              // TTBR1 (final kernel tables)
    adrp    x1, __boot_l0               // TTBR0: bootstrap identity map for the switch-on
    ENABLE_MMU x1, x20
    ldr     x1, [x19, #8]               // stack top (virtual)
    mov     sp, x1
    ldr     x2, [x19, #16]              // entry (virtual)
    ldr     x0, [x19, #24]              // argument: per-CPU data pointer (virtual)
    br      x2

__boot_unsupported_el:
    // No console yet: report through semihosting SYS_EXIT with status 3 and stop.
    adr     x1, __boot_exit_block
    mov     w0, #0x18
    hlt     #0xF000
7:  wfe
    b       7b
.balign 8
__boot_exit_block:
    .quad 0x20026, 3

.section .boot_tables, "aw", %nobits
.balign 4096
.global __boot_l0
__boot_l0:
    .space 4096
__boot_l1:
    .space 4096

// Switch TTBR1 to the final kernel tables. Called through its physical (identity-mapped)
// address, so no instruction fetch depends on TTBR1 while the old and the new tables (1 GiB
// blocks vs 4 KiB pages for the same VAs) could both be cached: the TLB is emptied before
// anything is fetched or loaded through TTBR1 again (Arm ARM D8.16, break-before-make for
// changes of block size). Uses no stack. x0 = new TTBR1 value.
.section .text.boot, "ax"
.global __switch_ttbr1
__switch_ttbr1:
    dsb     ishst
    msr     ttbr1_el1, x0
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ret
