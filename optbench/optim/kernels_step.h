/* LAMB's, LARS's, Lion's and SophiaG's steps for one element type; included by kernels.c with `real` and `NAME` set.
 * Each takes `count` tensors as arrays of pointers with their `sizes`; all are dense, and a
 * parameter's gradient and state tensors have its layout. Their argument lists are KERNELS in
 * native.py, which compiles prototypes made from it ahead of these: a definition that differs
 * from its prototype fails to build. */

/* LAMB (optbench/optim/lamb.py): for each tensor
 *   m ← β1 m + (1−β1) g,  v ← β2 v + (1−β2) g²,  u = (m / bc1) / (√(v / bc2) + ε) + λ p
 * with u written to `scratch` (as large as the largest tensor) while Σp² and Σu² are reduced;
 * then p ← p − lr · trust_ratio(‖p‖, ‖u‖) · u. */
void NAME(lamb_step)(int64_t count, real *const *params, const real *const *grads, real *const *exp_avgs,
                     real *const *exp_avg_sqs, const int64_t *sizes, const double *bias_corrections1,
                     const double *bias_corrections2, real *scratch, double lr, double beta1,
                     double beta2, double eps, double weight_decay, int threads) {
    const real b1 = beta1, b2 = beta2, a1 = 1.0 - beta1, a2 = 1.0 - beta2, e = eps, wd = weight_decay;
    for (int64_t k = 0; k < count; k++) {
        real *restrict p = params[k], *restrict m = exp_avgs[k], *restrict v = exp_avg_sqs[k];
        const real *restrict g = grads[k];
        real *restrict u = scratch;
        const int64_t n = sizes[k];
        /* multiplying by the reciprocals is cheaper than dividing by bc1 and √bc2 */
        const real c1 = 1.0 / bias_corrections1[k], c2 = 1.0 / sqrt(bias_corrections2[k]);
        double param_sq = 0.0, update_sq = 0.0;
        SUM_IN_BLOCKS(n, threads, param_sq, update_sq,
            m[i] = m[i] * b1 + g[i] * a1;
            v[i] = v[i] * b2 + g[i] * g[i] * a2;
            u[i] = m[i] * c1 / (sqrt_real(v[i]) * c2 + e) + wd * p[i];
            block_a += p[i] * p[i];
            block_b += u[i] * u[i];
        )
        const real step = -lr * trust_ratio(sqrt(param_sq), sqrt(update_sq), 1.0);
        FOR_EACH_ELEMENT(n, threads,
            p[i] += u[i] * step;
        )
    }
}

/* LARS's sums of squares. A thread's share [lo, hi) of a tensor is read as four quarters at once,
 * [lo + r q, lo + (r + 1) q) for r = 0..3 (q = (hi − lo) / 4), block by block: one thread reading one
 * array front to back reaches less than half the memory bandwidth that it reaches reading several
 * places at once (a pass over the gradient alone took half as long as SGD's whole step, which reads
 * three arrays); the few elements past 4q are summed last. Each block's sums are made in `real`, each
 * quarter's in double. The functions are never inlined: LARS sums the weights' squares as its update
 * writes them and, where it does not know them, before its next update, and the two sums must agree
 * to the last bit: the same functions over the same blocks do. */

/* Adds to runs[r] the sum of the squares of x[a + r q, a + r q + len), r = 0..3, one vectorised loop. */
__attribute__((noinline)) static void NAME(add_quarter_squares)(const real *restrict x, int64_t a, int64_t q,
                                                                int64_t len, double *runs) {
    const real *restrict x0 = x + a, *restrict x1 = x0 + q, *restrict x2 = x1 + q, *restrict x3 = x2 + q;
    real s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+:s0, s1, s2, s3)
    for (int64_t i = 0; i < len; i++) {
        s0 += x0[i] * x0[i];
        s1 += x1[i] * x1[i];
        s2 += x2[i] * x2[i];
        s3 += x3[i] * x3[i];
    }
    runs[0] += s0;
    runs[1] += s1;
    runs[2] += s2;
    runs[3] += s3;
}

