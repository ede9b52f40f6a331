/* The warp of the moving voxels as one compiled pass (see core/warp.py for the rules it follows).
 *
 * For every moving voxel i: the sampling position pos_i + z * disp_i (voxels), its interpolation
 * cell (clamped to the volume unless every position of the frame is known to lie inside), the
 * trilinear image value of every channel, and the label (cell code, two-label vote, scored vote or
 * nearest neighbour), written at flat_index[i] of the output volumes. The torch code in
 * core/warp.py computes the same numbers with one vector operation per step over blocks of 2^16
 * voxels; here a chunk of CHUNK voxels goes through all steps while it is in the L1 cache.
 *
 * A chunk is done in phases so that the arithmetic vectorises: the cells (positions, floors,
 * fractions and lerp weights) in one loop, the corners gathered into 8 rows, the lerps in one
 * loop over the rows, then the scatter. Float arithmetic follows torch's vectorised CPU kernels:
 * positions as fma(disp, z, p) (torch.add with alpha), lerp as fma(coeff, end - start, base)
 * (torch.lerp), so the results equal the torch path's; compiled with -ffp-contract=off, the only
 * fused operations are these. Images with a non-finite voxel, and float16 images, stay on the
 * torch path.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

enum { DT_U8 = 0, DT_I8 = 1, DT_I16 = 2, DT_I32 = 3, DT_I64 = 4, DT_F32 = 5, DT_F64 = 6 };
#define MIXED 255
#define CHUNK 512 /* voxels per chunk: its rows (about 60 bytes a voxel) stay in the L1 cache */

typedef struct {
    const void *image;          /* (channels, N) in image_dtype, contiguous; NULL: no image */
    int32_t image_dtype;
    int32_t channels;
    float *image_out;           /* (channels, N) float32 */
    const void *labels;         /* (N,) in label_dtype; NULL: no labels */
    int32_t label_dtype;
    int32_t nearest;            /* 1: nearest-neighbour labels, 0: one-hot linear + argmax */
    const uint8_t *codes;       /* (N,) cell codes (uint8 labels, linear) or NULL */
    void *moving_out;           /* (P,) label_dtype or NULL */
    void *labels_out;           /* (N,) label_dtype or NULL */
    const float *disp;          /* (3, P) rows: displacement in voxels per mm of z */
    int64_t n_moving;           /* P: the row length of disp */
    /* the moving voxels as runs along X (raster order): run r holds the voxels run_start[r] ..
     * run_start[r + 1] - 1, the first at flat index run_flat[r] and (z, y, x) run_zyx[3 r ..];
     * run_start has n_runs + 1 entries, the last P (positions and flat indices need no memory
     * traffic of their own: a voxel costs the 12 bytes of its displacement) */
    const int64_t *run_start;
    const int64_t *run_flat;
    const int32_t *run_zyx;
    int64_t n_runs;
    int64_t shape[3];
    float z;
    int32_t inside;             /* 1: every position lies in [0, n - 2] on every axis: no clamping */
} WarpArgs;

static inline float fma3(float a, float b, float c) {
#ifdef __FMA__
    return __builtin_fmaf(a, b, c);
#else
    return fmaf(a, b, c);
#endif
}

/* torch's vectorised lerp, with its weight split into coeff (w or w - 1) and the side the base is
 * taken from (start when |w| < 0.5, else end) */
static inline float lerp(float a, float b, float coeff, int from_a) {
    return fma3(coeff, b - a, from_a ? a : b);
}

typedef struct {
    int64_t stride[3];
    int64_t offset[8];  /* flat offset of corner k = 4 bz + 2 by + bx */
    float max_coord[3];
    float max_cell[3];
    int64_t n;          /* voxels per channel */
} Grid;

static void make_grid(const WarpArgs *a, Grid *g) {
    g->stride[0] = a->shape[1] * a->shape[2];
    g->stride[1] = a->shape[2];
    g->stride[2] = 1;
    g->n = a->shape[0] * a->shape[1] * a->shape[2];
    int64_t step[3];
    for (int d = 0; d < 3; d++) {
        step[d] = a->shape[d] > 1 ? g->stride[d] : 0;
        g->max_coord[d] = (float)(a->shape[d] - 1);
        g->max_cell[d] = (float)(a->shape[d] > 2 ? a->shape[d] - 2 : 0);
    }
    for (int k = 0; k < 8; k++)
        g->offset[k] = ((k >> 2) & 1) * step[0] + ((k >> 1) & 1) * step[1] + (k & 1) * step[2];
}

