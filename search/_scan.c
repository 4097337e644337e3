/* The exact scan: inner products of stored vectors (float16 or float32) with a few float32
 * queries, at the speed memory can be read.
 *
 * One definition of a score, whatever the CPU: lane l (0..15) of a row accumulates
 * fma(x[i], q[i], acc) over i = l, l + 16, l + 32, ... in order, starting from 0 (a last partial
 * chunk is padded with zeros), and the 16 lanes are summed as a fixed tree (halves added:
 * 8, 4, 2, 1). The AVX-512 path keeps the 16 lanes in one register, AVX2 in two, the portable
 * path in an array with fmaf, so all three give the same bits; a row's score depends on that
 * row and that query only (not on its position, the tile, the thread or the batch).
 *
 * The matrix is read once per call: rows are taken a tile at a time and every query is
 * applied to the tile while it sits in L1. Threads split the rows; the caller releases the GIL
 * (ctypes does). Plain C ABI, no Python headers: loaded with ctypes.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define LK_X86 1
#include <immintrin.h>
#endif

#define LANES 16
#define MIN_BYTES_PER_THREAD (2 << 20) /* less work than this per thread is not worth a thread */

enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

typedef struct {
    const void *x;
    int f16;
    int64_t rows, dim;
    const float *q;
    int64_t m;
    float *out;     /* row r's score for query j at out[r * rs + j * cs] */
    int64_t rs, cs; /* (rows, m) row-major: rs = m, cs = 1; by query (m, rows): rs = 1, cs = rows */
} Job;

#define OUT(job, r, j) ((job)->out[(r) * (job)->rs + (j) * (job)->cs])

/* ---- the fixed reduction, shared by every path ---- */
static inline float reduce16(const float *a) {
    float s8[8], s4[4], s2[2];
    for (int l = 0; l < 8; l++) s8[l] = a[l] + a[l + 8];
    for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
    for (int l = 0; l < 2; l++) s2[l] = s4[l] + s4[l + 2];
    return s2[0] + s2[1];
}

/* ---- portable path ---- */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            mant <<= 1;
        } while (!(mant & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float load_x(const Job *job, int64_t r, int64_t i) {
    if (job->f16) return half_to_float(((const uint16_t *)job->x)[r * job->dim + i]);
    return ((const float *)job->x)[r * job->dim + i];
}

/* Rows [r0, r1) of the job, every query, one row and one query at a time. */
static void rows_generic(const Job *job, int64_t r0, int64_t r1) {
    float xs[LANES], acc[LANES];
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t j = 0; j < job->m; j++) {
            const float *q = job->q + j * job->dim;
            for (int l = 0; l < LANES; l++) acc[l] = 0.0f;
            for (int64_t i = 0; i < job->dim; i += LANES) {
                for (int l = 0; l < LANES; l++) {
                    int64_t k = i + l;
                    xs[l] = k < job->dim ? load_x(job, r, k) : 0.0f;
                    acc[l] = fmaf(xs[l], k < job->dim ? q[k] : 0.0f, acc[l]);
                }
            }
            OUT(job, r, j) = reduce16(acc);
        }
    }
}

#ifdef LK_X86
/* ---- AVX-512F: the 16 lanes in one register ---- */
#define T512 __attribute__((target("avx512f")))
#define INLINE512 T512 static inline __attribute__((always_inline))

INLINE512 __m512 ld512(const Job *job, int64_t r, int64_t i) {
    if (job->f16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)job->x + r * job->dim + i)));
    return _mm512_loadu_ps((const float *)job->x + r * job->dim + i);
}

/* The last partial chunk of a row, zero-padded. */
INLINE512 __m512 tail512(const Job *job, int64_t r, int64_t i) {
    int64_t left = job->dim - i;
    if (job->f16) {
        uint16_t buf[LANES] = {0};
        memcpy(buf, (const uint16_t *)job->x + r * job->dim + i, (size_t)left * 2);
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)buf));
    }
    float buf[LANES] = {0};
    memcpy(buf, (const float *)job->x + r * job->dim + i, (size_t)left * 4);
    return _mm512_loadu_ps(buf);
}

