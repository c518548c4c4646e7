/* log Z of the linear-chain CRF and, for its gradient, the node marginals and the per-sentence
 * transition counts: the scaled forward-backward of pipeline/chain_scaled.py as one C loop per
 * sentence, in double (pipeline/native.py loads it; bench/README.md "log Z in C" has the figures).
 *
 * alpha_i = (alpha_{i-1} @ P) * E_i divided by its sum, P = exp(transitions - max), E_i =
 * exp(e_i - max e_i); beta the same from the right; node_i = alpha_i * beta_i / (alpha_i . beta_i),
 * counts[a][c] = sum_i alpha_i[a] P[a][c] E_{i+1}[c] beta_{i+1}[c] / (bnorm_i * alpha_i . beta_i).
 * Exactness check, as chain_scaled's but at double's bound: every entry the structure makes
 * reachable (an allowed transition from the previous support, an allowed start / end) must be, before
 * its division, at least TINY = T * 2^-1022 / 2^-52, and so must the final sum and every alpha_i .
 * beta_i; otherwise ok[b] = 0 and the caller recomputes the sentence in log space (also for NaN,
 * +inf, -inf emissions and sentences with no allowed path).
 *
 * Layouts as kbest.c: em [B, L, T], trans [TB, T, T], start [SB, T], end [EB, T] float32,
 * lengths [B] int64. Out: log_z [B] double, ok [B] uint8; with grad != 0 also node [B, L, T] and
 * counts [B, T, T] float32, zero-filled by the caller (left zero for sentences not ok).
 * Returns 0, or -1 when out of memory.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    double tmax, *P, *PT, *u, *alpha, *beta, *bnorm, *raw, *r, *counts;
    uint8_t *allowed;
} work;

static double max_of(const float *x, int64_t n) {
    double m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* The sum of raw [T] into *norm; 0 when the check fails: an entry below tiny must be an exact 0
 * that the structure allows (`reachable(c)` false), and the sum must be >= tiny and finite. Exact
 * zeros are rare (a label no allowed transition reaches), so reachability is tested only there. */
#define CHECKED_SUM(raw, T, tiny, norm, reachable)                                  \
    do {                                                                            \
        double s_ = 0.0;                                                            \
        for (int64_t c = 0; c < (T); c++) {                                         \
            s_ += (raw)[c];                                                         \
            if (!((raw)[c] >= (tiny)) && ((raw)[c] != 0.0 || (reachable))) return 0; \
        }                                                                           \
        if (!(s_ >= (tiny) && s_ < INFINITY)) return 0;                             \
        *(norm) = s_;                                                               \
    } while (0)

/* some a with prev[a] > 0 and an allowed transition a -> c */
static int reached(const double *prev, const uint8_t *allowed, int64_t T, int64_t c) {
    for (int64_t a = 0; a < T; a++)
        if (prev[a] > 0.0 && allowed[a * T + c]) return 1;
    return 0;
}

/* some c with next[c] > 0 and an allowed transition a -> c */
static int reaches(const double *next, const uint8_t *allowed, int64_t T, int64_t a) {
    for (int64_t c = 0; c < T; c++)
        if (next[c] > 0.0 && allowed[a * T + c]) return 1;
    return 0;
}

/* P = exp(trans - max) and which transitions are allowed, for the sentences that share trans */
static void transitions(const float *trans, int64_t T, work *w) {
    w->tmax = max_of(trans, T * T);
    for (int64_t a = 0; a < T; a++)
        for (int64_t c = 0; c < T; c++) {
            int64_t j = a * T + c;
            w->P[j] = w->PT[c * T + a] = exp((double)trans[j] - w->tmax);
            w->allowed[j] = trans[j] > -INFINITY;
        }
}

