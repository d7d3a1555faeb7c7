/* LAMB's, LARS's and Lion's steps for one element type; included by kernels.c with `real` and `NAME` set.
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

/* LARS (optbench/optim/lars.py): for each tensor, ‖w‖ and ‖g‖ in one pass, then
 *   λ = trust_ratio(‖w‖, ‖g‖ + β‖w‖ + ε, η),  v ← m v + λ (g + β w),  w ← w − γ v. */
void NAME(lars_step)(int64_t count, real *const *params, const real *const *grads,
                     real *const *momentum_buffers, const int64_t *sizes, double lr, double momentum,
                     double weight_decay, double trust_coefficient, double eps, int threads) {
    const real mu = momentum, wd = weight_decay, gamma = lr;
    for (int64_t k = 0; k < count; k++) {
        real *restrict w = params[k], *restrict buf = momentum_buffers[k];
        const real *restrict g = grads[k];
        const int64_t n = sizes[k];
        double param_sq = 0.0, grad_sq = 0.0;
        SUM_IN_BLOCKS(n, threads, param_sq, grad_sq,
            block_a += w[i] * w[i];
            block_b += g[i] * g[i];
        )
        const double w_norm = sqrt(param_sq);
        const real local_lr = trust_ratio(w_norm, sqrt(grad_sq) + weight_decay * w_norm + eps, trust_coefficient);
        FOR_EACH_ELEMENT(n, threads,
            buf[i] = buf[i] * mu + local_lr * (g[i] + wd * w[i]);
            w[i] -= gamma * buf[i];
        )
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
