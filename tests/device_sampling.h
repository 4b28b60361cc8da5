/*
 * Sampling where the logits are (PIO_TEXTGEN_FEATURE_SAMPLE) against the host sampler, on a
 * plugin session of a fixture model (plugin_reference.h): the forward's sampled ids equal
 * pk_sampler_sample_uniform on the logits rows it returns, for batches whose rows each have
 * their own settings and histories; generation through the device path equals generation with
 * host sampling token for token over a grid of settings and seeds; bad sample rows are clear
 * errors. Shared by the CPU plugin tests and the CUDA ones (include after plugin_reference.h).
 */
#ifndef PIO_TESTS_DEVICE_SAMPLING_H
#define PIO_TESTS_DEVICE_SAMPLING_H

#include "kernels/sampler.h"
#include "pio/textgen.h"

typedef struct sampling_case {
    const char *name;
    pk_sampling p;
} sampling_case;

/* Every filter and penalty alone, some together, and the greedy forms (temperature 0, top_k 1,
 * greedy with penalties). */
static const sampling_case SAMPLING_GRID[] = {
    {"greedy", {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f}},
    {"temperature 0.8", {.temperature = 0.8f, .top_p = 1.0f, .repetition_penalty = 1.0f}},
    {"temperature 1.5", {.temperature = 1.5f, .top_p = 1.0f, .repetition_penalty = 1.0f}},
    {"top-k 5", {.temperature = 1.0f, .top_k = 5, .top_p = 1.0f, .repetition_penalty = 1.0f}},
    {"top-k 1", {.temperature = 0.7f, .top_k = 1, .top_p = 1.0f, .repetition_penalty = 1.0f}},
    {"top-p 0.9", {.temperature = 0.9f, .top_p = 0.9f, .repetition_penalty = 1.0f}},
    {"min-p 0.1", {.temperature = 1.2f, .top_p = 1.0f, .min_p = 0.1f,
                   .repetition_penalty = 1.0f}},
    {"top-k, top-p and min-p", {.temperature = 0.7f, .top_k = 20, .top_p = 0.8f, .min_p = 0.05f,
                                .repetition_penalty = 1.0f}},
    {"repetition 1.3", {.temperature = 0.9f, .top_p = 1.0f, .repetition_penalty = 1.3f}},
    {"presence and frequency", {.temperature = 1.0f, .top_p = 0.95f, .repetition_penalty = 1.0f,
                                .presence_penalty = 0.5f, .frequency_penalty = 0.3f}},
    {"greedy with penalties", {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.5f,
                               .presence_penalty = 0.4f, .frequency_penalty = 0.2f}},
};
#define SAMPLING_CASES (sizeof SAMPLING_GRID / sizeof SAMPLING_GRID[0])

static inline pio_textgen_sample_row sample_row_of(const pk_sampling *p, uint64_t bits)
{
    return (pio_textgen_sample_row){
        .temperature = p->temperature, .top_k = p->top_k, .top_p = p->top_p, .min_p = p->min_p,
        .repetition_penalty = p->repetition_penalty, .presence_penalty = p->presence_penalty,
        .frequency_penalty = p->frequency_penalty, .uniform_bits = bits};
}

/* ---- One forward ------------------------------------------------------------------------- */

enum { SAMPLED_ROWS = 2 * MAX_SEQS, SYNTHETIC_OUTPUT = 24 };

/* A batch of every reference sequence with two logits rows each (the middle and the last
 * token), every row its own setting (the grid rotated by `round`), uniform and history: the
 * prompt is the sequence so far, the output some ids of another sequence with repeats. */
typedef struct sampled_batch {
    size_t n_tokens, n_rows;
    int32_t *tokens, *owners, seq[MAX_SEQS];
    int32_t rows[SAMPLED_ROWS];
    int32_t output[SAMPLED_ROWS][SYNTHETIC_OUTPUT];
    pio_textgen_sample_row sample[SAMPLED_ROWS];
} sampled_batch;

