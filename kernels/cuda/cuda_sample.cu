/*
 * pk_sample on the CUDA backend (ops.h, "Sampling"): the host sampler's step (sampler.c) for
 * every row of logits, one block of 1024 threads per row, with the arithmetic of
 * kernels/sampler_math.h so that penalties, order and weights are those of the host.
 *
 * Per row:
 *   1. Penalties (only when the row's penalties are not all off and it has a history): the row
 *      is copied, sanitised, into the workspace; each history id is tallied with atomics
 *      (output occurrences counted, prompt ones marked) in a table that overlays the row's
 *      candidate list, and the one thread whose atomicExch finds the tally non-zero penalises
 *      that id once. Otherwise the logits are read in place.
 *   2. Greedy (temperature 0 or top_k 1): the largest key (pk_sample_key: logit, then lower id).
 *   3. Sampling without top-k or top-p: the candidates stay in id order, as on the host. Each
 *      warp adds the weights of its contiguous range of ids 32 at a time; thread 0 adds the
 *      warp sums in order; the warp whose range holds u·total walks it again to find the id.
 *   4. Sampling with top-k or top-p: the host sorts, so the candidates are taken best first into
 *      a sorted list, a round of up to 512 at a time: the 512th largest of the threads' largest
 *      keys bounds the round from below (each of those threads holds a key at least that
 *      large), the keys above it are gathered into shared memory (a bisection on the key
 *      narrows the bound in the rare case they are more than 4096) and sorted (bitonic). Thread
 *      0 then walks the list in order exactly as the host walks its sorted candidates: the
 *      top-k total, the top-p cut, the min-p total and the draw, adding the same weights in the
 *      same order. Rounds are built only as far as a walk goes, so top-p reads a few hundred
 *      candidates in the usual case and never loses any in the worst.
 *
 * Where the result can differ from the host (docs/KERNELS.md): the device's exp (double, within
 * 1 ulp) against glibc's, and the order of two sums: the id-order total and draw of step 3, and
 * the total over every candidate that top-p without top-k multiplies by top_p. Each moves a
 * boundary by a few units in the last place of a double sum (1e-16 to 1e-13 of the total), so a
 * row differs only when its uniform, or its top-p mass, lands that close to a boundary.
 */
#include "kernels/cuda/cuda_internal.h"

#include <math.h>

#include "kernels/sampler_math.h"

namespace {

constexpr int THREADS = 1024;
constexpr int WARPS = THREADS / 32;
constexpr int ROUND = 512;     /* candidates a selection round adds to the list (<= THREADS) */
constexpr int POOL = 4096;     /* candidates a round may gather in shared memory (power of 2) */
constexpr int CHUNK = THREADS; /* list entries whose weights are computed at a time */
constexpr int SEEN = 1 << 30;  /* tally bit: the id occurs in the history; below: output count */
constexpr unsigned FULL = 0xffffffffu;
constexpr uint64_t NO_BOUND = ~0ull;
static_assert(WARPS == 32, "block reductions hand each warp's partial to one lane of warp 0");
static_assert(ROUND <= THREADS && POOL >= THREADS, "a round sorts the threads' maxima in POOL");

/* The phases of a row stay separate functions: inlined into one kernel they need 168
 * registers (ptxas), and a block of 1024 threads has 64 each. Each is called once per pass over
 * a row, so the calls are cheap next to the pass. */
#define PK_PHASE __noinline__

/* The operands, as raw pointers and strides (elements). */
struct Args {
    int32_t *ids;
    const float *logits;
    int64_t logits_stride;
    int32_t n; /* n_valid */
    const float *params;
    int64_t params_stride;
    const int32_t *prompt;
    int64_t prompt_stride, prompt_cols;
    const int32_t *output;
    int64_t output_stride, output_cols;
    const int64_t *uniforms;
    char *workspace;
    size_t row_bytes; /* workspace per row: the candidate list (8 bytes per id), then the copy */
    int64_t rows;
};

struct Shared {
    uint64_t pool[POOL];      /* a round's thread maxima, then its gathered keys */
    double weights[CHUNK];    /* weights of the list entries being walked */
    double warp_sums[WARPS];  /* id-order sums of each warp's range */
    double warp_base[WARPS];  /* sums of the ranges before each warp's */
    uint64_t red_u64[WARPS + 1];
    long long red_i64[WARPS + 1];
    unsigned long long pool_count;
    long long list_len; /* entries of the sorted list built so far */
    uint64_t bound;     /* the next round takes keys below this one */
    double result_d;
    long long result_i;
    int flag;
};

/* One row: what every thread of the block holds alike (but first_max, per thread). */
struct Row {
    const float *raw;   /* the logits, read only */
    float *work;        /* the penalised copy, or nullptr: read raw and sanitise */
    uint64_t *list;     /* sorted candidate keys; the history tally while penalising */
    const int32_t *prompt, *output;
    int64_t n_prompt, n_output;
    int32_t n;
    pk_sampling p;
    double u;
    uint64_t first_max; /* this thread's largest candidate key: where the first round starts */
};

__device__ __forceinline__ int lane_id()
{
    return threadIdx.x & 31;
}

__device__ __forceinline__ int warp_id()
{
    return threadIdx.x >> 5;
}

__device__ __forceinline__ float logit_at(const Row &row, int64_t i)
{
    return row.work != nullptr ? row.work[i] : pk_sample_sanitize(__ldg(row.raw + i));
}

/* ------------------------------------------------------------------------------------------ */
/* Reductions                                                                                 */
/* ------------------------------------------------------------------------------------------ */

__device__ __forceinline__ uint64_t warp_max_u64(uint64_t v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        uint64_t other = __shfl_xor_sync(FULL, v, o);
        v = other > v ? other : v;
    }
    return v;
}

