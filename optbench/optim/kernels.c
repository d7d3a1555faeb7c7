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
/* Tensors smaller than this run on one thread: waking the others costs more than they save. */
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

/* The one pass of LAMB and LARS that reduces a tensor's two norms: runs BODY for each i in [0, n),
 * in blocks of BLOCK elements, each block one vectorised loop, the blocks split across `threads`
 * threads where n is large. BODY adds to the `real`s `block_a` and `block_b`; their sums over all
 * blocks are added to the doubles SUM_A and SUM_B. */
#define SUM_IN_BLOCKS(n, threads, sum_a, sum_b, ...)                                               \
    PRAGMA(omp parallel for num_threads(threads) if(n >= PARALLEL_MIN)                              \
           reduction(+:sum_a, sum_b) schedule(static))                                              \
    for (int64_t start = 0; start < n; start += BLOCK) {                                            \
        const int64_t end = block_end(start, n);                                                    \
        real block_a = 0, block_b = 0;                                                              \
        PRAGMA(omp simd reduction(+:block_a, block_b))                                              \
        for (int64_t i = start; i < end; i++) {                                                     \
            __VA_ARGS__                                                                             \
        }                                                                                           \
        sum_a += block_a;                                                                           \
        sum_b += block_b;                                                                           \
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