/* The cells of one chunk: lower corner's flat index, fractions, lerp coefficients and sides. */
typedef struct {
    int64_t at[CHUNK];       /* flat index of each voxel */
    int64_t base[CHUNK];
    float f[3][CHUNK];
    float coeff[3][CHUNK];
    int32_t from_a[3][CHUNK];
    float v[8][CHUNK];       /* corner values of one channel, as float32 */
    float out[CHUNK];
} Chunk;

/* The first run holding voxel i (binary search: runs are sorted by their first voxel). */
static int64_t run_of(const WarpArgs *a, int64_t i) {
    int64_t lo = 0, hi = a->n_runs - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (a->run_start[mid] <= i) lo = mid; else hi = mid - 1;
    }
    return lo;
}

static void chunk_cells(const WarpArgs *a, const Grid *g, int64_t s, int m, int64_t *run, Chunk *c) {
    const int64_t P = a->n_moving;
    const float z = a->z;
    float pos[3][CHUNK];
    int32_t lo[3][CHUNK];
    int64_t r = *run;
    for (int j = 0; j < m;) {  /* run by run: each piece is a loop without branches */
        while (a->run_start[r + 1] <= s + j) r++;
        const int64_t k0 = s + j - a->run_start[r], left = a->run_start[r + 1] - (s + j);
        const int n = (int)(left < m - j ? left : m - j);
        const float pz = (float)a->run_zyx[3 * r], py = (float)a->run_zyx[3 * r + 1];
        const int32_t x0 = a->run_zyx[3 * r + 2] + (int32_t)k0;
        const int64_t f0 = a->run_flat[r] + k0;
        int64_t *restrict at = c->at + j;
        float *restrict qz = pos[0] + j, *restrict qy = pos[1] + j, *restrict qx = pos[2] + j;
        for (int q = 0; q < n; q++) {
            at[q] = f0 + q;
            qz[q] = pz;
            qy[q] = py;
            qx[q] = (float)(x0 + q);
        }
        j += n;
    }
    *run = r;
    for (int d = 0; d < 3; d++) {
        const float *restrict p = pos[d], *restrict disp = a->disp + d * P + s;
        float *restrict f = c->f[d], *restrict coeff = c->coeff[d];
        int32_t *restrict from_a = c->from_a[d], *restrict low = lo[d];
        const float top = g->max_coord[d], cell = g->max_cell[d];
        if (a->inside) {
            for (int j = 0; j < m; j++) {
                float v = fma3(disp[j], z, p[j]);
                float l = floorf(v);
                f[j] = v - l;
                low[j] = (int32_t)l;
            }
        } else {
            for (int j = 0; j < m; j++) {
                float v = fma3(disp[j], z, p[j]);
                v = v < 0.0f ? 0.0f : v;
                v = v > top ? top : v;
                float l = floorf(v);
                l = l > cell ? cell : l;
                f[j] = v - l;
                low[j] = (int32_t)l;
            }
        }
        for (int j = 0; j < m; j++) {
            int small = fabsf(f[j]) < 0.5f;
            from_a[j] = small;
            coeff[j] = small ? f[j] : f[j] - 1.0f;
        }
    }
    for (int j = 0; j < m; j++)
        c->base[j] = (int64_t)lo[2][j] + (int64_t)lo[0][j] * g->stride[0] + (int64_t)lo[1][j] * g->stride[1];
}

static void chunk_interpolate(Chunk *c, int m) {
    const float *restrict cz = c->coeff[0], *restrict cy = c->coeff[1], *restrict cx = c->coeff[2];
    const int32_t *restrict az = c->from_a[0], *restrict ay = c->from_a[1], *restrict ax = c->from_a[2];
    float *restrict out = c->out;
    for (int j = 0; j < m; j++) {
        float x0 = lerp(c->v[0][j], c->v[1][j], cx[j], ax[j]), x1 = lerp(c->v[2][j], c->v[3][j], cx[j], ax[j]);
        float x2 = lerp(c->v[4][j], c->v[5][j], cx[j], ax[j]), x3 = lerp(c->v[6][j], c->v[7][j], cx[j], ax[j]);
        float y0 = lerp(x0, x1, cy[j], ay[j]), y1 = lerp(x2, x3, cy[j], ay[j]);
        out[j] = lerp(y0, y1, cz[j], az[j]);
    }
}