/* R rows from r times G queries from j; qp: the queries padded to dp columns with zeros. */
INLINE512 void tile512(const Job *job, const float *qp, int64_t dp, int64_t r, int64_t j, const int R, const int G) {
    __m512 acc[4][4];
    for (int a = 0; a < R; a++)
        for (int b = 0; b < G; b++) acc[a][b] = _mm512_setzero_ps();
    int64_t full = job->dim / LANES * LANES;
    for (int64_t i = 0; i < full; i += LANES) {
        __m512 xv[4];
        for (int a = 0; a < R; a++) xv[a] = ld512(job, r + a, i);
        for (int b = 0; b < G; b++) {
            __m512 qv = _mm512_loadu_ps(qp + (j + b) * dp + i);
            for (int a = 0; a < R; a++) acc[a][b] = _mm512_fmadd_ps(xv[a], qv, acc[a][b]);
        }
    }
    if (full < dp) {
        __m512 xv[4];
        for (int a = 0; a < R; a++) xv[a] = tail512(job, r + a, full);
        for (int b = 0; b < G; b++) {
            __m512 qv = _mm512_loadu_ps(qp + (j + b) * dp + full);
            for (int a = 0; a < R; a++) acc[a][b] = _mm512_fmadd_ps(xv[a], qv, acc[a][b]);
        }
    }
    float lanes[LANES];
    for (int a = 0; a < R; a++)
        for (int b = 0; b < G; b++) {
            _mm512_storeu_ps(lanes, acc[a][b]);
            OUT(job, r + a, j + b) = reduce16(lanes);
        }
}

#define DEF512(R, G)                                                                            \
    T512 static void tile512_##R##_##G(const Job *job, const float *qp, int64_t dp, int64_t r, int64_t j) { \
        tile512(job, qp, dp, r, j, R, G);                                                       \
    }
DEF512(4, 1)
DEF512(1, 1)
DEF512(4, 4)
DEF512(1, 4)

/* ---- AVX2 + FMA + F16C: lanes 0-7 and 8-15 in two registers ---- */
#define T256 __attribute__((target("avx2,fma,f16c")))
#define INLINE256 T256 static inline __attribute__((always_inline))

INLINE256 void ld256(const Job *job, int64_t r, int64_t i, __m256 *lo, __m256 *hi) {
    int64_t left = job->dim - i;
    if (job->f16) {
        const uint16_t *p = (const uint16_t *)job->x + r * job->dim + i;
        uint16_t buf[LANES] = {0};
        if (left < LANES) {
            memcpy(buf, p, (size_t)left * 2);
            p = buf;
        }
        *lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        *hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)));
        return;
    }
    const float *p = (const float *)job->x + r * job->dim + i;
    float buf[LANES] = {0};
    if (left < LANES) {
        memcpy(buf, p, (size_t)left * 4);
        p = buf;
    }
    *lo = _mm256_loadu_ps(p);
    *hi = _mm256_loadu_ps(p + 8);
}

INLINE256 void tile256(const Job *job, const float *qp, int64_t dp, int64_t r, int64_t j, const int R, const int G) {
    __m256 lo[4][2], hi[4][2];
    for (int a = 0; a < R; a++)
        for (int b = 0; b < G; b++) lo[a][b] = hi[a][b] = _mm256_setzero_ps();
    for (int64_t i = 0; i < dp; i += LANES) {
        __m256 xl[4], xh[4];
        for (int a = 0; a < R; a++) ld256(job, r + a, i, &xl[a], &xh[a]);
        for (int b = 0; b < G; b++) {
            __m256 ql = _mm256_loadu_ps(qp + (j + b) * dp + i), qh = _mm256_loadu_ps(qp + (j + b) * dp + i + 8);
            for (int a = 0; a < R; a++) {
                lo[a][b] = _mm256_fmadd_ps(xl[a], ql, lo[a][b]);
                hi[a][b] = _mm256_fmadd_ps(xh[a], qh, hi[a][b]);
            }
        }
    }
    float lanes[LANES];
    for (int a = 0; a < R; a++)
        for (int b = 0; b < G; b++) {
            _mm256_storeu_ps(lanes, lo[a][b]);
            _mm256_storeu_ps(lanes + 8, hi[a][b]);
            OUT(job, r + a, j + b) = reduce16(lanes);
        }
}

#define DEF256(R, G)                                                                            \
    T256 static void tile256_##R##_##G(const Job *job, const float *qp, int64_t dp, int64_t r, int64_t j) { \
        tile256(job, qp, dp, r, j, R, G);                                                       \
    }
DEF256(4, 1)
DEF256(1, 1)
DEF256(2, 2)
DEF256(1, 2)
DEF256(2, 1)
#endif

typedef void (*TileFn)(const Job *, const float *, int64_t, int64_t, int64_t);

typedef struct {
    int rm, gm;                /* the main tile: rm rows by gm queries */
    TileFn one_query, one_one; /* (4 rows, 1 query), (1, 1) */
    TileFn main, row_main, main_one; /* (rm, gm), (1, gm), (rm, 1) */
} Shapes;

