// EL1 exception vector table (Arm ARM D1.10.2): 16 entries of 0x80 bytes, 2 KiB aligned.
//
// Every entry saves the full context into a TrapFrame on the current stack (general registers,
// ELR/SPSR, the interrupted SP, and the FP/SIMD state — kernel Rust code uses the FP registers,
// so a handler could otherwise corrupt the interrupted code's q-registers), then calls
// `exception_dispatch(kind, &mut TrapFrame)`. The handler may edit ELR/SPSR/registers (e.g. to
// resume after a resolved fault). Layout must match `TrapFrame` in exception.rs.

.equ FRAME_SIZE, 0x320

.macro VECTOR kind
.balign 0x80
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0x00]
    mov     x0, #\kind
    b       __exception_common
.endm

.section .text.vectors, "ax"
.balign 2048
.global __exception_vectors
__exception_vectors:
    // kind = source << 2 | type; source 0: current EL with SP_EL0, 1: current EL with SP_ELx,
    // 2: lower EL AArch64, 3: lower EL AArch32; type 0: sync, 1: IRQ, 2: FIQ, 3: SError.
    VECTOR 0
    VECTOR 1
    VECTOR 2
    VECTOR 3
    VECTOR 4
    VECTOR 5
    VECTOR 6
    VECTOR 7
    VECTOR 8
    VECTOR 9
    VECTOR 10
    VECTOR 11
    VECTOR 12
    VECTOR 13
    VECTOR 14
    VECTOR 15

__exception_common:
    stp     x2, x3, [sp, #0x10]
    stp     x4, x5, [sp, #0x20]
    stp     x6, x7, [sp, #0x30]
    stp     x8, x9, [sp, #0x40]
    stp     x10, x11, [sp, #0x50]
    stp     x12, x13, [sp, #0x60]
    stp     x14, x15, [sp, #0x70]
    stp     x16, x17, [sp, #0x80]
    stp     x18, x19, [sp, #0x90]
    stp     x20, x21, [sp, #0xA0]
    stp     x22, x23, [sp, #0xB0]
    stp     x24, x25, [sp, #0xC0]
    stp     x26, x27, [sp, #0xD0]
    stp     x28, x29, [sp, #0xE0]
    mrs     x1, elr_el1
    stp     x30, x1, [sp, #0xF0]
    mrs     x2, spsr_el1
    add     x3, sp, #FRAME_SIZE
    stp     x2, x3, [sp, #0x100]
    stp     q0, q1, [sp, #0x110]
    stp     q2, q3, [sp, #0x130]
    stp     q4, q5, [sp, #0x150]
    stp     q6, q7, [sp, #0x170]
    stp     q8, q9, [sp, #0x190]
    stp     q10, q11, [sp, #0x1B0]
    stp     q12, q13, [sp, #0x1D0]
    stp     q14, q15, [sp, #0x1F0]
    stp     q16, q17, [sp, #0x210]
    stp     q18, q19, [sp, #0x230]
    stp     q20, q21, [sp, #0x250]
    stp     q22, q23, [sp, #0x270]
    stp     q24, q25, [sp, #0x290]
    stp     q26, q27, [sp, #0x2B0]
    stp     q28, q29, [sp, #0x2D0]
    stp     q30, q31, [sp, #0x2F0]
    mrs     x1, fpcr
    mrs     x2, fpsr
    add     x3, sp, #0x310              // beyond stp's immediate range for x registers
    stp     x1, x2, [x3]
    mov     x1, sp
    bl      exception_dispatch

    add     x3, sp, #0x310
    ldp     x1, x2, [x3]
    msr     fpcr, x1
    msr     fpsr, x2
    ldp     q0, q1, [sp, #0x110]
    ldp     q2, q3, [sp, #0x130]
    ldp     q4, q5, [sp, #0x150]
    ldp     q6, q7, [sp, #0x170]
    ldp     q8, q9, [sp, #0x190]
    ldp     q10, q11, [sp, #0x1B0]
    ldp     q12, q13, [sp, #0x1D0]
    ldp     q14, q15, [sp, #0x1F0]
    ldp     q16, q17, [sp, #0x210]
    ldp     q18, q19, [sp, #0x230]
    ldp     q20, q21, [sp, #0x250]
    ldp     q22, q23, [sp, #0x270]
    ldp     q24, q25, [sp, #0x290]
    ldp     q26, q27, [sp, #0x2B0]
    ldp     q28, q29, [sp, #0x2D0]
    ldp     q30, q31, [sp, #0x2F0]
    ldp     x2, x3, [sp, #0x100]
    msr     spsr_el1, x2
    ldp     x30, x1, [sp, #0xF0]
    msr     elr_el1, x1
    ldp     x2, x3, [sp, #0x10]
    ldp     x4, x5, [sp, #0x20]
    ldp     x6, x7, [sp, #0x30]
    ldp     x8, x9, [sp, #0x40]
    ldp     x10, x11, [sp, #0x50]
    ldp     x12, x13, [sp, #0x60]
    ldp     x14, x15, [sp, #0x70]
    ldp     x16, x17, [sp, #0x80]
    ldp     x18, x19, [sp, #0x90]
    ldp     x20, x21, [sp, #0xA0]
    ldp     x22, x23, [sp, #0xB0]
    ldp     x24, x25, [sp, #0xC0]
    ldp     x26, x27, [sp, #0xD0]
    ldp     x28, x29, [sp, #0xE0]
    ldp     x0, x1, [sp, #0x00]
    add     sp, sp, #FRAME_SIZE
    eret