/* ---- image: the corner gather, one function per dtype ------------------------------------ */
/* Corner k of the cell is at base + offset[k]; corners 2q and 2q + 1 differ by the X step, so a
 * voxel's base is read once and its 8 corners come from 4 rows (voxel by voxel: 30% faster than
 * row by row, which reads the bases 8 times and which the compiler turns into slow vector gathers) */
#define IMAGE_GATHER(NAME, T)                                                                    \
    static void NAME(const void *image, const Grid *g, const Chunk *c, int m, float v[8][CHUNK]) { \
        const T *restrict img = (const T *)image;                                                \
        const int64_t o0 = g->offset[0], o2 = g->offset[2], o4 = g->offset[4], o6 = g->offset[6]; \
        const int64_t ox = g->offset[1];                                                         \
        for (int j = 0; j < m; j++) {                                                            \
            const T *restrict p = img + c->base[j];                                              \
            v[0][j] = (float)p[o0];                                                              \
            v[1][j] = (float)p[o0 + ox];                                                         \
            v[2][j] = (float)p[o2];                                                              \
            v[3][j] = (float)p[o2 + ox];                                                         \
            v[4][j] = (float)p[o4];                                                              \
            v[5][j] = (float)p[o4 + ox];                                                         \
            v[6][j] = (float)p[o6];                                                              \
            v[7][j] = (float)p[o6 + ox];                                                         \
        }                                                                                        \
    }
IMAGE_GATHER(gather_u8, uint8_t)
IMAGE_GATHER(gather_i8, int8_t)
IMAGE_GATHER(gather_i16, int16_t)
IMAGE_GATHER(gather_i32, int32_t)
IMAGE_GATHER(gather_i64, int64_t)
IMAGE_GATHER(gather_f32, float)
IMAGE_GATHER(gather_f64, double)

typedef void (*Gather)(const void *, const Grid *, const Chunk *, int, float[8][CHUNK]);
static const Gather GATHERS[] = {gather_u8, gather_i8, gather_i16, gather_i32, gather_i64, gather_f32, gather_f64};
static const int64_t ITEMSIZE[] = {1, 1, 2, 4, 8, 4, 8};

static void chunk_image(const WarpArgs *a, const Grid *g, Chunk *c, int m) {
    const int64_t *restrict at = c->at;
    for (int ch = 0; ch < a->channels; ch++) {
        const char *image = (const char *)a->image + ch * g->n * ITEMSIZE[a->image_dtype];
        GATHERS[a->image_dtype](image, g, c, m, c->v);
        chunk_interpolate(c, m);
        float *restrict dst = a->image_out + ch * g->n;
        for (int j = 0; j < m; j++) dst[at[j]] = c->out[j];
    }
}

/* ---- labels ------------------------------------------------------------------------------ */
static inline float indicator_sum(const int64_t L[8], int64_t label, const float f[3]) {
    float v[8], coeff[3];
    int from_a[3];
    for (int k = 0; k < 8; k++) v[k] = L[k] == label ? 1.0f : 0.0f;
    for (int d = 0; d < 3; d++) {
        from_a[d] = fabsf(f[d]) < 0.5f;
        coeff[d] = from_a[d] ? f[d] : f[d] - 1.0f;
    }
    float x0 = lerp(v[0], v[1], coeff[2], from_a[2]), x1 = lerp(v[2], v[3], coeff[2], from_a[2]);
    float x2 = lerp(v[4], v[5], coeff[2], from_a[2]), x3 = lerp(v[6], v[7], coeff[2], from_a[2]);
    float y0 = lerp(x0, x1, coeff[1], from_a[1]), y1 = lerp(x2, x3, coeff[1], from_a[1]);
    return lerp(y0, y1, coeff[0], from_a[0]);
}

/* The corner label with the largest summed trilinear weight; the first corner wins ties (as
 * Warper._vote: two interpolations for a two-label cell, every corner scored otherwise). */