typedef struct {
    const Job *job;
    const float *qp;
    int64_t dp, r0, r1;
    int isa;
} Part;

static void run_tiles(const Part *p, const Shapes *s) {
    const Job *job = p->job;
    int64_t r = p->r0;
    if (job->m == 1) {
        for (; r + 4 <= p->r1; r += 4) s->one_query(job, p->qp, p->dp, r, 0);
        for (; r < p->r1; r++) s->one_one(job, p->qp, p->dp, r, 0);
        return;
    }
    int64_t gfull = job->m / s->gm * s->gm;
    for (; r + s->rm <= p->r1; r += s->rm) { /* the tile's rows stay in L1 across the queries */
        int64_t j = 0;
        for (; j < gfull; j += s->gm) s->main(job, p->qp, p->dp, r, j);
        for (; j < job->m; j++) s->main_one(job, p->qp, p->dp, r, j);
    }
    for (; r < p->r1; r++) {
        int64_t j = 0;
        for (; j < gfull; j += s->gm) s->row_main(job, p->qp, p->dp, r, j);
        for (; j < job->m; j++) s->one_one(job, p->qp, p->dp, r, j);
    }
}

static void *run_part(void *arg) {
    const Part *p = arg;
#ifdef LK_X86
    static const Shapes s512 = {4, 4, tile512_4_1, tile512_1_1, tile512_4_4, tile512_1_4, tile512_4_1};
    static const Shapes s256 = {2, 2, tile256_4_1, tile256_1_1, tile256_2_2, tile256_1_2, tile256_2_1};
    if (p->isa == ISA_AVX512) {
        run_tiles(p, &s512);
        return NULL;
    }
    if (p->isa == ISA_AVX2) {
        run_tiles(p, &s256);
        return NULL;
    }
#endif
    rows_generic(p->job, p->r0, p->r1);
    return NULL;
}

/* ---- entry points ---- */

static int detect_isa(void) {
#ifdef LK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return ISA_AVX2;
#endif
    return ISA_GENERIC;
}

/* The best path this CPU (and its OS) supports; detected once (cpuid traps in a VM). */
int lk_isa(void) {
    static volatile int known = -1; /* a race only computes the same answer twice */
    if (known < 0) known = detect_isa();
    return known;
}

/* Threads worth starting for this much work: at most ``threads``, each with a fair share. */
static int threads_for(int64_t units, int64_t bytes, int threads) {
    int64_t t = threads < 1 ? 1 : threads;
    int64_t by_bytes = bytes / MIN_BYTES_PER_THREAD;
    if (t > by_bytes) t = by_bytes;
    if (t > units) t = units;
    return t < 1 ? 1 : (int)t;
}

/* Runs fn over ``threads`` parts (the caller's thread takes the first). 0, or -1 when a
 * thread could not be started (the work is then done on the caller's thread). */
static int run_threads(void *(*fn)(void *), void *parts, size_t part_size, int threads) {
    pthread_t ids[256];
    int started = 0, rc = 0;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&ids[t], NULL, fn, (char *)parts + (size_t)t * part_size) != 0) {
            rc = -1;
            break;
        }
        started = t;
    }
    fn(parts);
    for (int t = 1; t <= started; t++) pthread_join(ids[t], NULL);
    for (int t = started + 1; t < threads; t++) fn((char *)parts + (size_t)t * part_size);
    return rc;
}

/* out (rows, m) = x (rows, dim; float16 when f16, else float32) times q (m, dim) transposed,
 * row r's score for query j written at out[r * rs + j * cs] (strides in floats: any layout, e.g.
 * (m, rows) by query, or a slice of a larger matrix). isa: the path (at most lk_isa()); threads
 * split the rows. 0, or -1 when memory ran out. */
int lk_scan(const void *x, int f16, int64_t rows, int64_t dim, const float *q, int64_t m, float *out,
            int64_t rs, int64_t cs, int threads, int isa) {
    if (rows <= 0 || m <= 0) return 0;
    if (isa > lk_isa()) isa = lk_isa();
    int64_t dp = (dim + LANES - 1) / LANES * LANES;
    float *qp = calloc((size_t)(m * dp), sizeof(float));
    if (qp == NULL) return -1;
    for (int64_t j = 0; j < m; j++) memcpy(qp + j * dp, q + j * dim, (size_t)dim * sizeof(float));
    Job job = {x, f16, rows, dim, q, m, out, rs, cs};
    int64_t row_bytes = dim * (f16 ? 2 : 4);
    int nt = threads_for((rows + 3) / 4, rows * row_bytes, threads > 256 ? 256 : threads);
    Part parts[256];
    int64_t per = (rows + nt - 1) / nt;
    per = (per + 3) / 4 * 4; /* whole tiles per thread */
    for (int t = 0; t < nt; t++) {
        int64_t r0 = t * per < rows ? t * per : rows, r1 = r0 + per < rows ? r0 + per : rows;
        parts[t] = (Part){&job, qp, dp, r0, r1, isa};
    }
    run_threads(run_part, parts, sizeof(Part), nt);
    free(qp);
    return 0;
}