__device__ __forceinline__ long long warp_sum_i64(long long v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(FULL, v, o);
    return v;
}

__device__ __forceinline__ long long warp_max_i64(long long v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        long long other = __shfl_xor_sync(FULL, v, o);
        v = other > v ? other : v;
    }
    return v;
}

/* A butterfly: every lane ends with the same bits (a + b and b + a round alike at each level),
 * so a warp's running sums agree across its lanes. */
__device__ __forceinline__ double warp_sum_double(double v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(FULL, v, o);
    return v;
}

__device__ __forceinline__ double warp_inclusive_scan(double v)
{
    int lane = lane_id();
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        double before = __shfl_up_sync(FULL, v, o);
        if (lane >= o)
            v += before;
    }
    return v;
}

/* Block-wide reductions; every thread gets the result. The leading barrier keeps the slot of
 * the previous reduction until everyone has read it. */
__device__ uint64_t block_max_u64(uint64_t v, Shared &s)
{
    v = warp_max_u64(v);
    __syncthreads();
    if (lane_id() == 0)
        s.red_u64[warp_id()] = v;
    __syncthreads();
    if (warp_id() == 0) {
        uint64_t all = warp_max_u64(s.red_u64[lane_id()]);
        if (lane_id() == 0)
            s.red_u64[WARPS] = all;
    }
    __syncthreads();
    return s.red_u64[WARPS];
}

template <bool Max>
__device__ long long block_reduce_i64(long long v, Shared &s)
{
    v = Max ? warp_max_i64(v) : warp_sum_i64(v);
    __syncthreads();
    if (lane_id() == 0)
        s.red_i64[warp_id()] = v;
    __syncthreads();
    if (warp_id() == 0) {
        long long x = s.red_i64[lane_id()];
        x = Max ? warp_max_i64(x) : warp_sum_i64(x);
        if (lane_id() == 0)
            s.red_i64[WARPS] = x;
    }
    __syncthreads();
    return s.red_i64[WARPS];
}

/* Thread 0's value, for every thread. */
__device__ long long broadcast_i64(long long v, Shared &s)
{
    __syncthreads();
    if (threadIdx.x == 0)
        s.result_i = v;
    __syncthreads();
    return s.result_i;
}

__device__ double broadcast_double(double v, Shared &s)
{
    __syncthreads();
    if (threadIdx.x == 0)
        s.result_d = v;
    __syncthreads();
    return s.result_d;
}

/* ------------------------------------------------------------------------------------------ */
/* Penalties                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Calls visit(id, is_output) for every history entry inside the vocabulary, spread over the
 * block. */