static int64_t vote(const int64_t L[8], const float f[3]) {
    int64_t first = L[0], high = L[0], low = L[0];
    for (int k = 1; k < 8; k++) {
        high = L[k] > high ? L[k] : high;
        low = L[k] < low ? L[k] : low;
    }
    int64_t other = high != first ? high : low;
    int many = 0;
    for (int k = 0; k < 8; k++) many |= L[k] != first && L[k] != other;
    if (!many) {
        float s_first = indicator_sum(L, first, f), s_other = indicator_sum(L, other, f);
        return s_other > s_first ? other : first;
    }
    float wz[2] = {1.0f - f[0], f[0]}, wy[2] = {1.0f - f[1], f[1]}, wx[2] = {1.0f - f[2], f[2]};
    float w[8];
    for (int k = 0; k < 8; k++) w[k] = (wz[(k >> 2) & 1] * wy[(k >> 1) & 1]) * wx[k & 1];
    int best = 0;
    float best_score = -1.0f;
    for (int i = 0; i < 8; i++) {
        float s = 0.0f;
        for (int j = 0; j < 8; j++) s += L[j] == L[i] ? w[j] : 0.0f;
        if (s > best_score) { best_score = s; best = i; }
    }
    return L[best];
}

#define LABEL_KERNEL(NAME, T)                                                                    \
    static void NAME(const WarpArgs *a, const Grid *g, const Chunk *c, int64_t s, int m) {       \
        const T *restrict lab = (const T *)a->labels;                                            \
        T *restrict moving = a->moving_out ? (T *)a->moving_out + s : 0;                         \
        T *restrict out = (T *)a->labels_out;                                                    \
        const uint8_t *restrict codes = a->codes;                                                \
        const int64_t *restrict at = c->at;                                                      \
        const int64_t P = a->n_moving;                                                           \
        for (int j = 0; j < m; j++) {                                                            \
            int64_t value;                                                                       \
            if (a->nearest) {                                                                    \
                int64_t idx = 0, rest = at[j];                                                   \
                for (int d = 0; d < 3; d++) {                                                    \
                    const int64_t q = rest / g->stride[d];                                       \
                    rest -= q * g->stride[d];                                                    \
                    float r = floorf(fma3(a->disp[d * P + s + j], a->z, (float)q) + 0.5f);       \
                    r = r < 0.0f ? 0.0f : r;                                                     \
                    r = r > g->max_coord[d] ? g->max_coord[d] : r;                               \
                    idx += (int64_t)r * g->stride[d];                                            \
                }                                                                                \
                value = (int64_t)lab[idx];                                                       \
            } else {                                                                             \
                const int64_t base = c->base[j];                                                 \
                int code = codes ? codes[base] : MIXED;                                          \
                if (code != MIXED) {                                                             \
                    value = code;                                                                \
                } else {                                                                         \
                    int64_t L[8];                                                                \
                    int same = 1;                                                                \
                    for (int k = 0; k < 8; k++) {                                                \
                        L[k] = (int64_t)lab[base + g->offset[k]];                                \
                        same &= L[k] == L[0];                                                    \
                    }                                                                            \
                    float f[3] = {c->f[0][j], c->f[1][j], c->f[2][j]};                           \
                    value = same ? L[0] : vote(L, f);                                            \
                }                                                                                \
            }                                                                                    \
            if (moving) moving[j] = (T)value;                                                    \
            if (out) out[at[j]] = (T)value;                                                      \
        }                                                                                        \
    }
LABEL_KERNEL(labels_u8, uint8_t)
LABEL_KERNEL(labels_i8, int8_t)
LABEL_KERNEL(labels_i16, int16_t)
LABEL_KERNEL(labels_i32, int32_t)
LABEL_KERNEL(labels_i64, int64_t)

typedef void (*LabelKernel)(const WarpArgs *, const Grid *, const Chunk *, int64_t, int);
static const LabelKernel LABELS[] = {labels_u8, labels_i8, labels_i16, labels_i32, labels_i64};