/* ---- read bandwidth: a streaming sum of 64-bit words, as a scan reads ---- */
typedef struct {
    const uint64_t *p;
    int64_t words;
    int isa;
    uint64_t sum;
} SumPart;

#ifdef LK_X86
T512 static uint64_t sum512(const uint64_t *p, int64_t words) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= words; i += 32) {
        a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(p + i));
        a1 = _mm512_add_epi64(a1, _mm512_loadu_si512(p + i + 8));
        a2 = _mm512_add_epi64(a2, _mm512_loadu_si512(p + i + 16));
        a3 = _mm512_add_epi64(a3, _mm512_loadu_si512(p + i + 24));
    }
    uint64_t lanes[8], s = 0;
    _mm512_storeu_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
    for (int l = 0; l < 8; l++) s += lanes[l];
    for (; i < words; i++) s += p[i];
    return s;
}

T256 static uint64_t sum256(const uint64_t *p, int64_t words) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= words; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    uint64_t lanes[4], s = 0;
    _mm256_storeu_si256((__m256i *)lanes, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    for (int l = 0; l < 4; l++) s += lanes[l];
    for (; i < words; i++) s += p[i];
    return s;
}
#endif

static void *sum_part(void *arg) {
    SumPart *p = arg;
#ifdef LK_X86
    if (p->isa == ISA_AVX512) {
        p->sum = sum512(p->p, p->words);
        return NULL;
    }
    if (p->isa == ISA_AVX2) {
        p->sum = sum256(p->p, p->words);
        return NULL;
    }
#endif
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= p->words; i += 4) {
        s0 += p->p[i];
        s1 += p->p[i + 1];
        s2 += p->p[i + 2];
        s3 += p->p[i + 3];
    }
    for (; i < p->words; i++) s0 += p->p[i];
    p->sum = s0 + s1 + s2 + s3;
    return NULL;
}

/* The sum of the 64-bit words of buf (nbytes rounded down to words), read by ``threads``. */
uint64_t lk_read_sum(const void *buf, int64_t nbytes, int threads, int isa) {
    if (isa > lk_isa()) isa = lk_isa();
    int64_t words = nbytes / 8;
    int nt = threads_for(words, nbytes, threads > 256 ? 256 : threads);
    SumPart parts[256];
    int64_t per = (words + nt - 1) / nt;
    for (int t = 0; t < nt; t++) {
        int64_t w0 = t * per < words ? t * per : words, w1 = w0 + per < words ? w0 + per : words;
        parts[t] = (SumPart){(const uint64_t *)buf + w0, w1 - w0, isa, 0};
    }
    run_threads(sum_part, parts, sizeof(SumPart), nt);
    uint64_t s = 0;
    for (int t = 0; t < nt; t++) s += parts[t].sum;
    return s;
}

/* ---- rows put in order in place: row i becomes the old row perm[i] ---- */
/* perm must be a permutation of 0..n-1 (the caller checks). 0, or -1 when memory ran out. */
int lk_permute_rows(void *buf, const int64_t *perm, int64_t n, int64_t row_bytes) {
    char *rows = buf;
    unsigned char *done = calloc((size_t)n, 1);
    char *tmp = malloc((size_t)row_bytes);
    if (done == NULL || tmp == NULL) {
        free(done);
        free(tmp);
        return -1;
    }
    for (int64_t start = 0; start < n; start++) {
        if (done[start] || perm[start] == start) continue;
        memcpy(tmp, rows + start * row_bytes, (size_t)row_bytes);
        int64_t i = start;
        for (;;) {
            int64_t from = perm[i];
            done[i] = 1;
            if (from == start) {
                memcpy(rows + i * row_bytes, tmp, (size_t)row_bytes);
                break;
            }
            memcpy(rows + i * row_bytes, rows + from * row_bytes, (size_t)row_bytes);
            i = from;
        }
    }
    free(done);
    free(tmp);
    return 0;
}
