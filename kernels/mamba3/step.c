/* One Mamba-3 decoding position on the CPU, every head in one pass over its state (see mamba3_step_naive in
 * naive.py for the specification, and native.py for the caller, which passes contiguous arrays in the state's
 * dtype).
 *
 * Per batch row b and head h (group g of h):
 *   d      = softplus(dt + dt_bias)                          (dt as given without dt_softplus)
 *   alpha  = exp(d A), gamma = sigmoid(lam) d, beta = (d - gamma) alpha
 *   theta  = (theta + d angle) mod 2 pi                      cumulative angle, (m)
 *   k, q   = rotate(B[g] + B_bias[h]), rotate(C[g] + C_bias[h])   (R, n); pairs (2i, 2i+1), i < m, by theta[i]
 *   v      = x * mimo_x[h]                                   (R, p); x for SISO
 *   S      = alpha S + beta sum_r x_prev_r B_prev_r^T + gamma sum_r v_r k_r^T        (p, n)
 *   y      = sum_r mimo_o_r (S q_r + D v_r) silu(z mimo_z_r)                          (p)
 *   B_prev, x_prev = k, v
 * Optional arrays are NULL; A's batch stride is 0 where it is per head only, and angle has 1 or `heads` heads.
 * Returns 0, or 1 when the scratch memory cannot be allocated.
 */
#ifndef T /* the file includes itself once per element type, so it is compiled by its absolute path */
#include <stdint.h>
#include <stdlib.h>
#include <tgmath.h>

/* On x86-64 with GCC 11 or newer, a second copy for AVX2/FMA machines (x86-64-v3), chosen when the library loads */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define T float
#define NAME mamba3_step_f32
#include __FILE__
#undef T
#undef NAME
#define T double
#define NAME mamba3_step_f64
#include __FILE__

#else

CLONES int NAME(int64_t batch, int64_t heads, int64_t headdim, int64_t nstate, int64_t rank, int64_t groups,
         int64_t n_angles, T *ssm, T *theta, T *B_prev, T *x_prev, const T *x, const T *dt, const T *A,
         int64_t A_batch_stride, const T *B, const T *C, const T *lam, const T *angle,
         int64_t angle_heads, const T *D, const T *z, const T *dt_bias, int dt_softplus,
         const T *B_bias, const T *C_bias, const T *mimo_x, const T *mimo_z, const T *mimo_o, T *y) {
    const int64_t P = headdim, N = nstate, R = rank, M = n_angles, per_group = heads / groups;
    const T two_pi = (T)6.283185307179586476925286766559;
    /* scratch for one head: k, q (R, N); v (R, P); cos, sin (M); the output per rank (R) */
    T *scratch = (T *)malloc(sizeof(T) * (size_t)(2 * R * N + R * P + 2 * M + R + 1));
    if (!scratch) return 1;
    T *k = scratch, *q = k + R * N, *v = q + R * N, *cs = v + R * P, *sn = cs + M, *acc = sn + M;
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t h = 0; h < heads; ++h) {
            const int64_t bh = b * heads + h, g = h / per_group;
            T d = dt[bh] + (dt_bias ? dt_bias[h] : (T)0);
            if (dt_softplus) d = d > (T)20 ? d : log1p(exp(d));
            const T alpha = exp(d * A[b * A_batch_stride + h]);
            const T gamma = d / ((T)1 + exp(-lam[bh]));
            const T beta = (d - gamma) * alpha;
            T *th = theta + bh * M;
            for (int64_t i = 0; i < M; ++i) {
                T t = fmod(th[i] + d * angle[(b * angle_heads + h % angle_heads) * M + i], two_pi);
                if (t < 0) t += two_pi;
                th[i] = t;
                cs[i] = cos(t);
                sn[i] = sin(t);
            }
            for (int64_t r = 0; r < R; ++r) {
                const T *Bs = B + ((b * groups + g) * R + r) * N, *Cs = C + ((b * groups + g) * R + r) * N;
                T *kr = k + r * N, *qr = q + r * N;
                for (int64_t n = 0; n < N; ++n) {
                    kr[n] = Bs[n] + (B_bias ? B_bias[(h * R + r) * N + n] : (T)0);
                    qr[n] = Cs[n] + (C_bias ? C_bias[(h * R + r) * N + n] : (T)0);
                }
                for (int64_t i = 0; i < M; ++i) {
                    const T k0 = kr[2 * i], k1 = kr[2 * i + 1], q0 = qr[2 * i], q1 = qr[2 * i + 1];
                    kr[2 * i] = k0 * cs[i] - k1 * sn[i];
                    kr[2 * i + 1] = k0 * sn[i] + k1 * cs[i];
                    qr[2 * i] = q0 * cs[i] - q1 * sn[i];
                    qr[2 * i + 1] = q0 * sn[i] + q1 * cs[i];
                }
                for (int64_t p = 0; p < P; ++p)
                    v[r * P + p] = x[bh * P + p] * (mimo_x ? mimo_x[(h * R + r) * P + p] : (T)1);
            }
            T *S = ssm + bh * P * N, *Bp = B_prev + bh * R * N, *xp = x_prev + bh * R * P;
            for (int64_t p = 0; p < P; ++p) {
                T *row = S + p * N;
                if (R == 1) { /* one fused pass: update the row and read it out */
                    const T c_prev = beta * xp[p], c_now = gamma * v[p];
                    T sum = 0;
                    #pragma omp simd reduction(+ : sum)
                    for (int64_t n = 0; n < N; ++n) {
                        const T s = alpha * row[n] + c_prev * Bp[n] + c_now * k[n];
                        row[n] = s;
                        sum += s * q[n];
                    }
                    acc[0] = sum;
                } else {
                    #pragma omp simd
                    for (int64_t n = 0; n < N; ++n) row[n] *= alpha;
                    for (int64_t r = 0; r < R; ++r) {
                        const T c_prev = beta * xp[r * P + p], c_now = gamma * v[r * P + p];
                        const T *Bpr = Bp + r * N, *kr = k + r * N;
                        #pragma omp simd
                        for (int64_t n = 0; n < N; ++n) row[n] += c_prev * Bpr[n] + c_now * kr[n];
                    }
                    for (int64_t r = 0; r < R; ++r) {
                        const T *qr = q + r * N;
                        T sum = 0;
                        #pragma omp simd reduction(+ : sum)
                        for (int64_t n = 0; n < N; ++n) sum += qr[n] * row[n];
                        acc[r] = sum;
                    }
                }
                T out = 0;
                for (int64_t r = 0; r < R; ++r) {
                    T o = acc[r] + (D ? D[h] * v[r * P + p] : (T)0);
                    if (z) {
                        const T zr = z[bh * P + p] * (mimo_z ? mimo_z[(h * R + r) * P + p] : (T)1);
                        o *= zr / ((T)1 + exp(-zr));
                    }
                    out += mimo_o ? mimo_o[(h * R + r) * P + p] * o : o;
                }
                y[bh * P + p] = out;
            }
            for (int64_t i = 0; i < R * N; ++i) Bp[i] = k[i];
            for (int64_t i = 0; i < R * P; ++i) xp[i] = v[i];
        }
    }
    free(scratch);
    return 0;
}

#endif
