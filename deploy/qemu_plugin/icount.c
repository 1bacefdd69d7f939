/*
 * edgec icount: a QEMU TCG plugin counting the aarch64 guest instructions executed,
 * by class. Loaded by the dynamic qemu-user (qemu-aarch64 -plugin icount.so,outfile=F).
 *
 * Each instruction is classified once, when QEMU translates its block, by masks over
 * its 32-bit encoding (Arm ARM, A64 encoding index). A block's per-class totals are
 * added at every execution of the block by one callback, into a row owned by the
 * executing vCPU (a guest thread in qemu-user), so threads never share a counter.
 * A block left half-way (a fault, a signal) still counts whole: rare in user mode.
 *
 * A window can be marked from inside the guest (any language): the syscall
 * lseek(-1, MARK_START or MARK_STOP, 0) fails harmlessly with EBADF, and the plugin
 * records the calling thread's counts between the two ("window"; that thread only).
 * Windows may repeat (edgec_run --mark-kernels marks each kernel of one call): every
 * closed window is kept, in order ("windows"); "window" is the first.
 *
 * At exit the totals are written as one JSON object to `outfile` (stderr without it):
 * all threads ("total", "classes"), each thread's total, and the windows if marked.
 *
 * License: GNU GPL, version 2 or later (it is loaded into QEMU and built against its
 * header, qemu-plugin.h, vendored from QEMU 7.2.0); see COPYING and NOTICE.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu-plugin.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

enum { FP_MAC, INT_MAC, DOT, LOAD, STORE, SIMD_FP, SCALAR_MADD, OTHER, NCLASS };
static const char *class_names[NCLASS] = {
    "fp_mac", "int_mac", "dot", "load", "store", "simd_fp", "scalar_madd", "other"};

/* one cache line per vCPU row: 8 x u64 */
#define ROW 8
#define MAX_VCPUS 1024
static uint64_t counts[MAX_VCPUS][ROW] __attribute__((aligned(64)));
static uint64_t overflow[ROW];     /* vCPU index >= MAX_VCPUS: shared, atomic */
static unsigned max_vcpu_seen;
static const char *outfile;

#define SYS_LSEEK 62                            /* aarch64 */
#define MARK_START 0x6564676563000001ULL        /* "edgec" 1 */
#define MARK_STOP 0x6564676563000002ULL
static int window_open;                         /* a MARK_START not yet closed */
static unsigned window_vcpu;                    /* the thread that opened it */
static uint64_t window_start[ROW];
static uint64_t (*windows)[ROW];                /* closed windows, in order */
static size_t n_windows, cap_windows;

typedef struct { uint32_t mask, pattern; int cls; } Match;

/* Multiply-accumulate forms first; each (mask, pattern) is one encoding family. */
static const Match table[] = {
    /* FP: FMLA/FMLS vector (single/double; half precision), by element (vector, scalar) */
    {0xBFA0FC00, 0x0E20CC00, FP_MAC}, {0xBFA0FC00, 0x0EA0CC00, FP_MAC},
    {0xBFE0FC00, 0x0E400C00, FP_MAC}, {0xBFE0FC00, 0x0EC00C00, FP_MAC},
    {0xBF00B400, 0x0F001000, FP_MAC}, {0xFF00B400, 0x5F001000, FP_MAC},
    /* FP: scalar FMADD/FMSUB/FNMADD/FNMSUB */
    {0xFF000000, 0x1F000000, FP_MAC},
    /* integer: MLA/MLS vector, by element */
    {0x9F20FC00, 0x0E209400, INT_MAC}, {0xBF00B400, 0x2F000000, INT_MAC},
    /* integer: SMLAL/UMLAL/SMLSL/UMLSL (2) vector, by element */
    {0x9F20DC00, 0x0E208000, INT_MAC}, {0x9F00B400, 0x0F002000, INT_MAC},
    /* dot products: SDOT/UDOT vector and by element; USDOT; SUDOT/USDOT by element;
       SMMLA/UMMLA/USMMLA */
    {0x9FE0FC00, 0x0E809400, DOT}, {0x9FC0F400, 0x0F80E000, DOT},
    {0xBFE0FC00, 0x0E809C00, DOT}, {0xBF40F400, 0x0F00F000, DOT},
    {0xDFE0F400, 0x4E80A400, DOT},
};

static int is_load(uint32_t op)
{
    if ((op & 0x3B000000) == 0x18000000) {         /* load register (literal), PRFM lit */
        return 1;
    }
    if ((op & 0x3A000000) == 0x28000000) {         /* pairs: L is bit 22 */
        return (op >> 22) & 1;
    }
    if ((op & 0x3B200C00) == 0x38200000) {         /* atomics (LDADD, SWP, ...) read */
        return 1;
    }
    if ((op & 0x3B000000) == 0x38000000 || (op & 0x3B000000) == 0x39000000) {
        /* single register: opc (23:22) 00 store; V=1 opc 10 is a 128-bit store */
        uint32_t opc = (op >> 22) & 3, v = (op >> 26) & 1;
        return opc != 0 && !(v && opc == 2);
    }
    if ((op & 0x3FA00000) == 0x08A00000) {         /* CAS, CASA, CASL, ... read */
        return 1;
    }
    return (op >> 22) & 1;                          /* SIMD structures, exclusives: L */
}

