#include "kernels/sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sampler_math.h"

/* ------------------------------------------------------------------------------------------ */
/* Random numbers: xoshiro256** (Blackman & Vigna), state filled by splitmix64                */
/* ------------------------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void pk_rng_seed(pk_rng *rng, uint64_t seed)
{
    uint64_t state = seed;
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&state); /* never all zero: splitmix64 is a bijection */
}

uint64_t pk_rng_next(pk_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t pk_rng_uniform_bits(pk_rng *rng)
{
    return pk_rng_next(rng) >> (64 - PK_SAMPLE_UNIFORM_BITS);
}

double pk_rng_uniform(pk_rng *rng)
{
    return pk_sample_uniform_from_bits(pk_rng_uniform_bits(rng));
}


/* ------------------------------------------------------------------------------------------ */
/* Sampler                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct candidate {
    float logit;
    int32_t id;
} candidate;

struct pk_sampler {
    int32_t n_vocab;
    float *logits;          /* penalised copy of the row */
    int32_t *output_counts; /* occurrences in the output, per id; zero between calls */
    unsigned char *seen;    /* id occurs in prompt or output; zero between calls */
    candidate *candidates;
    double *weights;        /* unnormalised probabilities of the candidates */
};

pk_sampling pk_sampling_default(void)
{
    pk_sampling s = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
                     .repetition_penalty = 1.0f, .presence_penalty = 0.0f,
                     .frequency_penalty = 0.0f};
    return s;
}

enum { SAMPLER_ALIGNMENT = 16 };

static size_t aligned_size(size_t bytes)
{
    return (bytes + SAMPLER_ALIGNMENT - 1) / SAMPLER_ALIGNMENT * SAMPLER_ALIGNMENT;
}

/* Carves the next `bytes` out of *cursor. */
static void *carve(char **cursor, size_t bytes)
{
    void *p = *cursor;
    *cursor += aligned_size(bytes);
    return p;
}

size_t pk_sampler_bytes(int32_t n_vocab)
{
    size_t n = n_vocab > 0 ? (size_t)n_vocab : 0;
    return aligned_size(sizeof(pk_sampler)) + aligned_size(n * sizeof(double)) +
           aligned_size(n * sizeof(candidate)) + aligned_size(n * sizeof(float)) +
           aligned_size(n * sizeof(int32_t)) + aligned_size(n);
}

pk_sampler *pk_sampler_init(void *memory, int32_t n_vocab)
{
    if (memory == NULL || n_vocab <= 0)
        return NULL;
    size_t n = (size_t)n_vocab;
    char *cursor = memory;
    pk_sampler *s = carve(&cursor, sizeof *s);
    s->n_vocab = n_vocab;
    s->weights = carve(&cursor, n * sizeof *s->weights);
    s->candidates = carve(&cursor, n * sizeof *s->candidates);
    s->logits = carve(&cursor, n * sizeof *s->logits);
    s->output_counts = carve(&cursor, n * sizeof *s->output_counts);
    s->seen = carve(&cursor, n);
    memset(s->output_counts, 0, n * sizeof *s->output_counts);
    memset(s->seen, 0, n);
    return s;
}

pio_status pk_sampler_create(int32_t n_vocab, pk_sampler **out, pio_error *err)
{
    if (out == NULL || n_vocab <= 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: bad vocabulary size %d",
                             (int)n_vocab);
    void *memory = malloc(pk_sampler_bytes(n_vocab)); /* malloc aligns to 16 bytes */
    *out = pk_sampler_init(memory, n_vocab);
    if (*out == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY,
                             "sampler: out of memory for a vocabulary of %d", (int)n_vocab);
    return PIO_OK;
}

void pk_sampler_destroy(pk_sampler *s)
{
    free(s); /* the arrays live in the same block */
}

/* pk_sampling_is_valid decides; the tests below only name what is wrong. */
static pio_status check_params(const pk_sampling *p, pio_error *err)
{
    if (p == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: params is NULL");
    if (pk_sampling_is_valid(p))
        return PIO_OK;
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: temperature %g < 0",
                             (double)p->temperature);
    if (p->top_k < 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: top_k %d < 0",
                             (int)p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: top_p %g not in (0, 1]",
                             (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p < 1.0f))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: min_p %g not in [0, 1)",
                             (double)p->min_p);
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "sampler: repetition_penalty %g must be > 0",
                             (double)p->repetition_penalty);
    return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: penalties must be finite");
}

/* Marks prompt and output ids (seen) and counts output ids. */
static void count_history(pk_sampler *s, const pk_token_history *h, int32_t n)
{
    for (int64_t i = 0; i < h->n_prompt; i++)
        if (h->prompt[i] >= 0 && h->prompt[i] < n)
            s->seen[h->prompt[i]] = 1;
    for (int64_t i = 0; i < h->n_output; i++)
        if (h->output[i] >= 0 && h->output[i] < n) {
            s->seen[h->output[i]] = 1;
            s->output_counts[h->output[i]]++;
        }
}