/* The share's sum from its quarters' sums and its last elements [from, hi) (at most 3). */
__attribute__((noinline)) static double NAME(share_squares)(const double *runs, const real *x, int64_t from,
                                                            int64_t hi) {
    double rest = 0.0;
    for (int64_t i = from; i < hi; i++)  /* the last 0-3 elements */
        rest += (double)x[i] * x[i];
    return ((runs[0] + runs[1]) + (runs[2] + runs[3])) + rest;
}

static int64_t NAME(block_length)(int64_t s, int64_t q) {
    return q - s < BLOCK ? q - s : BLOCK;
}

/* LARS's first pass over a share: ‖w‖² (unless `known`) and ‖g‖². */
static void NAME(lars_norms)(int64_t lo, int64_t hi, double *w_sq, double *g_sq, const real *w, const real *g,
                             int known) {
    const int64_t q = (hi - lo) / 4;
    double w_runs[4] = {0}, g_runs[4] = {0};
    for (int64_t s = 0; s < q; s += BLOCK) {
        const int64_t len = NAME(block_length)(s, q);
        if (!known)
            NAME(add_quarter_squares)(w, lo + s, q, len, w_runs);
        NAME(add_quarter_squares)(g, lo + s, q, len, g_runs);
    }
    if (!known)
        *w_sq = NAME(share_squares)(w_runs, w, lo + 4 * q, hi);
    *g_sq = NAME(share_squares)(g_runs, g, lo + 4 * q, hi);
}

/* LARS's update of elements [from, to): v ← m v + λ (g + β w), w ← w − γ v. */
static inline void NAME(lars_update_range)(real *restrict w, const real *restrict g, real *restrict buf, int64_t from,
                                           int64_t to, real mu, real local_lr, real wd, real gamma) {
#pragma omp simd
    for (int64_t i = from; i < to; i++) {
        buf[i] = buf[i] * mu + local_lr * (g[i] + wd * w[i]);
        w[i] -= gamma * buf[i];
    }
}

/* LARS's update of a share, a block of each quarter at a time, each block's squares summed as soon
 * as it is written (from cache): ‖w‖² of the new weights. */
static void NAME(lars_update)(int64_t lo, int64_t hi, double *w_sq, double *unused, real *restrict w,
                              const real *restrict g, real *restrict buf, real mu, real local_lr, real wd,
                              real gamma) {
    const int64_t q = (hi - lo) / 4;
    double runs[4] = {0};
    (void)unused;
    for (int64_t s = 0; s < q; s += BLOCK) {
        const int64_t len = NAME(block_length)(s, q);
        for (int r = 0; r < 4; r++)
            NAME(lars_update_range)(w, g, buf, lo + r * q + s, lo + r * q + s + len, mu, local_lr, wd, gamma);
        NAME(add_quarter_squares)(w, lo + s, q, len, runs);
    }
    NAME(lars_update_range)(w, g, buf, lo + 4 * q, hi, mu, local_lr, wd, gamma);  /* the last 0-3 elements */
    *w_sq = NAME(share_squares)(runs, w, lo + 4 * q, hi);
}

/* LARS (optbench/optim/lars.py): for each tensor, ‖g‖ (and ‖w‖, unless known) in one pass, then
 *   λ = trust_ratio(‖w‖, ‖g‖ + β‖w‖ + ε, η),  v ← m v + λ (g + β w),  w ← w − γ v,
 * summing ‖w‖² of the new weights as it writes them. `weight_squares`: per tensor, ‖w‖² where the
 * caller knows it (the last step's, for a weight unchanged since), else negative; on return, ‖w‖²
 * after the step. A known ‖w‖² spares the first pass a read of the weights: 4 arrays read in all,
 * where SGD reads 3, not 5. */