/* Warp the moving voxels start..stop-1. Returns 0, or -1 for an unsupported dtype or range. */
int laugen_warp(const WarpArgs *a, int64_t start, int64_t stop) {
    if (a->image && (a->image_dtype < 0 || a->image_dtype > DT_F64 || !a->image_out || a->channels < 1)) return -1;
    if (a->labels && (a->label_dtype < 0 || a->label_dtype > DT_I64 || (a->codes && a->label_dtype != DT_U8)))
        return -1;
    if (start < 0 || stop > a->n_moving || start > stop || a->n_runs < 1 || a->run_start[0] != 0 ||
        a->run_start[a->n_runs] != a->n_moving)
        return -1;
    if (start == stop) return 0;
    Grid g;
    make_grid(a, &g);
    Chunk c; /* about 50 kB, on this thread's stack */
    int64_t run = run_of(a, start);
    for (int64_t s = start; s < stop; s += CHUNK) {
        int m = (int)(s + CHUNK < stop ? CHUNK : stop - s);
        chunk_cells(a, &g, s, m, &run, &c);
        if (a->image) chunk_image(a, &g, &c, m);
        if (a->labels) LABELS[a->label_dtype](a, &g, &c, s, m);
    }
    return 0;
}

/* Cell codes of the cells whose lower corner lies in the box lo..hi (inclusive, hi <= n - 2 on
 * every axis of more than one voxel): the label when the cell's 8 corners agree, else MIXED
 * (as Warper._ensure_codes). ``lab`` and ``codes`` are (Z, Y, X) uint8 volumes of ``shape``.
 * Returns 0, or -1 for a box outside the volume. */
int laugen_cell_codes(const uint8_t *lab, uint8_t *codes, const int64_t *shape, const int64_t *lo, const int64_t *hi) {
    int64_t step[3], stride[3] = {shape[1] * shape[2], shape[2], 1};
    for (int d = 0; d < 3; d++) {
        if (lo[d] < 0 || hi[d] < lo[d] || hi[d] >= shape[d] || (shape[d] > 1 && hi[d] > shape[d] - 2)) return -1;
        step[d] = shape[d] > 1 ? stride[d] : 0;
    }
    const int64_t o[8] = {0, step[2], step[1], step[1] + step[2], step[0], step[0] + step[2], step[0] + step[1],
                          step[0] + step[1] + step[2]};
    for (int64_t z = lo[0]; z <= hi[0]; z++)
        for (int64_t y = lo[1]; y <= hi[1]; y++) {
            const int64_t row = z * stride[0] + y * stride[1];
            const uint8_t *restrict p = lab + row;
            uint8_t *restrict q = codes + row;
            for (int64_t x = lo[2]; x <= hi[2]; x++) {
                const uint8_t a = p[x];
                const int same = (p[x + o[1]] == a) & (p[x + o[2]] == a) & (p[x + o[3]] == a) & (p[x + o[4]] == a) &
                                 (p[x + o[5]] == a) & (p[x + o[6]] == a) & (p[x + o[7]] == a);
                q[x] = same ? a : MIXED;
            }
        }
    return 0;
}

/* Lowest value and count of values <= -1 of d = ((c3 z + c2) z + c1) z over n voxels (float32,
 * each operation rounded as torch's mul/add would: JacobianStats.summary in one pass). */
void laugen_det_summary(const float *c1, const float *c2, const float *c3, int64_t n, float z, float *low,
                        int64_t *folded) {
    float m = INFINITY;
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        float d = c3[i] * z;
        d = d + c2[i];
        d = d * z;
        d = d + c1[i];
        d = d * z;
        m = (d < m || d != d) ? d : m; /* a NaN stays, as torch's min */
        count += d <= -1.0f;
    }
    *low = m;
    *folded = count;
}

/* The number of runs along X of the non-zero voxels of a (d, h, w) uint8 mask (row by row). */
int64_t laugen_count_runs(const uint8_t *mask, const int64_t *roi_shape) {
    const int64_t rows = roi_shape[0] * roi_shape[1], w = roi_shape[2];
    int64_t n = 0;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *restrict p = mask + r * w;
        int prev = 0;
        for (int64_t x = 0; x < w; x++) {
            const int on = p[x] != 0;
            n += on & !prev;
            prev = on;
        }
    }
    return n;
}