template <class Visit>
__device__ void for_history(const Row &row, Visit visit)
{
    for (int64_t j = threadIdx.x; j < row.n_prompt; j += THREADS) {
        int32_t id = row.prompt[j];
        if (id >= 0 && id < row.n)
            visit(id, false);
    }
    for (int64_t j = threadIdx.x; j < row.n_output; j += THREADS) {
        int32_t id = row.output[j];
        if (id >= 0 && id < row.n)
            visit(id, true);
    }
}

/* Copies the row into row.work, sanitised, and penalises each distinct history id once.
 * Returns whether the row has a finite logit before the penalties (what the host checks). The
 * tally entries of history ids are cleared first and again by the atomicExch that applies the
 * penalty, so the table needs no other initialisation. */
__device__ PK_PHASE bool penalise_row(const Row &row)
{
    int *tally = reinterpret_cast<int *>(row.list);
    bool finite = false;
    for (int64_t i = threadIdx.x; i < row.n; i += THREADS) {
        float v = pk_sample_sanitize(__ldg(row.raw + i));
        row.work[i] = v;
        finite |= pk_sample_is_finite(v) != 0;
    }
    for_history(row, [&](int32_t id, bool) { tally[id] = 0; });
    bool any_finite = __syncthreads_or(finite) != 0;
    for_history(row, [&](int32_t id, bool is_output) {
        if (is_output)
            atomicAdd(&tally[id], 1);
        else
            atomicOr(&tally[id], SEEN);
    });
    __syncthreads();
    const pk_sampling &p = row.p;
    for_history(row, [&](int32_t id, bool) {
        int mark = atomicExch(&tally[id], 0);
        if (mark != 0)
            row.work[id] = pk_sample_penalise(row.work[id], p.repetition_penalty,
                                              p.presence_penalty, p.frequency_penalty,
                                              mark & (SEEN - 1));
    });
    __syncthreads();
    return any_finite;
}

/* ------------------------------------------------------------------------------------------ */
/* Candidates                                                                                 */
/* ------------------------------------------------------------------------------------------ */

struct Stats {
    long long count; /* candidates: logits above -inf */
    uint64_t top;    /* the best candidate's key */
};

/* Counts the candidates and finds the best; row.first_max gets this thread's best. */
__device__ PK_PHASE Stats candidate_stats(Row &row, Shared &s)
{
    long long count = 0;
    uint64_t mine = 0;
    for (int64_t i = threadIdx.x; i < row.n; i += THREADS) {
        float v = logit_at(row, i);
        if (v > -INFINITY) {
            count++;
            uint64_t key = pk_sample_key(v, (int32_t)i);
            mine = key > mine ? key : mine;
        }
    }
    row.first_max = mine;
    Stats st;
    st.count = block_reduce_i64<false>(count, s);
    st.top = block_max_u64(mine, s);
    return st;
}

/* This thread's largest candidate key below bound (0: none). */
__device__ PK_PHASE uint64_t thread_max_below(const Row &row, uint64_t bound)
{
    uint64_t mine = 0;
    for (int64_t i = threadIdx.x; i < row.n; i += THREADS) {
        float v = logit_at(row, i);
        if (v > -INFINITY) {
            uint64_t key = pk_sample_key(v, (int32_t)i);
            if (key < bound && key > mine)
                mine = key;
        }
    }
    return mine;
}

__device__ PK_PHASE long long count_between(const Row &row, Shared &s, uint64_t lo,
                                            uint64_t bound)
{
    long long count = 0;
    for (int64_t i = threadIdx.x; i < row.n; i += THREADS) {
        float v = logit_at(row, i);
        if (v > -INFINITY) {
            uint64_t key = pk_sample_key(v, (int32_t)i);
            count += key >= lo && key < bound;
        }
    }
    return block_reduce_i64<false>(count, s);
}

/* Gathers the candidate keys in [lo, bound) into s.pool (the first POOL of them, in no order)
 * and returns how many there are. */