static inline void sampled_batch_make(sampled_batch *sb, size_t round, uint64_t seed)
{
    memset(sb, 0, sizeof *sb);
    for (size_t q = 0; q < ref.n_seqs; q++)
        sb->n_tokens += ref.seq_len[q];
    sb->tokens = malloc(sb->n_tokens * sizeof *sb->tokens);
    sb->owners = malloc(sb->n_tokens * sizeof *sb->owners);
    assert_non_null(sb->tokens);
    assert_non_null(sb->owners);
    pk_rng rng;
    pk_rng_seed(&rng, seed);
    size_t at = 0;
    for (size_t q = 0; q < ref.n_seqs; q++) {
        memcpy(sb->tokens + at, ref.seqs[q], ref.seq_len[q] * sizeof(int32_t));
        size_t positions[2] = {ref.seq_len[q] / 2, ref.seq_len[q] - 1};
        for (int k = 0; k < 2; k++) {
            size_t r = sb->n_rows++;
            const int32_t *other = ref.seqs[(q + 1) % ref.n_seqs];
            size_t other_len = ref.seq_len[(q + 1) % ref.n_seqs];
            for (size_t i = 0; i < SYNTHETIC_OUTPUT; i++)
                sb->output[r][i] = other[(i * i + r) % other_len];
            pk_sampling p = SAMPLING_GRID[(round + r) % SAMPLING_CASES].p;
            sb->rows[r] = (int32_t)(at + positions[k]);
            sb->sample[r] = sample_row_of(&p, (uint64_t)pk_sampling_uniform_bits(&p, &rng));
            sb->sample[r].prompt = ref.seqs[q];
            sb->sample[r].n_prompt = positions[k] + 1;
            sb->sample[r].output = sb->output[r];
            sb->sample[r].n_output = (r * 7) % (SYNTHETIC_OUTPUT + 1);
        }
        at += ref.seq_len[q];
    }
}

static inline void sampled_batch_free(sampled_batch *sb)
{
    free(sb->tokens);
    free(sb->owners);
}

/* Forwards the batch on fresh sequences (closed after), logits to `logits` when not NULL. */
static inline pio_status sampled_forward(session *s, sampled_batch *sb, size_t sample_vocab,
                                         float *logits, int32_t *sampled, pio_error *err)
{
    size_t at = 0;
    for (size_t q = 0; q < ref.n_seqs; q++) {
        assert_int_equal(s->model->seq_open(s->model->self, &sb->seq[q], err), PIO_OK);
        for (size_t i = 0; i < ref.seq_len[q]; i++)
            sb->owners[at + i] = sb->seq[q];
        at += ref.seq_len[q];
    }
    pio_textgen_batch b = {.struct_size = sizeof b, .n_tokens = sb->n_tokens,
                           .tokens = sb->tokens, .seq_ids = sb->owners,
                           .n_logits_rows = sb->n_rows, .logits_rows = sb->rows,
                           .logits = logits, .sampled = sampled, .sample = sb->sample,
                           .sample_vocab = sample_vocab};
    pio_status status = s->model->forward(s->model->self, &b, err);
    for (size_t q = 0; q < ref.n_seqs; q++) {
        if (status != PIO_OK) /* a failed forward leaves every sequence as it was */
            assert_int_equal(s->model->seq_length(s->model->self, sb->seq[q]), 0);
        s->model->seq_close(s->model->self, sb->seq[q]);
    }
    return status;
}

/* The forward's sampled ids are pk_sampler_sample_uniform's on the logits rows it returns, with
 * the padding of the vocabulary excluded or not; without the logits the ids are the same. */
static inline void check_sampled_forward_equals_host_sampler(session *s)
{
    assert_true(s->model->features & PIO_TEXTGEN_FEATURE_SAMPLE);
    size_t vocab = s->model->vocab_size;
    float *logits = malloc(SAMPLED_ROWS * vocab * sizeof *logits);
    pk_sampler *sampler;
    pio_error err;
    assert_int_equal(pk_sampler_create((int32_t)vocab, &sampler, &err), PIO_OK);
    for (size_t round = 0; round < SAMPLING_CASES; round++) {
        sampled_batch sb;
        sampled_batch_make(&sb, round, 1000 + round);
        size_t sample_vocab = round % 2 ? vocab - 5 : 0;
        int32_t with_logits[SAMPLED_ROWS], alone[SAMPLED_ROWS];
        assert_int_equal(sampled_forward(s, &sb, sample_vocab, logits, with_logits, &err),
                         PIO_OK);
        assert_int_equal(sampled_forward(s, &sb, sample_vocab, NULL, alone, &err), PIO_OK);
        for (size_t r = 0; r < sb.n_rows; r++) {
            const pio_textgen_sample_row *row = &sb.sample[r];
            pk_sampling p = SAMPLING_GRID[(round + r) % SAMPLING_CASES].p;
            pk_token_history h = {row->prompt, (int64_t)row->n_prompt, row->output,
                                  (int64_t)row->n_output};
            int32_t expected = -1;
            assert_int_equal(pk_sampler_sample_uniform(
                                 sampler, &p, logits + r * vocab,
                                 (int32_t)(sample_vocab ? sample_vocab : vocab), &h,
                                 (double)row->uniform_bits * 0x1.0p-53, &expected, &err),
                             PIO_OK);
            if (with_logits[r] != expected || alone[r] != expected)
                fail_msg("round %zu row %zu (%s): sampled %d (alone %d), host sampler %d",
                         round, r, SAMPLING_GRID[(round + r) % SAMPLING_CASES].name,
                         with_logits[r], alone[r], expected);
        }
        sampled_batch_free(&sb);
    }
    pk_sampler_destroy(sampler);
    free(logits);
}

