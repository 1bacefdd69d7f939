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
 * At exit the totals are written as one JSON object to `outfile` (stderr without it).
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

enum { FP_MAC, INT_MAC, DOT, LOAD, STORE, SIMD_FP, OTHER, NCLASS };
static const char *class_names[NCLASS] = {
    "fp_mac", "int_mac", "dot", "load", "store", "simd_fp", "other"};

/* one cache line per vCPU row: 8 x u64 */
#define ROW 8
#define MAX_VCPUS 1024
static uint64_t counts[MAX_VCPUS][ROW] __attribute__((aligned(64)));
static uint64_t overflow[ROW];     /* vCPU index >= MAX_VCPUS: shared, atomic */
static unsigned max_vcpu_seen;
static const char *outfile;

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
    if ((op & 0x3B000000) == 0x38000000 || (op & 0x3B000000) == 0x39000000) {
        /* single register: opc (23:22) 00 store; V=1 opc 10 is a 128-bit store;
           atomic memory operations (LDADD, SWP, ...) read: load */
        uint32_t opc = (op >> 22) & 3, v = (op >> 26) & 1;
        return opc != 0 && !(v && opc == 2);
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
    fprintf(f, "}}\n");
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
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