static int sentence(const float *em, const float *start, const float *end, int64_t n, int64_t T,
                    int grad, work *w, double *log_z, float *node, float *counts) {
    const double tiny = (double)T * ldexp(1.0, -1022) / ldexp(1.0, -52);
    double *P = w->P, *u = w->u, *alpha = w->alpha, *beta = w->beta, *raw = w->raw, *r = w->r;
    const uint8_t *allowed = w->allowed;
    double tmax = w->tmax;
    double smax = max_of(start, T), emax = max_of(end, T), total = 0.0, norm;
    for (int64_t i = 0; i < n; i++) {
        const float *e = em + i * T;
        double m = max_of(e, T);
        for (int64_t c = 0; c < T; c++) u[i * T + c] = exp((double)e[c] - m);
        total += m;
    }
    for (int64_t c = 0; c < T; c++) raw[c] = exp((double)start[c] - smax) * u[c];
    CHECKED_SUM(raw, T, tiny, &norm, start[c] > -INFINITY);
    total += log(norm) + smax;
    for (int64_t c = 0; c < T; c++) alpha[c] = raw[c] / norm;
    for (int64_t i = 1; i < n; i++) {
        const double *prev = alpha + (i - 1) * T;
        for (int64_t c = 0; c < T; c++) raw[c] = 0.0;
        for (int64_t a = 0; a < T; a++) {
            if (prev[a] == 0.0) continue;
            const double *row = P + a * T;
            double x = prev[a];
            for (int64_t c = 0; c < T; c++) raw[c] += x * row[c];
        }
        for (int64_t c = 0; c < T; c++) raw[c] *= u[i * T + c];
        CHECKED_SUM(raw, T, tiny, &norm, reached(prev, allowed, T, c));
        total += log(norm) + tmax;
        for (int64_t c = 0; c < T; c++) alpha[i * T + c] = raw[c] / norm;
    }
    const double *last = alpha + (n - 1) * T;
    double final = 0.0;
    for (int64_t c = 0; c < T; c++) final += last[c] * exp((double)end[c] - emax);
    if (!(final >= tiny && final < INFINITY)) return 0;
    *log_z = total + log(final) + emax;
    if (!grad) return 1;
    /* backward pass: beta_{n-1} = exp(end - max); beta_i = P @ (E_{i+1} * beta_{i+1}) */
    for (int64_t c = 0; c < T; c++) raw[c] = exp((double)end[c] - emax);
    CHECKED_SUM(raw, T, tiny, &norm, end[c] > -INFINITY);
    w->bnorm[n - 1] = norm;
    for (int64_t c = 0; c < T; c++) beta[(n - 1) * T + c] = raw[c] / norm;
    for (int64_t i = n - 2; i >= 0; i--) {
        const double *next = beta + (i + 1) * T;
        for (int64_t c = 0; c < T; c++) r[c] = u[(i + 1) * T + c] * next[c];
        for (int64_t a = 0; a < T; a++) raw[a] = 0.0;
        for (int64_t c = 0; c < T; c++) {  /* raw = P @ r as rows of P^T, like the forward */
            if (r[c] == 0.0) continue;
            const double *col = w->PT + c * T;
            double x = r[c];
            for (int64_t a = 0; a < T; a++) raw[a] += col[a] * x;
        }
        CHECKED_SUM(raw, T, tiny, &norm, reaches(next, allowed, T, c));
        w->bnorm[i] = norm;
        for (int64_t a = 0; a < T; a++) beta[i * T + a] = raw[a] / norm;
    }
    double *acc = w->counts;
    for (int64_t j = 0; j < T * T; j++) acc[j] = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double *al = alpha + i * T, *be = beta + i * T;
        double dot = 0.0;
        for (int64_t c = 0; c < T; c++) dot += al[c] * be[c];
        if (!(dot >= tiny)) return 0;
        for (int64_t c = 0; c < T; c++) node[i * T + c] = (float)(al[c] * be[c] / dot);
        if (i == n - 1) break;
        double scale = 1.0 / (w->bnorm[i] * dot);
        const double *next = beta + (i + 1) * T;
        for (int64_t c = 0; c < T; c++) r[c] = u[(i + 1) * T + c] * next[c];
        for (int64_t a = 0; a < T; a++) {  /* counts before the final product with P */
            double left = al[a] * scale;
            if (left == 0.0) continue;
            double *row = acc + a * T;
            for (int64_t c = 0; c < T; c++) row[c] += left * r[c];
        }
    }
    for (int64_t j = 0; j < T * T; j++) counts[j] = (float)(acc[j] * P[j]);
    return 1;
}

int structkd_log_partition(const float *em, const float *trans, const float *start, const float *end,
                           const int64_t *lengths, int64_t B, int64_t L, int64_t T, int64_t TB,
                           int64_t SB, int64_t EB, int grad, double *log_z, uint8_t *ok, float *node,
                           float *counts) {
    work w = {0};
    size_t lt = (size_t)(L * T), tt = (size_t)(T * T);
    w.P = malloc(sizeof(double) * tt);
    w.PT = malloc(sizeof(double) * tt);
    w.counts = malloc(sizeof(double) * tt);
    w.u = malloc(sizeof(double) * lt);
    w.alpha = malloc(sizeof(double) * lt);
    w.beta = malloc(sizeof(double) * lt);
    w.bnorm = malloc(sizeof(double) * (size_t)L);
    w.raw = malloc(sizeof(double) * (size_t)T);
    w.r = malloc(sizeof(double) * (size_t)T);
    w.allowed = malloc(tt);
    int status = 0;
    if (!w.P || !w.PT || !w.counts || !w.u || !w.alpha || !w.beta || !w.bnorm || !w.raw || !w.r || !w.allowed) {
        status = -1;
    } else {
        for (int64_t b = 0; b < B; b++) {
            if (TB > 1 || b == 0) transitions(trans + (TB > 1 ? b : 0) * T * T, T, &w);
            log_z[b] = -INFINITY;
            ok[b] = lengths[b] > 0 &&
                    sentence(em + b * L * T, start + (SB > 1 ? b : 0) * T, end + (EB > 1 ? b : 0) * T,
                             lengths[b], T, grad, &w, log_z + b, grad ? node + b * L * T : NULL,
                             grad ? counts + b * T * T : NULL);
        }
    }
    free(w.P); free(w.PT); free(w.counts); free(w.u); free(w.alpha); free(w.beta); free(w.bnorm);
    free(w.raw); free(w.r); free(w.allowed);
    return status;
}