/* The moving voxels of a field in one pass, in raster order, without temporaries: ``mask`` (d, h,
 * w) uint8 marks them in the field's ROI, which starts at ``roi_start`` in a volume of ``shape``;
 * ``mm`` is the field (3, d, h, w) float32 in mm. Writes, for the P voxels and the runs counted by
 * laugen_count_runs: ``flat`` (P) their flat index in the volume, ``pos`` (3, P) their (z, y, x)
 * index as float32, ``disp`` (3, P) the field there in voxels (mm / spacing, one float32 division
 * as torch's div_), the runs (as WarpArgs), and ``reach`` (3) the largest |disp| per axis.
 * Returns 0, or -1 when the counts differ from the mask's. */
int laugen_moving_voxels(const uint8_t *mask, const int64_t *roi_shape, const int64_t *roi_start, const int64_t *shape,
                         const float *mm, const float *spacing, int64_t P, int64_t n_runs, int64_t *flat, float *pos,
                         float *disp, int64_t *run_start, int64_t *run_flat, int32_t *run_zyx, float *reach) {
    const int64_t d = roi_shape[0], h = roi_shape[1], w = roi_shape[2], n = d * h * w;
    const int64_t sz = shape[1] * shape[2], sy = shape[2];
    float lo[3] = {0.0f, 0.0f, 0.0f}, hi[3] = {0.0f, 0.0f, 0.0f};
    int64_t i = 0, r = 0;
    for (int64_t z = 0; z < d; z++)
        for (int64_t y = 0; y < h; y++) {
            const int64_t row = (z * h + y) * w;
            const uint8_t *restrict p = mask + row;
            const int64_t Z = z + roi_start[0], Y = y + roi_start[1];
            int prev = 0;
            for (int64_t x = 0; x < w; x++) {
                if (!p[x]) { prev = 0; continue; }
                if (i >= P) return -1;
                const int64_t X = x + roi_start[2];
                if (!prev) {
                    if (r >= n_runs) return -1;
                    run_start[r] = i;
                    run_flat[r] = Z * sz + Y * sy + X;
                    run_zyx[3 * r] = (int32_t)Z;
                    run_zyx[3 * r + 1] = (int32_t)Y;
                    run_zyx[3 * r + 2] = (int32_t)X;
                    r++;
                }
                prev = 1;
                flat[i] = Z * sz + Y * sy + X;
                pos[i] = (float)Z;
                pos[P + i] = (float)Y;
                pos[2 * P + i] = (float)X;
                for (int c = 0; c < 3; c++) {
                    const float v = mm[c * n + row + x] / spacing[c];
                    disp[c * P + i] = v;
                    lo[c] = v < lo[c] ? v : lo[c];
                    hi[c] = v > hi[c] ? v : hi[c];
                }
                i++;
            }
        }
    if (i != P || r != n_runs) return -1;
    run_start[n_runs] = P;
    for (int c = 0; c < 3; c++) reach[c] = -lo[c] > hi[c] ? -lo[c] : hi[c];
    return 0;
}

/* out[x] = (a[x] - b[x]) / div for x < n (vectorises; a true division, as torch's div_) */
static void diff_row(const float *restrict a, const float *restrict b, float div, float *restrict out, int64_t n) {
    for (int64_t x = 0; x < n; x++) out[x] = (a[x] - b[x]) / div;
}

/* The derivative of one row along an axis at index j of n (stride st): central inside, one-sided
 * at the ends, 0 on an axis of one voxel (as core.field.derivative), for nx voxels from p. */
static void deriv_row(const float *p, int64_t j, int64_t n, int64_t st, float h, float h2, float *out, int64_t nx) {
    if (n < 2) {
        for (int64_t x = 0; x < nx; x++) out[x] = 0.0f;
    } else if (j == 0) {
        diff_row(p + st, p, h, out, nx);
    } else if (j == n - 1) {
        diff_row(p, p - st, h, out, nx);
    } else {
        diff_row(p + st, p - st, h2, out, nx);
    }
}

/* The Jacobian coefficients of JacobianStats (c1 = tr G, c2 = sum of G's principal 2x2 minors,
 * c3 = det G, G = dF/dx per mm) over boxes of the field ``mm`` (3, d, h, w) float32: box b covers
 * planes boxes[6b]..boxes[6b+1]-1, rows boxes[6b+2]..boxes[6b+3]-1 and columns
 * boxes[6b+4]..boxes[6b+5]-1. Z derivatives are taken over the field's whole depth; Y and X
 * derivatives within the box, one-sided at its edges (as the torch code). Voxels whose three
 * coefficients are all 0 are skipped; the others are written in raster order to c (3 rows of
 * ``cap``). ``h`` and ``h2`` hold the voxel sizes (z, y, x) and twice them, as float32. Row by row,
 * so that the arithmetic vectorises; every product and sum is rounded as torch's, in its order.
 * Returns the number written, -1 past ``cap``, -2 out of memory. */