void NAME(lars_step)(int64_t count, real *const *params, const real *const *grads,
                     real *const *momentum_buffers, const int64_t *sizes, double *weight_squares, double lr,
                     double momentum, double weight_decay, double trust_coefficient, double eps, int threads) {
    const real mu = momentum, wd = weight_decay, gamma = lr;
    for (int64_t k = 0; k < count; k++) {
        real *w = params[k], *buf = momentum_buffers[k];
        const real *g = grads[k];
        const int64_t n = sizes[k];
        const int known = weight_squares[k] >= 0.0;
        double param_sq = known ? weight_squares[k] : 0.0, grad_sq = 0.0;
        FOR_EACH_SHARE(n, threads, param_sq, grad_sq, CALL_SHARE, NAME(lars_norms), w, g, known)
        const double w_norm = sqrt(param_sq);
        const real local_lr = trust_ratio(w_norm, sqrt(grad_sq) + weight_decay * w_norm + eps, trust_coefficient);
        double after = 0.0, unused = 0.0;
        FOR_EACH_SHARE(n, threads, after, unused, CALL_SHARE, NAME(lars_update), w, g, buf, mu, local_lr, wd, gamma)
        weight_squares[k] = after;
    }
}

/* Lion (optbench/optim/lion.py): for each tensor, in one pass,
 *   c = β1 m + (1−β1) g,  p ← p (1 − lr λ) − lr sign(c),  m ← β2 m + (1−β2) g.
 * sign(NaN) is 0, as torch.sign's on the CPU (the plain path's): the weight holds, the momentum is NaN. */
void NAME(lion_step)(int64_t count, real *const *params, const real *const *grads, real *const *exp_avgs,
                     const int64_t *sizes, double lr, double beta1, double beta2, double weight_decay,
                     int threads) {
    const real b1 = beta1, b2 = beta2, a1 = 1.0 - beta1, a2 = 1.0 - beta2;
    const real decay = 1.0 - lr * weight_decay, eta = lr;
    for (int64_t k = 0; k < count; k++) {
        real *restrict p = params[k], *restrict m = exp_avgs[k];
        const real *restrict g = grads[k];
        const int64_t n = sizes[k];
        FOR_EACH_ELEMENT(n, threads,
            const real c = m[i] * b1 + g[i] * a1;
            const real sign = (c > 0) - (c < 0);
            p[i] = p[i] * decay - eta * sign;
            m[i] = m[i] * b2 + g[i] * a2;
        )
    }
}

/* SophiaG (optbench/optim/sophia.py): for each tensor, in one pass,
 *   p ← p (1 − lr λ),  m ← β1 m + (1−β1) g,  p ← p − lr · sign(m) · min(|m| / (ρ h + ε), 1).
 * A NaN ratio stays NaN through the clip, as torch's clamp leaves it (the plain path's). */
void NAME(sophia_step)(int64_t count, real *const *params, const real *const *grads, real *const *exp_avgs,
                       const real *const *hessians, const int64_t *sizes, double lr, double beta1,
                       double rho, double weight_decay, double eps, int threads) {
    const real b1 = beta1, a1 = 1.0 - beta1, r = rho, e = eps, decay = 1.0 - lr * weight_decay, eta = lr;
    for (int64_t k = 0; k < count; k++) {
        real *restrict p = params[k], *restrict m = exp_avgs[k];
        const real *restrict g = grads[k], *restrict h = hessians[k];
        const int64_t n = sizes[k];
        FOR_EACH_ELEMENT(n, threads,
            /* Comparisons as numbers, and the clip a select of its own: GCC 12 left a loop with
             * nested selects, or a select inside a product, scalar with a branch per element on AVX2
             * (9x fused AdamW's step time on an AMD EPYC). -fno-trapping-math (native.FLAGS) lets it
             * compute both sides of a select. */
            const real mi = m[i] * b1 + g[i] * a1;
            m[i] = mi;
            const real sign = (real)((mi > 0) - (mi < 0));
            const real ratio = fabs_real(mi) / (r * h[i] + e);
            const real clipped = ratio > 1 ? (real)1 : ratio;
            p[i] = p[i] * decay - eta * sign * clipped;
        )
    }
}