/* Applies the penalties once per distinct id, then clears the marks for the next call. */
static void apply_penalties(pk_sampler *s, const pk_sampling *p, const pk_token_history *h,
                            int32_t n)
{
    const int32_t *lists[2] = {h->prompt, h->output};
    int64_t lengths[2] = {h->n_prompt, h->n_output};
    for (int l = 0; l < 2; l++)
        for (int64_t i = 0; i < lengths[l]; i++) {
            int32_t id = lists[l][i];
            if (id < 0 || id >= n || !s->seen[id])
                continue;
            s->logits[id] = pk_sample_penalise(s->logits[id], p->repetition_penalty,
                                               p->presence_penalty, p->frequency_penalty,
                                               s->output_counts[id]);
            s->seen[id] = 0;
            s->output_counts[id] = 0;
        }
}

static int32_t argmax_logits(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Higher logit first; lower id first among equal logits (pk_sample_key orders alike). */
static int better(const candidate *a, const candidate *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int compare_candidates(const void *pa, const void *pb)
{
    const candidate *a = pa, *b = pb;
    return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

/* Min-heap on `better`: the root is the worst candidate kept so far. */
static void sift_down(candidate *heap, int64_t size, int64_t i)
{
    for (;;) {
        int64_t worst = i, l = 2 * i + 1, r = l + 1;
        if (l < size && better(&heap[worst], &heap[l]))
            worst = l;
        if (r < size && better(&heap[worst], &heap[r]))
            worst = r;
        if (worst == i)
            return;
        candidate t = heap[i];
        heap[i] = heap[worst];
        heap[worst] = t;
        i = worst;
    }
}

/* Reorders c[0..n) so that c[0..k) holds the k best, then sorts them best first. */
static void keep_top_k(candidate *c, int64_t n, int64_t k)
{
    for (int64_t i = k / 2; i-- > 0;)
        sift_down(c, k, i);
    for (int64_t i = k; i < n; i++)
        if (better(&c[i], &c[0])) {
            c[0] = c[i];
            sift_down(c, k, 0);
        }
    qsort(c, (size_t)k, sizeof *c, compare_candidates);
}

/* Candidates after top-k (temperature does not change their order); sorted best first when
 * `sorted`, in id order otherwise. Returns the count. */
static int64_t collect_candidates(pk_sampler *s, const pk_sampling *p, int32_t n, int sorted)
{
    int64_t count = 0;
    for (int32_t i = 0; i < n; i++)
        if (s->logits[i] > -INFINITY)
            s->candidates[count++] = (candidate){s->logits[i], i};
    if (p->top_k > 0 && p->top_k < count) {
        keep_top_k(s->candidates, count, p->top_k);
        count = p->top_k;
    } else if (sorted) {
        qsort(s->candidates, (size_t)count, sizeof *s->candidates, compare_candidates);
    }
    return count;
}

/* weights[i] = pk_sample_weight of candidate i; returns their sum, added in candidate order. */
static double softmax_weights(pk_sampler *s, int64_t count, float temperature)
{
    float max_logit = -INFINITY;
    for (int64_t i = 0; i < count; i++)
        if (s->candidates[i].logit > max_logit)
            max_logit = s->candidates[i].logit;
    double total = 0.0;
    for (int64_t i = 0; i < count; i++) {
        s->weights[i] = pk_sample_weight(s->candidates[i].logit, max_logit, temperature);
        total += s->weights[i];
    }
    return total;
}

/* Sorted candidates: keeps those whose predecessors' mass is below top_p. */
static int64_t apply_top_p(const pk_sampler *s, int64_t count, double total, float top_p)
{
    double before = 0.0, limit = (double)top_p * total;
    int64_t kept = 0;
    while (kept < count && (kept == 0 || before < limit))
        before += s->weights[kept++];
    return kept;
}

/* Zeroes the weights below min_p times the largest (ratios do not change on renormalising). */
static double apply_min_p(pk_sampler *s, int64_t count, float min_p)
{
    double largest = 0.0, total = 0.0;
    for (int64_t i = 0; i < count; i++)
        largest = s->weights[i] > largest ? s->weights[i] : largest;
    for (int64_t i = 0; i < count; i++) {
        if (s->weights[i] < (double)min_p * largest)
            s->weights[i] = 0.0;
        total += s->weights[i];
    }
    return total;
}

/* The selection step: the first candidate, in candidate order, whose running sum of the
 * remaining weights exceeds u · total. */
static int32_t draw(const pk_sampler *s, int64_t count, double total, double u)
{
    double target = u * total, acc = 0.0;
    int64_t last = 0;
    for (int64_t i = 0; i < count; i++) {
        if (s->weights[i] <= 0.0)
            continue;
        acc += s->weights[i];
        last = i;
        if (target < acc)
            return s->candidates[i].id;
    }
    return s->candidates[last].id; /* rounding left target at the very top */
}

/* The whole step. The uniform comes from rng (drawn only when the step reaches the draw, as
 * before the op existed) or, with rng NULL, is u. */
static pio_status sample_row(pk_sampler *s, const pk_sampling *p, const float *logits,
                             int32_t n_logits, const pk_token_history *history, pk_rng *rng,
                             double u, int32_t *token, pio_error *err)
{
    int have_finite = 0;
    for (int32_t i = 0; i < n_logits; i++) {
        s->logits[i] = pk_sample_sanitize(logits[i]);
        have_finite |= isfinite(s->logits[i]);
    }
    if (!have_finite)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: no finite logit");
    if (history != NULL) {
        count_history(s, history, n_logits);
        apply_penalties(s, p, history, n_logits);
    }
    if (!pk_sampling_draws(p)) {
        *token = argmax_logits(s->logits, n_logits);
        return PIO_OK;
    }
    int64_t count = collect_candidates(s, p, n_logits, p->top_p < 1.0f);
    if (count == 0) /* the penalties drove every finite logit to -inf */
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: no finite logit");
    double total = softmax_weights(s, count, p->temperature);
    if (p->top_p < 1.0f) {
        count = apply_top_p(s, count, total, p->top_p);
        total = 0.0;
        for (int64_t i = 0; i < count; i++)
            total += s->weights[i];
    }
    if (p->min_p > 0.0f)
        total = apply_min_p(s, count, p->min_p);
    *token = draw(s, count, total, rng != NULL ? pk_rng_uniform(rng) : u);
    return PIO_OK;
}

static pio_status check_call(const pk_sampler *s, const pk_sampling *p, const float *logits,
                             int32_t n_logits, const int32_t *token, pio_error *err)
{
    pio_status st = check_params(p, err);
    if (st != PIO_OK)
        return st;
    if (s == NULL || logits == NULL || token == NULL || n_logits <= 0 || n_logits > s->n_vocab)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "sampler: bad arguments (%d logits for a vocabulary of %d)",
                             (int)n_logits, s != NULL ? (int)s->n_vocab : 0);
    return PIO_OK;
}

pio_status pk_sampler_sample(pk_sampler *s, const pk_sampling *p, const float *logits,
                             int32_t n_logits, const pk_token_history *history, pk_rng *rng,
                             int32_t *token, pio_error *err)
{
    pio_status st = check_call(s, p, logits, n_logits, token, err);
    if (st != PIO_OK)
        return st;
    if (pk_sampling_draws(p) && rng == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: sampling needs an rng");
    return sample_row(s, p, logits, n_logits, history, rng, 0.0, token, err);
}

pio_status pk_sampler_sample_uniform(pk_sampler *s, const pk_sampling *p, const float *logits,
                                     int32_t n_logits, const pk_token_history *history, double u,
                                     int32_t *token, pio_error *err)
{
    pio_status st = check_call(s, p, logits, n_logits, token, err);
    if (st != PIO_OK)
        return st;
    if (pk_sampling_draws(p) && !(u >= 0.0 && u < 1.0))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: uniform %g not in [0, 1)",
                             u);
    return sample_row(s, p, logits, n_logits, history, NULL, u, token, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Operands of pk_sample                                                                      */
/* ------------------------------------------------------------------------------------------ */

pio_status pk_sampling_to_row(const pk_sampling *p, float *row, pio_error *err)
{
    pio_status st = check_params(p, err);
    if (st != PIO_OK)
        return st;
    if (row == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "sampler: row is NULL");
    row[PK_SAMPLE_TEMPERATURE] = p->temperature;
    row[PK_SAMPLE_TOP_K] = (float)p->top_k;
    row[PK_SAMPLE_TOP_P] = p->top_p;
    row[PK_SAMPLE_MIN_P] = p->min_p;
    row[PK_SAMPLE_REPETITION_PENALTY] = p->repetition_penalty;
    row[PK_SAMPLE_PRESENCE_PENALTY] = p->presence_penalty;
    row[PK_SAMPLE_FREQUENCY_PENALTY] = p->frequency_penalty;
    return PIO_OK;
}

int64_t pk_sampling_uniform_bits(const pk_sampling *p, pk_rng *rng)
{
    return pk_sampling_draws(p) ? (int64_t)pk_rng_uniform_bits(rng) : 0;
}