__device__ PK_PHASE long long gather(const Row &row, Shared &s, uint64_t lo, uint64_t bound)
{
    int lane = lane_id();
    __syncthreads(); /* the previous count has been read */
    if (threadIdx.x == 0)
        s.pool_count = 0;
    __syncthreads();
    for (int64_t base = 0; base < row.n; base += THREADS) { /* same trip count for all */
        int64_t i = base + threadIdx.x;
        uint64_t key = 0;
        bool take = false;
        if (i < row.n) {
            float v = logit_at(row, i);
            if (v > -INFINITY) {
                key = pk_sample_key(v, (int32_t)i);
                take = key >= lo && key < bound;
            }
        }
        unsigned mask = __ballot_sync(FULL, take);
        if (mask == 0)
            continue;
        unsigned long long first = 0;
        if (lane == 0)
            first = atomicAdd(&s.pool_count, (unsigned long long)__popc(mask));
        first = __shfl_sync(FULL, first, 0);
        unsigned long long at = first + (unsigned)__popc(mask & ((1u << lane) - 1u));
        if (take && at < (unsigned long long)POOL)
            s.pool[at] = key;
    }
    __syncthreads();
    return (long long)s.pool_count;
}

/* A lower bound x with want <= (candidates in [x, bound)) <= POOL, given that lo admits more
 * than POOL and hi fewer than want. Keys are distinct, so lowering x by one admits at most one
 * more key: the bisection cannot jump over the range. */
__device__ PK_PHASE uint64_t narrow(const Row &row, Shared &s, uint64_t lo, uint64_t hi,
                                    uint64_t bound, int want)
{
    for (;;) {
        uint64_t mid = lo + (hi - lo) / 2;
        long long c = count_between(row, s, mid, bound);
        if (c > POOL)
            lo = mid;
        else if (c < want)
            hi = mid;
        else
            return mid;
    }
}

/* Sorts a[0..size) descending (bitonic; size a power of two); ends with a barrier. The caller
 * has synchronised after writing a. */
__device__ PK_PHASE void sort_desc(uint64_t *a, int size)
{
    for (int k = 2; k <= size; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < size; i += THREADS) {
                int partner = i ^ j;
                if (partner > i) {
                    uint64_t x = a[i], y = a[partner];
                    bool descending = (i & k) == 0;
                    if (descending ? x < y : x > y) {
                        a[i] = y;
                        a[partner] = x;
                    }
                }
            }
            __syncthreads();
        }
}

__device__ int pow2_at_least(long long n)
{
    int size = 1;
    while (size < n)
        size <<= 1;
    return size;
}

/* Appends the `want` best candidates below s.bound to the list, best first, and moves the
 * bound past them. `mine` is this thread's largest key below s.bound; at least `want`
 * candidates remain. */
__device__ PK_PHASE void select_round(const Row &row, Shared &s, int want, uint64_t mine)
{
    uint64_t bound = s.bound;
    s.pool[threadIdx.x] = mine;
    __syncthreads();
    sort_desc(s.pool, THREADS);
    /* want threads hold a key >= lo, so at least want candidates lie in [lo, bound). */
    uint64_t lo = s.pool[want - 1], top = s.pool[0];
    if (lo == 0) /* fewer than want threads have candidates left: take them all */
        lo = 1;
    long long got = gather(row, s, lo, bound);
    if (got > POOL) {
        lo = narrow(row, s, lo, top + 1, bound, want);
        got = gather(row, s, lo, bound);
    }
    int size = pow2_at_least(got);
    for (int i = (int)got + threadIdx.x; i < size; i += THREADS)
        s.pool[i] = 0;
    __syncthreads();
    sort_desc(s.pool, size);
    long long len = s.list_len;
    for (int j = threadIdx.x; j < want; j += THREADS)
        row.list[len + j] = s.pool[j];
    uint64_t last = s.pool[want - 1];
    __syncthreads(); /* everyone has read list_len and the pool */
    if (threadIdx.x == 0) {
        s.list_len = len + want;
        s.bound = last;
    }
    __syncthreads();
}

/* ------------------------------------------------------------------------------------------ */
/* Walking the sorted list as the host walks its sorted candidates                            */
/* ------------------------------------------------------------------------------------------ */

/* Weights of list entries [start, end) into s.weights. */
__device__ PK_PHASE void chunk_weights(const Row &row, Shared &s, long long start,
                                       long long end, float max_logit)
{
    for (long long j = threadIdx.x; j < end - start; j += THREADS)
        s.weights[j] = pk_sample_weight(pk_sample_key_logit(row.list[start + j]), max_logit,
                                        row.p.temperature);
    __syncthreads();
}

