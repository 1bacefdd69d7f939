/*
 * A clock for counting, not timing: LD_PRELOADed into the guest program, clock_gettime
 * returns a time that advances 1 us per call. A runner's own timing code (edgec_run
 * sorts its measured latencies) then executes the same instructions on every run, so
 * instruction counts repeat exactly. The model's code never reads the clock.
 *
 * SPDX-License-Identifier: Apache-2.0
 */
#include <time.h>

static long long fake_ns;

int clock_gettime(clockid_t id, struct timespec *ts)
{
    (void)id;
    long long ns = __atomic_add_fetch(&fake_ns, 1000, __ATOMIC_RELAXED);
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
    return 0;
}