static int classify(uint32_t op)
{
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if ((op & table[i].mask) == table[i].pattern) {
            return table[i].cls;
        }
    }
    if ((op & 0x7F000000) == 0x1B000000) {          /* scalar integer 3-source */
        uint32_t op31 = (op >> 21) & 7, ra = (op >> 10) & 31;
        /* MADD/MSUB, SMADDL/SMSUBL, UMADDL/UMSUBL with an addend (Ra 31 is MUL) */
        if ((op31 == 0 || op31 == 1 || op31 == 5) && ra != 31) {
            return SCALAR_MADD;
        }
        return OTHER;
    }
    if ((op & 0x0A000000) == 0x08000000) {          /* op0 = x1x0: loads and stores */
        return is_load(op) ? LOAD : STORE;
    }
    if ((op & 0x0E000000) == 0x0E000000) {          /* op0 = x111: SIMD and FP */
        return SIMD_FP;
    }
    return OTHER;
}

static void tb_exec(unsigned int vcpu, void *udata)
{
    const uint64_t *n = udata;
    if (vcpu < MAX_VCPUS) {
        uint64_t *row = counts[vcpu];
        for (int c = 0; c < NCLASS; c++) {
            row[c] += n[c];
        }
        if (vcpu >= max_vcpu_seen) {
            __atomic_store_n(&max_vcpu_seen, vcpu + 1, __ATOMIC_RELAXED);
        }
    } else {
        for (int c = 0; c < NCLASS; c++) {
            __atomic_fetch_add(&overflow[c], n[c], __ATOMIC_RELAXED);
        }
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    /* freed never: QEMU may run a block until exit (the plugin lives as long) */
    uint64_t *n = calloc(ROW, sizeof(uint64_t));
    size_t insns = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < insns; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t op = 0;
        if (qemu_plugin_insn_size(insn) == 4) {
            memcpy(&op, qemu_plugin_insn_data(insn), 4);
            n[classify(op)]++;
        } else {
            n[OTHER]++;
        }
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, n);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    if (num != SYS_LSEEK || (uint32_t)a1 != UINT32_MAX || vcpu >= MAX_VCPUS) {
        return;
    }
    if (a2 == MARK_START && !window_open) {
        window_vcpu = vcpu;
        memcpy(window_start, counts[vcpu], sizeof(window_start));
        window_open = 1;
    } else if (a2 == MARK_STOP && window_open && vcpu == window_vcpu) {
        if (n_windows == cap_windows) {
            size_t cap = cap_windows ? 2 * cap_windows : 256;
            void *grown = realloc(windows, cap * sizeof(*windows));
            if (!grown) {
                fprintf(stderr, "icount: out of memory after %zu windows\n", n_windows);
                window_open = 0;
                return;
            }
            windows = grown;
            cap_windows = cap;
        }
        for (int c = 0; c < NCLASS; c++) {
            windows[n_windows][c] = counts[vcpu][c] - window_start[c];
        }
        n_windows++;
        window_open = 0;
    }
}

static void print_classes(FILE *f, const uint64_t *row)
{
    fprintf(f, "{");
    for (int c = 0; c < NCLASS; c++) {
        fprintf(f, "%s\"%s\": %" PRIu64, c ? ", " : "", class_names[c], row[c]);
    }
    fprintf(f, "}");
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    uint64_t total[NCLASS], all = 0;
    for (int c = 0; c < NCLASS; c++) {
        total[c] = overflow[c];
        for (unsigned v = 0; v < MAX_VCPUS; v++) {
            total[c] += counts[v][c];
        }
        all += total[c];
    }
    FILE *f = outfile ? fopen(outfile, "w") : stderr;
    if (!f) {
        fprintf(stderr, "icount: cannot write %s\n", outfile);
        return;
    }
    fprintf(f, "{\"total\": %" PRIu64 ", \"vcpus\": %u, \"classes\": {", all, max_vcpu_seen);
    for (int c = 0; c < NCLASS; c++) {
        fprintf(f, "%s\"%s\": %" PRIu64, c ? ", " : "", class_names[c], total[c]);
    }
    fprintf(f, "}, \"vcpu_totals\": [");
    for (unsigned v = 0; v < max_vcpu_seen && v < MAX_VCPUS; v++) {
        uint64_t t = 0;
        for (int c = 0; c < NCLASS; c++) {
            t += counts[v][c];
        }
        fprintf(f, "%s%" PRIu64, v ? ", " : "", t);
    }
    fprintf(f, "]");
    if (n_windows) {
        fprintf(f, ", \"window\": {\"vcpu\": %u, \"classes\": ", window_vcpu);
        print_classes(f, windows[0]);
        fprintf(f, "}, \"windows\": [");
        for (size_t w = 0; w < n_windows; w++) {
            fprintf(f, "%s", w ? ", " : "");
            print_classes(f, windows[w]);
        }
        fprintf(f, "]");
    }
    fprintf(f, "}\n");
    if (f != stderr) {
        fclose(f);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    if (strcmp(info->target_name, "aarch64") != 0) {
        fprintf(stderr, "icount: aarch64 guests only, not %s\n", info->target_name);
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "outfile=", 8) == 0) {
            outfile = argv[i] + 8;
        } else {
            fprintf(stderr, "icount: unknown argument %s; valid: outfile=PATH\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