int64_t laugen_jacobian(const float *mm, const int64_t *shape, const int64_t *boxes, int64_t n_boxes, const float *h,
                        const float *h2, float *c, int64_t cap) {
    const int64_t d = shape[0], H = shape[1], W = shape[2], plane = H * W, n = d * plane;
    float *buf = (float *)malloc(sizeof(float) * 12 * (size_t)(W > 0 ? W : 1));
    if (!buf) return -2;
    float *g[3][3], *c1 = buf + 9 * W, *c2 = buf + 10 * W, *c3 = buf + 11 * W;
    for (int i = 0; i < 3; i++)
        for (int a = 0; a < 3; a++) g[i][a] = buf + (3 * i + a) * W;
    int64_t at = 0;
    for (int64_t b = 0; b < n_boxes; b++) {
        const int64_t *bx = boxes + 6 * b;
        const int64_t ny = bx[3] - bx[2], nx = bx[5] - bx[4];
        for (int64_t z = bx[0]; z < bx[1]; z++)
            for (int64_t y = bx[2]; y < bx[3]; y++) {
                const int64_t v = z * plane + y * W + bx[4];
                for (int i = 0; i < 3; i++) {
                    const float *p = mm + i * n + v;
                    deriv_row(p, z, d, plane, h[0], h2[0], g[i][0], nx);
                    deriv_row(p, y - bx[2], ny, W, h[1], h2[1], g[i][1], nx);
                    float *gx = g[i][2];
                    if (nx < 2) {
                        for (int64_t x = 0; x < nx; x++) gx[x] = 0.0f;
                    } else {
                        gx[0] = (p[1] - p[0]) / h[2];
                        diff_row(p + 2, p, h2[2], gx + 1, nx - 2);
                        gx[nx - 1] = (p[nx - 1] - p[nx - 2]) / h[2];
                    }
                }
                const float *restrict g00 = g[0][0], *restrict g01 = g[0][1], *restrict g02 = g[0][2];
                const float *restrict g10 = g[1][0], *restrict g11 = g[1][1], *restrict g12 = g[1][2];
                const float *restrict g20 = g[2][0], *restrict g21 = g[2][1], *restrict g22 = g[2][2];
                float *restrict o1 = c1, *restrict o2 = c2, *restrict o3 = c3;
                for (int64_t x = 0; x < nx; x++) {
                    float s1 = g00[x] + g11[x];
                    s1 = s1 + g22[x];
                    float pa = g11[x] * g22[x], pb = g12[x] * g21[x];
                    const float m0 = pa - pb;
                    pa = g00[x] * g22[x];
                    pb = g02[x] * g20[x];
                    const float m1 = pa - pb;
                    pa = g00[x] * g11[x];
                    pb = g01[x] * g10[x];
                    float s2 = pa - pb;
                    s2 = s2 + m1;
                    s2 = s2 + m0;
                    pa = g10[x] * g22[x];
                    pb = g12[x] * g20[x];
                    const float t1 = pa - pb;
                    pa = g10[x] * g21[x];
                    pb = g11[x] * g20[x];
                    const float t2 = pa - pb;
                    const float p0 = g00[x] * m0, p1 = g01[x] * t1, p2 = g02[x] * t2;
                    float s3 = p0 - p1;
                    s3 = s3 + p2;
                    o1[x] = s1;
                    o2[x] = s2;
                    o3[x] = s3;
                }
                for (int64_t x = 0; x < nx; x++) {
                    if (c1[x] != 0.0f || c2[x] != 0.0f || c3[x] != 0.0f) {
                        if (at >= cap) { free(buf); return -1; }
                        c[at] = c1[x];
                        c[cap + at] = c2[x];
                        c[2 * cap + at] = c3[x];
                        at++;
                    }
                }
            }
    }
    free(buf);
    return at;
}

/* The version of this interface (the Python side checks it). */
int laugen_warp_abi(void) { return 6; }