/* Sample rows the op cannot take fail the forward with a message naming the row and what is
 * wrong, and leave the sequences as they were. */
static inline void check_bad_sample_rows_are_clear_errors(session *s)
{
    sampled_batch sb;
    sampled_batch_make(&sb, 1, 7);
    int32_t ids[SAMPLED_ROWS];
    pio_error err;
    size_t bad = sb.n_rows - 1;
    pio_textgen_sample_row good = sb.sample[bad];
    sb.sample[bad].temperature = -1.0f;
    assert_int_equal(sampled_forward(s, &sb, 0, NULL, ids, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "sample row"));
    assert_non_null(strstr(err.message, "temperature"));
    sb.sample[bad] = good;
    sb.sample[bad].top_p = 0.0f;
    assert_int_equal(sampled_forward(s, &sb, 0, NULL, ids, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "top_p"));
    sb.sample[bad] = good;
    sb.sample[bad].temperature = 1.0f;
    sb.sample[bad].top_k = 0;
    sb.sample[bad].uniform_bits = 1ull << 60;
    assert_int_equal(sampled_forward(s, &sb, 0, NULL, ids, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "uniform_bits"));
    sb.sample[bad] = good;
    sb.sample[bad].prompt = NULL;
    assert_int_equal(sampled_forward(s, &sb, 0, NULL, ids, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "without its array"));
    sb.sample[bad] = good;
    assert_int_equal(sampled_forward(s, &sb, s->model->vocab_size + 1, NULL, ids, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "sample_vocab"));
    char row_name[32];
    snprintf(row_name, sizeof row_name, "sample row %zu", bad);
    sb.sample[bad].min_p = 1.0f;
    assert_int_equal(sampled_forward(s, &sb, 0, NULL, ids, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, row_name));
    assert_non_null(strstr(err.message, "min_p"));
    sb.sample[bad] = good;
    assert_int_equal(sampled_forward(s, &sb, 0, NULL, ids, &err), PIO_OK);
    /* Sampled ids without the rows that say how. */
    int32_t seq, last = 0, token = ref.seqs[0][0];
    assert_int_equal(s->model->seq_open(s->model->self, &seq, &err), PIO_OK);
    pio_textgen_batch b = {.struct_size = sizeof b, .n_tokens = 1, .tokens = &token,
                           .seq_ids = &seq, .n_logits_rows = 1, .logits_rows = &last,
                           .sampled = ids};
    assert_int_equal(s->model->forward(s->model->self, &b, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "without the sample rows"));
    assert_int_equal(s->model->seq_length(s->model->self, seq), 0);
    s->model->seq_close(s->model->self, seq);
    sampled_batch_free(&sb);
}

/* ---- Generation ------------------------------------------------------------------------- */

/* The plugin's model with its features replaced, counting how rows come back. */
typedef struct counted_model {
    pio_textgen_model ops;
    const pio_textgen_model *inner;
    int logits_forwards;  /* forwards that asked for logits */
    int picked_forwards;  /* forwards that asked for ids alone */
} counted_model;

static inline pio_status counted_open(void *self, int32_t *seq, pio_error *err)
{
    const pio_textgen_model *m = ((counted_model *)self)->inner;
    return m->seq_open(m->self, seq, err);
}

static inline void counted_close(void *self, int32_t seq)
{
    const pio_textgen_model *m = ((counted_model *)self)->inner;
    m->seq_close(m->self, seq);
}

static inline int64_t counted_length(void *self, int32_t seq)
{
    const pio_textgen_model *m = ((counted_model *)self)->inner;
    return m->seq_length(m->self, seq);
}

