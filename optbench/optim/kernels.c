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
#include <stdint.h>

/* Elements summed in `real` (in vector registers) before the sum joins a double accumulator. */
#define BLOCK 2048
/* Tensors smaller than this run on the calling thread: waking the others costs more than they save. */
#define PARALLEL_MIN 65536

/* coefficient * w / u, or 1 where either norm is zero: optbench.optim.base.trust_ratio. */
static double trust_ratio(double w, double u, double coefficient) {
    return (w > 0.0 && u > 0.0) ? coefficient * w / u : 1.0;
}

static int64_t block_end(int64_t start, int64_t n) {
    return start + BLOCK < n ? start + BLOCK : n;
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

/* One block of SUM_IN_BLOCKS: BODY for each i in [start, end), adding to block_a and block_b. */
#define SUM_BLOCK(n, sum_a, sum_b, ...)                                                            \
    {                                                                                               \
        const int64_t end = block_end(start, n);                                                    \
        real block_a = 0, block_b = 0;                                                              \
        PRAGMA(omp simd reduction(+:block_a, block_b))                                              \
        for (int64_t i = start; i < end; i++) {                                                     \
            __VA_ARGS__                                                                             \
        }                                                                                           \
        sum_a += block_a;                                                                           \
        sum_b += block_b;                                                                           \
    }

/* The one pass of LAMB and LARS that reduces a tensor's two norms: runs BODY for each i in [0, n),
 * in blocks of BLOCK elements, each block one vectorised loop, the blocks split across `threads`
 * threads where SPLIT. BODY adds to the `real`s `block_a` and `block_b`; their sums over all
 * blocks are added to the doubles SUM_A and SUM_B. */
#define SUM_IN_BLOCKS(n, threads, sum_a, sum_b, ...)                                               \
    if (SPLIT(n, threads)) {                                                                        \
        PRAGMA(omp parallel for num_threads(threads) reduction(+:sum_a, sum_b) schedule(static))    \
        for (int64_t start = 0; start < n; start += BLOCK)                                          \
            SUM_BLOCK(n, sum_a, sum_b, __VA_ARGS__)                                                 \
    } else {                                                                                        \
        for (int64_t start = 0; start < n; start += BLOCK)                                          \
            SUM_BLOCK(n, sum_a, sum_b, __VA_ARGS__)                                                 \
    }

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