/*
 * Visits list entries 0, 1, ..., n - 1 in order on thread 0 until visit(i, weight) returns true.
 * Rounds extend the list when the walk reaches its end. The visitor's state is thread 0's copy;
 * the other threads compute the weights with it, a chunk at a time.
 */
template <class Visit>
__device__ void walk_list(Row &row, Shared &s, long long n, float max_logit, Visit visit)
{
    for (long long start = 0; start < n;) {
        if (start == s.list_len) {
            uint64_t mine = start == 0 ? row.first_max : thread_max_below(row, s.bound);
            long long left = n - start;
            select_round(row, s, (int)(left < ROUND ? left : ROUND), mine);
        }
        long long end = s.list_len < n ? s.list_len : n;
        end = end < start + CHUNK ? end : start + CHUNK;
        chunk_weights(row, s, start, end, max_logit);
        if (threadIdx.x == 0) {
            int stop = 0;
            for (long long i = start; i < end && !stop; i++)
                stop = visit(i, s.weights[i - start]);
            s.flag = stop;
        }
        __syncthreads();
        bool stop = s.flag != 0;
        start = end;
        if (stop)
            break;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Sums in id order                                                                           */
/* ------------------------------------------------------------------------------------------ */

/* Ids per warp: the row split into 32 contiguous ranges, multiples of 32 long. */
__device__ __forceinline__ int64_t warp_span(int32_t n)
{
    return ((int64_t)n + THREADS - 1) / THREADS * 32;
}

/* A candidate's weight, 0 for a non-candidate or one below min_weight. */
__device__ __forceinline__ double weight_at(const Row &row, int64_t i, float max_logit,
                                            double min_weight)
{
    float v = logit_at(row, i);
    if (!(v > -INFINITY))
        return 0.0;
    double w = pk_sample_weight(v, max_logit, row.p.temperature);
    return w < min_weight ? 0.0 : w;
}

/* The sum of every candidate's weight: each warp adds its range 32 ids at a time (s.warp_sums),
 * thread 0 adds the ranges in order (s.warp_base holds the sum before each). *last_nonzero: the
 * largest id of non-zero weight. */
__device__ PK_PHASE double id_order_total(const Row &row, Shared &s, float max_logit,
                                          double min_weight, long long *last_nonzero)
{
    int64_t span = warp_span(row.n), begin = warp_id() * span;
    int64_t end = begin + span < row.n ? begin + span : row.n;
    double acc = 0.0;
    long long last = -1;
    for (int64_t base = begin; base < end; base += 32) {
        int64_t i = base + lane_id();
        double w = i < end ? weight_at(row, i, max_logit, min_weight) : 0.0;
        if (w > 0.0)
            last = i;
        acc += warp_sum_double(w);
    }
    if (lane_id() == 0)
        s.warp_sums[warp_id()] = acc;
    *last_nonzero = block_reduce_i64<true>(last, s); /* its barriers publish warp_sums */
    double total = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < WARPS; w++) {
            s.warp_base[w] = total;
            total += s.warp_sums[w];
        }
    return broadcast_double(total, s);
}

/* In the calling warp's range, the first id whose running sum (the sums id_order_total
 * formed) passes target; the warp was chosen because its whole range does. */
__device__ PK_PHASE int64_t walk_warp_range(const Row &row, double base, double target,
                                            float max_logit, double min_weight)
{
    int64_t span = warp_span(row.n), begin = warp_id() * span;
    int64_t end = begin + span < row.n ? begin + span : row.n;
    double acc = 0.0;
    for (int64_t at = begin; at < end; at += 32) {
        int64_t i = at + lane_id();
        double w = i < end ? weight_at(row, i, max_logit, min_weight) : 0.0;
        double step = warp_sum_double(w);
        if (target < base + (acc + step)) {
            double scan = warp_inclusive_scan(w);
            unsigned hits = __ballot_sync(FULL, w > 0.0 && target < base + (acc + scan));
            unsigned nonzero = __ballot_sync(FULL, w > 0.0);
            /* The scan may round differently from the step sum: then the step's last. */
            if (hits != 0)
                return at + __ffs(hits) - 1;
            if (nonzero != 0)
                return at + 31 - __clz(nonzero);
        }
        acc += step;
    }
    return -1;
}

/* Sampling with the candidates in id order (top-k and top-p off): min-p, then the draw. */
__device__ PK_PHASE int32_t sample_in_id_order(const Row &row, Shared &s, const Stats &st)
{
    float max_logit = pk_sample_key_logit(st.top);
    /* min_p times the largest weight, which is the max_logit candidate's: exactly 1. */
    double min_weight = row.p.min_p > 0.0f ? (double)row.p.min_p : 0.0;
    long long last = -1;
    double total = id_order_total(row, s, max_logit, min_weight, &last);
    double target = row.u * total;
    int chosen = -1;
    if (threadIdx.x == 0)
        for (int w = 0; w < WARPS && chosen < 0; w++)
            if (target < s.warp_base[w] + s.warp_sums[w])
                chosen = w;
    chosen = (int)broadcast_i64(chosen, s);
    if (chosen < 0) /* rounding left target at the very top: the last candidate, as the host */
        return (int32_t)last;
    __syncthreads(); /* everyone has read the broadcast slot the walk's result goes to */
    if (warp_id() == chosen) {
        int64_t id = walk_warp_range(row, s.warp_base[chosen], target, max_logit, min_weight);
        if (lane_id() == 0)
            s.result_i = id >= 0 ? id : last;
    }
    __syncthreads();
    return (int32_t)s.result_i;
}

/* Sampling with top-k and/or top-p: the host's sorted walk (sampler.c, sample_row). */
__device__ PK_PHASE int32_t sample_sorted(Row &row, Shared &s, const Stats &st)
{
    const pk_sampling &p = row.p;
    float max_logit = pk_sample_key_logit(st.top);
    long long top_k = p.top_k > 0 && p.top_k < st.count ? p.top_k : 0;
    long long n = top_k > 0 ? top_k : st.count;
    if (threadIdx.x == 0) {
        s.list_len = 0;
        s.bound = NO_BOUND;
    }
    __syncthreads();
    double total = 0.0; /* thread 0's, but for the id-order total */
    if (top_k > 0) {
        walk_list(row, s, n, max_logit, [&](long long, double w) {
            total += w;
            return false;
        });
    } else {
        long long unused;
        total = id_order_total(row, s, max_logit, 0.0, &unused);
    }
    if (p.top_p < 1.0f) {
        double limit = (double)p.top_p * total, before = 0.0;
        long long kept = 0;
        walk_list(row, s, n, max_logit, [&](long long, double w) {
            if (kept > 0 && !(before < limit))
                return true;
            before += w;
            kept++;
            return false;
        });
        n = broadcast_i64(kept, s);
        total = before;
    }
    double min_weight = 0.0;
    if (p.min_p > 0.0f) {
        min_weight = (double)p.min_p; /* times the largest weight, the first's: exactly 1 */
        total = 0.0;
        walk_list(row, s, n, max_logit, [&](long long, double w) {
            if (!(w < min_weight))
                total += w;
            return false;
        });
    }
    double target = row.u * total, acc = 0.0;
    long long last = 0, chosen = -1;
    walk_list(row, s, n, max_logit, [&](long long i, double w) {
        if (w < min_weight || w <= 0.0)
            return false;
        acc += w;
        last = i;
        if (target < acc) {
            chosen = i;
            return true;
        }
        return false;
    });
    long long index = broadcast_i64(chosen >= 0 ? chosen : last, s);
    return pk_sample_key_id(row.list[index]);
}

/* ------------------------------------------------------------------------------------------ */
/* The row                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Reads row r's operands; false when its parameters or uniform are out of range. */
__device__ bool load_row(const Args &a, int64_t r, Row &row)
{
    row.raw = a.logits + r * a.logits_stride;
    row.n = a.n;
    char *ws = a.workspace + (size_t)r * a.row_bytes;
    row.list = reinterpret_cast<uint64_t *>(ws);
    row.work = nullptr;
    row.prompt = a.prompt != nullptr ? a.prompt + r * a.prompt_stride : nullptr;
    row.n_prompt = a.prompt != nullptr ? a.prompt_cols : 0;
    row.output = a.output != nullptr ? a.output + r * a.output_stride : nullptr;
    row.n_output = a.output != nullptr ? a.output_cols : 0;
    row.first_max = 0;
    uint64_t bits = (uint64_t)a.uniforms[r];
    row.u = pk_sample_uniform_from_bits(bits);
    if (!pk_sampling_from_row(a.params + r * a.params_stride, &row.p))
        return false;
    return !pk_sampling_draws(&row.p) || (bits >> PK_SAMPLE_UNIFORM_BITS) == 0;
}

/* The id for one row (every thread returns it), -1 when it cannot be sampled. */
__device__ int32_t sample_row(const Args &a, int64_t r, Shared &s)
{
    Row row;
    if (!load_row(a, r, row))
        return -1;
    bool finite = true; /* checked below when the logits are read in place */
    if (row.n_prompt + row.n_output > 0 && !pk_sample_penalties_off(&row.p)) {
        row.work = reinterpret_cast<float *>(reinterpret_cast<char *>(row.list) +
                                             (size_t)row.n * sizeof(uint64_t));
        finite = penalise_row(row);
    }
    if (!finite)
        return -1;
    if (!pk_sampling_draws(&row.p)) {
        uint64_t best = 0;
        for (int64_t i = threadIdx.x; i < row.n; i += THREADS) {
            uint64_t key = pk_sample_key(logit_at(row, i), (int32_t)i);
            best = key > best ? key : best;
        }
        best = block_max_u64(best, s);
        /* In place, a best of -inf means no finite logit; after the penalties, the host's
         * greedy takes it (id 0 when all are -inf). */
        if (row.work == nullptr && !(pk_sample_key_logit(best) > -INFINITY))
            return -1;
        return pk_sample_key_id(best);
    }
    Stats st = candidate_stats(row, s);
    if (st.count == 0)
        return -1;
    bool sorted = (row.p.top_k > 0 && row.p.top_k < st.count) || row.p.top_p < 1.0f;
    return sorted ? sample_sorted(row, s, st) : sample_in_id_order(row, s, st);
}

__global__ void __launch_bounds__(THREADS) sample_kernel(Args a)
{
    __shared__ Shared s;
    for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
        __syncthreads(); /* the previous row's shared state has been read */
        int32_t id = sample_row(a, r, s);
        if (threadIdx.x == 0)
            a.ids[r] = id;
    }
}

} /* namespace */

