/* The exact k-best beam of pipeline/kbest.py as one C loop per sentence (pipeline/native.py
 * compiles and loads it; bench/README.md "k-best: a C beam" has the measurements).
 *
 * Per sentence of n words: a backward max pass gives behind[i][a], the best score of everything
 * after y_i = a (end included), in double; the forward beam keeps at each position the k prefixes
 * whose best completed score (prefix score + behind at its last label) is highest, the same
 * exactness argument as the torch beam. Candidates of -inf priority (no allowed completion) are never
 * kept, so a sentence with fewer than k paths leaves its surplus ranks at -inf. Beam entries are
 * sorted by priority, and an entry's candidates score at most its own priority, so the scan of a
 * full beam stops at the first entry that cannot beat the k-th kept candidate. Ties keep the earlier
 * candidate (entry rank, then label).
 *
 * Layouts (row-major, float32 in, contiguous): em [B, L, T], trans [TB, T, T] (a -> c at a*T + c),
 * start [SB, T], end [EB, T] with TB, SB, EB in {1, B}; lengths [B] int64. Out: paths [B, k, L]
 * int64 (zero-filled by the caller), scores [B, k] float32. Returns 0, or -1 when out of memory.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct { double priority, prefix; int32_t label, parent; } entry;

/* Insert candidate c into the sorted beam (descending priority) of *count <= k entries. */
static void offer(entry *beam, int *count, int k, double priority, double prefix, int32_t label,
                  int32_t parent) {
    int at = *count < k ? *count : k - 1;
    if (*count == k && !(priority > beam[k - 1].priority)) return;
    while (at > 0 && priority > beam[at - 1].priority) {
        beam[at] = beam[at - 1];
        at--;
    }
    beam[at].priority = priority;
    beam[at].prefix = prefix;
    beam[at].label = label;
    beam[at].parent = parent;
    if (*count < k) (*count)++;
}

static void sentence(const float *em, const float *trans, const float *start, const float *end,
                     int64_t n, int64_t L, int64_t T, int k, double *behind, double *next,
                     entry *beams, int64_t *paths, float *scores) {
    for (int r = 0; r < k; r++) scores[r] = -INFINITY;
    if (n <= 0) return;
    /* behind[i * T + a]; next = em[i + 1] + behind[i + 1], the best completion through each c */
    for (int64_t a = 0; a < T; a++) behind[(n - 1) * T + a] = end[a];
    for (int64_t i = n - 2; i >= 0; i--) {
        const float *e = em + (i + 1) * T;
        const double *after = behind + (i + 1) * T;
        for (int64_t c = 0; c < T; c++) next[c] = (double)e[c] + after[c];
        double *out = behind + i * T;
        for (int64_t a = 0; a < T; a++) {
            const float *row = trans + a * T;
            double best = -INFINITY;
            for (int64_t c = 0; c < T; c++) {
                double v = (double)row[c] + next[c];
                best = v > best ? v : best;
            }
            out[a] = best;
        }
    }
    int counts_prev = 0, count = 0;
    entry *beam = beams;
    for (int64_t c = 0; c < T; c++) {
        double prefix = (double)start[c] + (double)em[c];
        double priority = prefix + behind[c];
        if (priority > -INFINITY) offer(beam, &count, k, priority, prefix, (int32_t)c, -1);
    }
    for (int64_t i = 1; i < n; i++) {
        entry *prev = beams + (i - 1) * k;
        counts_prev = count;
        count = 0;
        beam = beams + i * k;
        const float *e = em + i * T;
        const double *after = behind + i * T;
        for (int r = 0; r < counts_prev; r++) {
            if (count == k && !(prev[r].priority > beam[k - 1].priority)) break;
            const float *row = trans + (int64_t)prev[r].label * T;
            double prefix0 = prev[r].prefix;
            for (int64_t c = 0; c < T; c++) {
                double prefix = prefix0 + (double)row[c] + (double)e[c];
                double priority = prefix + after[c];
                if (priority > -INFINITY && (count < k || priority > beam[k - 1].priority))
                    offer(beam, &count, k, priority, prefix, (int32_t)c, r);
            }
        }
    }
    entry *last = beams + (n - 1) * k;
    for (int r = 0; r < count; r++) {
        scores[r] = (float)last[r].priority;
        int32_t at = r;
        for (int64_t i = n - 1; i >= 0; i--) {
            entry *x = beams + i * k + at;
            paths[(int64_t)r * L + i] = x->label;
            at = x->parent;
        }
    }
}

int structkd_kbest(const float *em, const float *trans, const float *start, const float *end,
                   const int64_t *lengths, int64_t B, int64_t L, int64_t T, int64_t TB, int64_t SB,
                   int64_t EB, int k, int64_t *paths, float *scores) {
    double *behind = malloc(sizeof(double) * (size_t)(L * T + T));
    entry *beams = malloc(sizeof(entry) * (size_t)(L * k));
    if (!behind || !beams) {
        free(behind);
        free(beams);
        return -1;
    }
    for (int64_t b = 0; b < B; b++)
        sentence(em + b * L * T, trans + (TB > 1 ? b : 0) * T * T, start + (SB > 1 ? b : 0) * T,
                 end + (EB > 1 ? b : 0) * T, lengths[b], L, T, k, behind, behind + L * T, beams,
                 paths + b * (int64_t)k * L, scores + b * k);
    free(behind);
    free(beams);
    return 0;
}