static inline pio_status counted_forward(void *self, const pio_textgen_batch *b, pio_error *err)
{
    counted_model *c = self;
    if (b->logits != NULL)
        c->logits_forwards++;
    else
        c->picked_forwards++;
    return c->inner->forward(c->inner->self, b, err);
}

static inline void counted_init(counted_model *c, const pio_textgen_model *inner,
                                uint32_t features)
{
    memset(c, 0, sizeof *c);
    c->inner = inner;
    c->ops = *inner;
    c->ops.self = c;
    c->ops.seq_open = counted_open;
    c->ops.seq_close = counted_close;
    c->ops.seq_length = counted_length;
    c->ops.forward = counted_forward;
    c->ops.features = features;
}

static inline pio_textgen *counted_textgen(const counted_model *c, const char *fixture)
{
    char tokenizer[256];
    snprintf(tokenizer, sizeof tokenizer, "%s/tokenizer.json", fixture);
    pio_textgen_config cfg = {.model = &c->ops, .tokenizer_path = tokenizer,
                              .max_new_tokens = 16};
    pio_textgen_sampling_init(&cfg.sampling);
    pio_textgen *tg = NULL;
    pio_error err;
    if (pio_textgen_create(&cfg, &tg, &err) != PIO_OK)
        fail_msg("pio_textgen_create: %s", err.message);
    return tg;
}

static inline void generate_ids(pio_textgen *tg, const pk_sampling *p, uint64_t seed,
                                pio_generate_response *resp)
{
    pio_sampling_params sampling = {
        .struct_size = sizeof sampling, .fields_set = 0xffffffffu,
        .temperature = p->temperature, .top_p = p->top_p, .top_k = p->top_k, .min_p = p->min_p,
        .repetition_penalty = p->repetition_penalty, .presence_penalty = p->presence_penalty,
        .frequency_penalty = p->frequency_penalty, .seed = seed};
    pio_stop_conditions no_eos = {.struct_size = sizeof no_eos, .ignore_eos = 1};
    const char *prompt = "The model answers the question";
    pio_generate_request req = {.struct_size = sizeof req, .prompt = prompt,
                                .prompt_len = strlen(prompt), .max_new_tokens = 16,
                                .sampling = &sampling, .stop = &no_eos};
    memset(resp, 0, sizeof *resp);
    resp->struct_size = sizeof *resp;
    pio_error err;
    if (pio_textgen_generate(tg, &req, resp, &err) != PIO_OK)
        fail_msg("generate: %s", err.message);
}

/* Generation that samples on the model's device equals generation that copies the logits and
 * samples on the host, token for token, for every setting of the grid and several seeds; the
 * device path asks for ids alone, the host path for logits. */
static inline void check_generation_equals_host_sampling(session *s, const char *fixture)
{
    counted_model device, host;
    counted_init(&device, s->model, s->model->features);
    counted_init(&host, s->model, 0);
    pio_textgen *on_device = counted_textgen(&device, fixture);
    pio_textgen *on_host = counted_textgen(&host, fixture);
    for (size_t c = 0; c < SAMPLING_CASES; c++) {
        for (uint64_t seed = 1; seed <= 3; seed++) {
            pio_generate_response a, b;
            generate_ids(on_device, &SAMPLING_GRID[c].p, seed, &a);
            generate_ids(on_host, &SAMPLING_GRID[c].p, seed, &b);
            assert_int_equal(a.n_tokens, 16);
            if (a.n_tokens != b.n_tokens ||
                memcmp(a.token_ids, b.token_ids, a.n_tokens * sizeof(int32_t)) != 0)
                fail_msg("%s, seed %llu: device and host sampling generate different tokens",
                         SAMPLING_GRID[c].name, (unsigned long long)seed);
            assert_string_equal(a.text, b.text);
            pio_textgen_free_response(&a);
            pio_textgen_free_response(&b);
        }
    }
    /* Every forward of the device path asked for ids alone, every one of the host path for
     * logits: 16 tokens come from a prefill and 15 decode steps. */
    int forwards = (int)(SAMPLING_CASES * 3 * 16);
    assert_int_equal(device.picked_forwards, forwards);
    assert_int_equal(device.logits_forwards, 0);
    assert_int_equal(host.logits_forwards, forwards);
    assert_int_equal(host.picked_forwards, 0);
    pio_textgen_destroy(on_device);
    pio_textgen_destroy(on_host);
}

#endif
