/* optbench's CPU kernels for LAMB, LARS, Lion and SophiaG, built by optbench/optim/native.py on first use.
 *
 * LAMB and LARS scale each tensor's step by a trust ratio made of that tensor's norms, so a step
 * needs two passes over each tensor: one that reduces the norms, then one that applies the step.
 * torch's ops take a pass per operation and torch.compile's reductions are slow on the CPU; here
 * each pass is one vectorised loop over memory, split across torch's OpenMP threads. Lion's step
 * is one such pass.
 *
 * The arithmetic is written for one element type `real` in kernels_step.h, included twice below
 * (float32 and float64). The kernels are tested against the optimizers' plain per-tensor paths
 * (tests/test_optim_fused.py), which read like the papers' equations.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>

/* Elements summed in `real` (in vector registers) before the sum joins a double accumulator. */
#define BLOCK 2048
/* Tensors smaller than this run on the calling thread: waking the others costs more than they save. */
#define PARALLEL_MIN 65536

/* coefficient * w / u, or 1 where either norm is zero: optbench.optim.base.trust_ratio. */
static double trust_ratio(double w, double u, double coefficient) {
    return (w > 0.0 && u > 0.0) ? coefficient * w / u : 1.0;
}

/* A pragma inside a macro: #pragma cannot be written there, _Pragma("...") can. */
#define PRAGMA(...) _Pragma(#__VA_ARGS__)

/* Whether a tensor of n elements is split across threads. Where not, the loop runs outside OpenMP
 * altogether: a parallel region with an if() clause that is false still calls into the runtime, about
 * 0.6 µs a tensor, most of a step over thousands of small tensors. */
#define SPLIT(n, threads) ((n) >= PARALLEL_MIN && (threads) > 1)

/* BODY for each i in [0, n), one vectorised loop, split across `threads` threads where SPLIT. */
#define FOR_EACH_ELEMENT(n, threads, ...)                                                          \
    if (SPLIT(n, threads)) {                                                                        \
        PRAGMA(omp parallel for simd num_threads(threads) schedule(static))                         \
        for (int64_t i = 0; i < n; i++) {                                                           \
            __VA_ARGS__                                                                             \
        }                                                                                           \
    } else {                                                                                        \
        PRAGMA(omp simd)                                                                            \
        for (int64_t i = 0; i < n; i++) {                                                           \
            __VA_ARGS__                                                                             \
        }                                                                                           \
    }

/* Sums over a tensor are split across threads in contiguous shares, and the threads' sums added in
 * thread order: the same elements and thread count give the same sum to the last bit, whichever
 * thread finishes first (an OpenMP reduction adds them in the order the threads finish: with three
 * or more threads, a sum that differs from run to run). */
#define MAX_THREADS 256

/* For each thread's share [lo, hi) of [0, n) (all of it unless SPLIT): SHARE(n, lo, hi, a, b, ...)
 * adds the share's two sums to the doubles a and b; their totals are added to SUM_A and SUM_B.
 * SHARE is a macro named here and expanded below, so that the OpenMP pragmas inside it never pass
 * through a macro argument. */
#define FOR_EACH_SHARE(n, threads, SUM_A, SUM_B, SHARE, ...)                                       \
    if (SPLIT(n, threads)) {                                                                        \
        const int team = (threads) < MAX_THREADS ? (threads) : MAX_THREADS;                         \
        double part_a[MAX_THREADS], part_b[MAX_THREADS];                                            \
        for (int t = 0; t < team; t++)                                                              \
            part_a[t] = part_b[t] = 0.0;                                                            \
        PRAGMA(omp parallel num_threads(team))                                                      \
        {                                                                                           \
            const int t = omp_get_thread_num(), size = omp_get_num_threads();                       \
            SHARE(n, (n) * t / size, (n) * (t + 1) / size, part_a[t], part_b[t], __VA_ARGS__)       \
        }                                                                                           \
        for (int t = 0; t < team; t++) {                                                            \
            SUM_A += part_a[t];                                                                     \
            SUM_B += part_b[t];                                                                     \
        }                                                                                           \
    } else {                                                                                        \
        double all_a = 0.0, all_b = 0.0;                                                            \
        SHARE(n, 0, n, all_a, all_b, __VA_ARGS__)                                                   \
        SUM_A += all_a;                                                                             \
        SUM_B += all_b;                                                                             \
    }

/* A share of SUM_IN_BLOCKS: BODY for each i in [lo, hi), in blocks of BLOCK elements, each one
 * vectorised loop adding to the `real`s block_a and block_b, which are added to the doubles. */
#define SUM_SHARE(n, lo, hi, share_a, share_b, ...)                                                \
    for (int64_t start = (lo); start < (hi); start += BLOCK) {                                     \
        const int64_t end = start + BLOCK < (hi) ? start + BLOCK : (hi);                            \
        real block_a = 0, block_b = 0;                                                              \
        PRAGMA(omp simd reduction(+:block_a, block_b))                                              \
        for (int64_t i = start; i < end; i++) {                                                     \
            __VA_ARGS__                                                                             \
        }                                                                                           \
        share_a += block_a;                                                                         \
        share_b += block_b;                                                                         \
    }

/* A pass that reduces two sums: runs BODY for each i in [0, n); BODY adds to the `real`s `block_a`
 * and `block_b`, whose sums over all blocks are added to the doubles SUM_A and SUM_B. */
#define SUM_IN_BLOCKS(n, threads, sum_a, sum_b, ...) FOR_EACH_SHARE(n, threads, sum_a, sum_b, SUM_SHARE, __VA_ARGS__)

/* A share summed by a function of kernels_step.h: FN(lo, hi, &a, &b, ...). */
#define CALL_SHARE(n, lo, hi, share_a, share_b, FN, ...) FN(lo, hi, &share_a, &share_b, __VA_ARGS__);

#define real float
#define sqrt_real sqrtf
#define fabs_real fabsf
#define NAME(base) base##_float32
#include "kernels_step.h"
#undef real
#undef sqrt_real
#undef fabs_real
#undef NAME

#define real double
#define sqrt_real sqrt
#define fabs_real fabs
#define NAME(base) base##_float64
#include "kernels_step.h"
#undef real
#undef sqrt_real
#undef fabs_real
#undef NAME
