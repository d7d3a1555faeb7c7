/* optbench's CPU kernels for LAMB, LARS and Lion, built by optbench/optim/native.py on first use.
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

#define real float
#define sqrt_real sqrtf
#define NAME(base) base##_float32
#include "kernels_step.h"
#undef real
#undef sqrt_real
#undef NAME

#define real double
#define sqrt_real sqrt
#define NAME(base) base##_float64
#include "kernels_step.h"
#undef real
#undef sqrt_real
#undef NAME