pio_status pk_cuda_sample(pk_context *ctx, const pk_tensor *ids, const pk_tensor *logits,
                          int64_t n_valid, const pk_tensor *params, const pk_tensor *prompt_tokens,
                          const pk_tensor *output_tokens, const pk_tensor *uniforms,
                          pio_error *err)
{
    static const char op[] = "pk_sample";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    int64_t rows = logits->rows;
    if (rows == 0)
        return PIO_OK;
    /* Per row: the candidate list (8 bytes per id; the tally overlays it) and the copy. */
    size_t row_bytes = ((size_t)n_valid * (sizeof(uint64_t) + sizeof(float)) + 255) / 256 * 256;
    if ((size_t)rows > SIZE_MAX / row_bytes)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: workspace too large", op);
    void *workspace = NULL;
    status = pk_cuda_sample_workspace(ctx, row_bytes * (size_t)rows, op, &workspace, err);
    if (status != PIO_OK)
        return status;
    Args a = {};
    a.ids = (int32_t *)ids->data;
    a.logits = (const float *)logits->data;
    a.logits_stride = logits->stride;
    a.n = (int32_t)n_valid;
    a.params = (const float *)params->data;
    a.params_stride = params->stride;
    if (prompt_tokens != NULL && prompt_tokens->cols > 0) {
        a.prompt = (const int32_t *)prompt_tokens->data;
        a.prompt_stride = prompt_tokens->stride;
        a.prompt_cols = prompt_tokens->cols;
    }
    if (output_tokens != NULL && output_tokens->cols > 0) {
        a.output = (const int32_t *)output_tokens->data;
        a.output_stride = output_tokens->stride;
        a.output_cols = output_tokens->cols;
    }
    a.uniforms = (const int64_t *)uniforms->data;
    a.workspace = (char *)workspace;
    a.row_bytes = row_bytes;
    a.rows = rows;
    unsigned grid = (unsigned)(rows < 65535 ? rows : 65535);
    sample_kernel<<<grid, THREADS, 0, pk_cuda_state_of(ctx)->stream>>>(a);
    return pk_cuda_check_launch(ctx, op, err);
}
