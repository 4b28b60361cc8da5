/*
 * The in-process CPU communicator (kernels/comm.h): N = 1..4 ranks, one thread each.
 * All-reduce of F32 and BF16 equals the sequential fp32 sum in rank order bit for bit (also in
 * place and on strided column views, whose gaps must stay untouched), all-gather along rows and
 * columns in rank order, broadcast from every root, 1000 barriers in a row, ranks that disagree
 * (shapes, ops, roots, one rank's invalid arguments) fail on every rank and leave the group
 * usable, an aborting rank and a rank that never comes cancel the others (bounded waits), the
 * API's own errors, the id file helpers, and the CUDA communicator's clean refusal without a GPU.
 *
 * cmocka's asserts are not thread-safe: rank threads record what they saw and the test thread
 * checks it after joining them (with a deadline, so a deadlock fails instead of hanging).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/comm.h"

#define MAX_N 4
#define JOIN_SECONDS 60 /* a rank thread still running after this is a deadlock */
#define SAFETY_TIMEOUT_MS 20000 /* the groups' own timeout: a hang becomes CANCELLED */

typedef struct world {
    int n;
    pk_context *ctx[MAX_N];
    pk_comm *comm[MAX_N];
} world;

static void world_make(world *w, int n, int timeout_ms)
{
    memset(w, 0, sizeof *w);
    w->n = n;
    pk_context_options options = {.n_threads = 1};
    for (int r = 0; r < n; r++)
        assert_int_equal(pk_context_create(PK_DEVICE_CPU, &options, &w->ctx[r], NULL), PIO_OK);
    pk_comm_options copt = {.timeout_ms = timeout_ms};
    pk_comm_group *group = NULL;
    pio_error err;
    assert_int_equal(pk_comm_group_create(PK_DEVICE_CPU, n, &copt, &group, &err), PIO_OK);
    assert_int_equal(pk_comm_group_size(group), n);
    for (int r = 0; r < n; r++) {
        assert_int_equal(pk_comm_create(group, w->ctx[r], r, &w->comm[r], &err), PIO_OK);
        assert_int_equal(pk_comm_rank(w->comm[r]), r);
        assert_int_equal(pk_comm_size(w->comm[r]), n);
        assert_ptr_equal(pk_comm_context(w->comm[r]), w->ctx[r]);
        assert_string_equal(pk_comm_backend_name(w->comm[r]), "cpu");
    }
    pk_comm_group_release(group); /* the communicators keep it alive */
}

static void world_free(world *w)
{
    for (int r = 0; r < w->n; r++) {
        pk_comm_destroy(w->comm[r]);
        pk_context_destroy(w->ctx[r]);
    }
}

typedef void (*rank_fn)(pk_comm *comm, void *arg);

typedef struct thread_arg {
    rank_fn fn;
    pk_comm *comm;
    void *arg;
} thread_arg;

static void *thread_main(void *p)
{
    thread_arg *a = p;
    a->fn(a->comm, a->arg);
    return NULL;
}

/* Runs fn on every rank in its own thread and joins them, failing on a deadline. */
static void run_ranks(world *w, rank_fn fn, void *arg)
{
    pthread_t threads[MAX_N];
    thread_arg args[MAX_N];
    for (int r = 0; r < w->n; r++) {
        args[r] = (thread_arg){fn, w->comm[r], arg};
        assert_int_equal(pthread_create(&threads[r], NULL, thread_main, &args[r]), 0);
    }
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += JOIN_SECONDS;
    for (int r = 0; r < w->n; r++) {
        int rc = pthread_timedjoin_np(threads[r], NULL, &deadline);
        if (rc != 0) {
            fprintf(stderr, "rank %d did not finish within %d s (deadlock)\n", r, JOIN_SECONDS);
            fail();
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Data helpers                                                                               */
/* ------------------------------------------------------------------------------------------ */

static float uniform(uint32_t *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffffff) / 8388608.0f - 1.0f;
}

/* rows x stride buffer of dtype, random values (bf16: rounded randoms). */
static void *random_buffer(pio_dtype dtype, int64_t rows, int64_t stride, uint32_t seed)
{
    size_t n = (size_t)(rows * stride);
    if (dtype == PIO_DTYPE_F32) {
        float *x = malloc(n * sizeof *x);
        for (size_t i = 0; i < n; i++)
            x[i] = uniform(&seed) * 100.0f;
        return x;
    }
    uint16_t *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = pio_f32_to_bf16(uniform(&seed) * 100.0f);
    return x;
}

static float load(const pk_tensor *t, int64_t i, int64_t j)
{
    if (t->dtype == PIO_DTYPE_F32)
        return ((const float *)t->data)[i * t->stride + j];
    return pio_bf16_to_f32(((const uint16_t *)t->data)[i * t->stride + j]);
}

static uint32_t bits_at(const pk_tensor *t, int64_t i, int64_t j)
{
    if (t->dtype == PIO_DTYPE_F32) {
        uint32_t b;
        memcpy(&b, (const float *)t->data + i * t->stride + j, sizeof b);
        return b;
    }
    return ((const uint16_t *)t->data)[i * t->stride + j];
}

/* ------------------------------------------------------------------------------------------ */
/* All-reduce                                                                                 */
/* ------------------------------------------------------------------------------------------ */

typedef struct reduce_case {
    pk_tensor in[MAX_N], out[MAX_N];
    int repeat;
    pio_status status[MAX_N];
    char message[MAX_N][PIO_ERROR_MESSAGE_MAX];
} reduce_case;

static void reduce_rank(pk_comm *comm, void *p)
{
    reduce_case *c = p;
    int r = pk_comm_rank(comm);
    pio_error err;
    pio_error_clear(&err);
    for (int k = 0; k < c->repeat && c->status[r] == PIO_OK; k++)
        c->status[r] = pk_comm_all_reduce(comm, &c->out[r], &c->in[r], &err);
    snprintf(c->message[r], sizeof c->message[r], "%s", err.message);
}

/* The reference: (((in_0 + in_1) + in_2) + in_3) in fp32, rounded once for BF16. */
static uint32_t reference_sum(const pk_tensor *in, int n, pio_dtype dtype, int64_t i, int64_t j)
{
    float acc = load(&in[0], i, j);
    for (int r = 1; r < n; r++)
        acc += load(&in[r], i, j);
    if (dtype == PIO_DTYPE_BF16)
        return pio_f32_to_bf16(acc);
    uint32_t b;
    memcpy(&b, &acc, sizeof b);
    return b;
}

/* in_place: out is in. strided: both are column views [R, C] at column 3 of [R, C + 7] buffers
 * whose other columns hold a sentinel that must survive. */
static void check_all_reduce(int n, pio_dtype dtype, int in_place, int strided)
{
    const int64_t R = 5, C = 37, W = strided ? C + 7 : C, first = strided ? 3 : 0;
    world w;
    world_make(&w, n, SAFETY_TIMEOUT_MS);
    reduce_case *c = calloc(1, sizeof *c);
    void *in_buf[MAX_N], *out_buf[MAX_N], *orig[MAX_N];
    size_t elem = pio_dtype_size(dtype);
    for (int r = 0; r < n; r++) {
        in_buf[r] = random_buffer(dtype, R, W, 1000u * (uint32_t)n + 17u * (uint32_t)r + dtype);
        orig[r] = malloc((size_t)(R * W) * elem);
        memcpy(orig[r], in_buf[r], (size_t)(R * W) * elem);
        pk_tensor whole = pk_tensor_host(in_buf[r], dtype, R, W);
        c->in[r] = pk_tensor_cols(&whole, first, C);
        if (in_place) {
            out_buf[r] = NULL;
            c->out[r] = c->in[r];
        } else {
            out_buf[r] = malloc((size_t)(R * W) * elem);
            memset(out_buf[r], 0x7b, (size_t)(R * W) * elem); /* sentinel */
            pk_tensor o = pk_tensor_host(out_buf[r], dtype, R, W);
            c->out[r] = pk_tensor_cols(&o, first, C);
        }
    }
    c->repeat = 1;
    run_ranks(&w, reduce_rank, c);
    pk_tensor ref_in[MAX_N];
    for (int r = 0; r < n; r++) {
        if (c->status[r] != PIO_OK)
            fprintf(stderr, "rank %d: %s\n", r, c->message[r]);
        assert_int_equal(c->status[r], PIO_OK);
        pk_tensor whole = pk_tensor_host(orig[r], dtype, R, W);
        ref_in[r] = pk_tensor_cols(&whole, first, C);
    }
    for (int r = 0; r < n; r++) {
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C; j++)
                if (bits_at(&c->out[r], i, j) != reference_sum(ref_in, n, dtype, i, j)) {
                    fprintf(stderr, "n=%d %s in_place=%d strided=%d rank %d [%lld, %lld]: "
                            "bits %#x != %#x\n", n, pio_dtype_name(dtype), in_place, strided, r,
                            (long long)i, (long long)j, bits_at(&c->out[r], i, j),
                            reference_sum(ref_in, n, dtype, i, j));
                    fail();
                }
        /* Gaps of the strided views untouched: the inputs' (in place) or the sentinel. */
        const unsigned char *buf = in_place ? in_buf[r] : out_buf[r];
        const unsigned char *want = in_place ? orig[r] : NULL;
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < W; j++) {
                if (j >= first && j < first + C)
                    continue;
                size_t at = (size_t)(i * W + j) * elem;
                for (size_t b = 0; b < elem; b++)
                    assert_int_equal(buf[at + b], want != NULL ? want[at + b] : 0x7b);
            }
        if (!in_place) /* inputs unchanged */
            assert_memory_equal(in_buf[r], orig[r], (size_t)(R * W) * elem);
    }
    /* Deterministic: a second run over the same inputs gives the same bits. */
    if (!in_place) {
        void *first_out[MAX_N];
        for (int r = 0; r < n; r++) {
            first_out[r] = malloc((size_t)(R * W) * elem);
            memcpy(first_out[r], out_buf[r], (size_t)(R * W) * elem);
        }
        c->repeat = 3;
        run_ranks(&w, reduce_rank, c);
        for (int r = 0; r < n; r++) {
            assert_int_equal(c->status[r], PIO_OK);
            assert_memory_equal(first_out[r], out_buf[r], (size_t)(R * W) * elem);
            free(first_out[r]);
        }
    }
    for (int r = 0; r < n; r++) {
        free(in_buf[r]);
        free(out_buf[r]);
        free(orig[r]);
    }
    free(c);
    world_free(&w);
}

static void test_all_reduce(void **state)
{
    (void)state;
    static const pio_dtype dtypes[] = {PIO_DTYPE_F32, PIO_DTYPE_BF16};
    for (int n = 1; n <= MAX_N; n++)
        for (int d = 0; d < 2; d++)
            for (int in_place = 0; in_place < 2; in_place++)
                for (int strided = 0; strided < 2; strided++)
                    check_all_reduce(n, dtypes[d], in_place, strided);
}

/* ------------------------------------------------------------------------------------------ */
/* All-gather                                                                                 */
/* ------------------------------------------------------------------------------------------ */

typedef struct gather_case {
    pk_tensor in[MAX_N], out[MAX_N];
    pk_comm_axis axis;
    pio_status status[MAX_N];
    char message[MAX_N][PIO_ERROR_MESSAGE_MAX];
} gather_case;

static void gather_rank(pk_comm *comm, void *p)
{
    gather_case *c = p;
    int r = pk_comm_rank(comm);
    pio_error err;
    pio_error_clear(&err);
    c->status[r] = pk_comm_all_gather(comm, &c->out[r], &c->in[r], c->axis, &err);
    snprintf(c->message[r], sizeof c->message[r], "%s", err.message);
}

/* I32 values encode (rank, row, col); in_place: in is the rank's own slice of out; strided:
 * in is a column view of a wider buffer. */
static void check_all_gather(int n, pk_comm_axis axis, int in_place, int strided)
{
    const int64_t R = 3, C = 5;
    const int64_t OR = axis == PK_COMM_ROWS ? R * n : R, OC = axis == PK_COMM_ROWS ? C : C * n;
    world w;
    world_make(&w, n, SAFETY_TIMEOUT_MS);
    gather_case *c = calloc(1, sizeof *c);
    c->axis = axis;
    int32_t *out_buf[MAX_N], *in_buf[MAX_N];
    const int64_t OW = OC + (strided ? 4 : 0); /* out rows padded too when strided */
    for (int r = 0; r < n; r++) {
        out_buf[r] = malloc((size_t)(OR * OW) * sizeof(int32_t));
        for (int64_t i = 0; i < OR * OW; i++)
            out_buf[r][i] = -1;
        pk_tensor whole = pk_tensor_host(out_buf[r], PIO_DTYPE_I32, OR, OW);
        c->out[r] = pk_tensor_cols(&whole, 0, OC);
        if (in_place) {
            in_buf[r] = NULL;
            c->in[r] = axis == PK_COMM_ROWS ? pk_tensor_rows(&c->out[r], R * r, R)
                                            : pk_tensor_cols(&c->out[r], C * r, C);
        } else {
            int64_t IW = C + (strided ? 3 : 0);
            in_buf[r] = malloc((size_t)(R * IW) * sizeof(int32_t));
            for (int64_t i = 0; i < R * IW; i++)
                in_buf[r][i] = -2;
            pk_tensor iw = pk_tensor_host(in_buf[r], PIO_DTYPE_I32, R, IW);
            c->in[r] = pk_tensor_cols(&iw, strided ? 2 : 0, C);
        }
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C; j++)
                ((int32_t *)c->in[r].data)[i * c->in[r].stride + j] =
                    (int32_t)(r * 10000 + i * 100 + j);
    }
    run_ranks(&w, gather_rank, c);
    for (int r = 0; r < n; r++) {
        if (c->status[r] != PIO_OK)
            fprintf(stderr, "rank %d: %s\n", r, c->message[r]);
        assert_int_equal(c->status[r], PIO_OK);
        for (int64_t i = 0; i < OR; i++)
            for (int64_t j = 0; j < OW; j++) {
                int32_t got = out_buf[r][i * OW + j];
                if (j >= OC) {
                    assert_int_equal(got, -1); /* gap untouched */
                    continue;
                }
                int64_t src = axis == PK_COMM_ROWS ? i / R : j / C;
                int64_t si = axis == PK_COMM_ROWS ? i % R : i;
                int64_t sj = axis == PK_COMM_ROWS ? j : j % C;
                assert_int_equal(got, (int32_t)(src * 10000 + si * 100 + sj));
            }
    }
    for (int r = 0; r < n; r++) {
        free(out_buf[r]);
        free(in_buf[r]);
    }
    free(c);
    world_free(&w);
}

static void test_all_gather(void **state)
{
    (void)state;
    for (int n = 1; n <= MAX_N; n++)
        for (int axis = 0; axis < 2; axis++)
            for (int in_place = 0; in_place < 2; in_place++)
                for (int strided = 0; strided < 2; strided++)
                    check_all_gather(n, (pk_comm_axis)axis, in_place, strided);
}

/* BF16 along columns: the tensor-parallel logits gather (vocabulary shards side by side). */
static void test_all_gather_bf16_cols(void **state)
{
    (void)state;
    const int n = 3;
    const int64_t R = 2, C = 4;
    world w;
    world_make(&w, n, SAFETY_TIMEOUT_MS);
    gather_case *c = calloc(1, sizeof *c);
    c->axis = PK_COMM_COLS;
    uint16_t in_buf[MAX_N][R * C], out_buf[MAX_N][R * C * 3];
    for (int r = 0; r < n; r++) {
        for (int64_t i = 0; i < R * C; i++)
            in_buf[r][i] = pio_f32_to_bf16((float)(r * 100 + i));
        c->in[r] = pk_tensor_host(in_buf[r], PIO_DTYPE_BF16, R, C);
        c->out[r] = pk_tensor_host(out_buf[r], PIO_DTYPE_BF16, R, C * n);
    }
    run_ranks(&w, gather_rank, c);
    for (int r = 0; r < n; r++) {
        assert_int_equal(c->status[r], PIO_OK);
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C * n; j++)
                assert_true(pio_bf16_to_f32(out_buf[r][i * C * n + j]) ==
                            (float)((j / C) * 100 + i * C + j % C));
    }
    free(c);
    world_free(&w);
}

/* ------------------------------------------------------------------------------------------ */
/* Broadcast                                                                                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct bcast_case {
    pk_tensor t[MAX_N];
    int root;
    pio_status status[MAX_N];
} bcast_case;

static void bcast_rank(pk_comm *comm, void *p)
{
    bcast_case *c = p;
    int r = pk_comm_rank(comm);
    c->status[r] = pk_comm_broadcast(comm, &c->t[r], c->root, NULL);
}

static void test_broadcast(void **state)
{
    (void)state;
    const int64_t R = 4, C = 6, W = 9;
    for (int n = 1; n <= MAX_N; n++) {
        world w;
        world_make(&w, n, SAFETY_TIMEOUT_MS);
        for (int root = 0; root < n; root++) {
            bcast_case c;
            memset(&c, 0, sizeof c);
            c.root = root;
            float buf[MAX_N][4 * 9];
            for (int r = 0; r < n; r++) {
                for (int64_t i = 0; i < R * W; i++)
                    buf[r][i] = (float)(r * 1000 + i);
                pk_tensor whole = pk_tensor_host(buf[r], PIO_DTYPE_F32, R, W);
                c.t[r] = pk_tensor_cols(&whole, 2, C); /* strided */
            }
            run_ranks(&w, bcast_rank, &c);
            for (int r = 0; r < n; r++) {
                assert_int_equal(c.status[r], PIO_OK);
                for (int64_t i = 0; i < R; i++)
                    for (int64_t j = 0; j < W; j++) {
                        int inside = j >= 2 && j < 2 + C;
                        int from = inside ? root : r;
                        assert_true(buf[r][i * W + j] == (float)(from * 1000 + i * W + j));
                    }
            }
        }
        world_free(&w);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Barriers                                                                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct barrier_case {
    int counter; /* atomic */
    int iterations;
    int violations[MAX_N];
    pio_status status[MAX_N];
} barrier_case;

static void barrier_rank(pk_comm *comm, void *p)
{
    barrier_case *c = p;
    int r = pk_comm_rank(comm), n = pk_comm_size(comm);
    for (int k = 0; k < c->iterations; k++) {
        __atomic_add_fetch(&c->counter, 1, __ATOMIC_SEQ_CST);
        pio_status st = pk_comm_barrier(comm, NULL);
        if (st != PIO_OK) {
            c->status[r] = st;
            return;
        }
        /* Everyone has incremented for iteration k; nobody can be past iteration k+1's
         * increment before this rank reaches the next barrier. */
        int seen = __atomic_load_n(&c->counter, __ATOMIC_SEQ_CST);
        if (seen < (k + 1) * n || seen > (k + 2) * n)
            c->violations[r]++;
    }
}

static void test_barrier_loop(void **state)
{
    (void)state;
    for (int n = 1; n <= MAX_N; n++) {
        world w;
        world_make(&w, n, SAFETY_TIMEOUT_MS);
        barrier_case c;
        memset(&c, 0, sizeof c);
        c.iterations = 1000;
        run_ranks(&w, barrier_rank, &c);
        for (int r = 0; r < n; r++) {
            assert_int_equal(c.status[r], PIO_OK);
            assert_int_equal(c.violations[r], 0);
        }
        assert_int_equal(c.counter, 1000 * n);
        world_free(&w);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Disagreements, aborts, timeouts                                                            */
/* ------------------------------------------------------------------------------------------ */

typedef struct fault_case {
    int kind;
    float data[MAX_N][64];
    pio_status status[MAX_N];
    pio_status after[MAX_N]; /* a correct all-reduce afterwards */
    char message[MAX_N][PIO_ERROR_MESSAGE_MAX];
} fault_case;

enum {
    FAULT_SHAPE = 1,    /* the last rank reduces [2, 5] instead of [2, 4] */
    FAULT_OP = 2,       /* rank 0 calls a barrier while the others reduce */
    FAULT_ROOT = 3,     /* the last rank broadcasts from another root */
    FAULT_INVALID = 4,  /* the last rank passes a NULL tensor */
    FAULT_DTYPE = 5,    /* the last rank reduces BF16 */
    FAULT_ABORT = 6,    /* the last rank aborts instead of joining */
    FAULT_MISSING = 7,  /* the last rank never comes (timeout) */
};

static void fault_rank(pk_comm *comm, void *p)
{
    fault_case *c = p;
    int r = pk_comm_rank(comm), last = pk_comm_size(comm) - 1;
    pio_error err;
    pio_error_clear(&err);
    pk_tensor t = pk_tensor_host(c->data[r], PIO_DTYPE_F32, 2, 4);
    pio_status st;
    switch (c->kind) {
    case FAULT_SHAPE: {
        pk_tensor u = pk_tensor_host(c->data[r], PIO_DTYPE_F32, 2, r == last ? 5 : 4);
        st = pk_comm_all_reduce(comm, &u, &u, &err);
        break;
    }
    case FAULT_OP:
        st = r == 0 ? pk_comm_barrier(comm, &err) : pk_comm_all_reduce(comm, &t, &t, &err);
        break;
    case FAULT_ROOT: st = pk_comm_broadcast(comm, &t, r == last ? 1 : 0, &err); break;
    case FAULT_INVALID: st = pk_comm_all_reduce(comm, &t, r == last ? NULL : &t, &err); break;
    case FAULT_DTYPE: {
        pk_tensor u = t;
        if (r == last) {
            u.dtype = PIO_DTYPE_BF16;
            u.stride = u.cols;
        }
        st = pk_comm_all_reduce(comm, &u, &u, &err);
        break;
    }
    case FAULT_ABORT:
        if (r == last) {
            usleep(20000); /* let the others block first */
            pk_comm_abort(comm);
            pk_comm_abort(comm); /* idempotent */
            st = pk_comm_all_reduce(comm, &t, &t, &err);
        } else {
            st = pk_comm_all_reduce(comm, &t, &t, &err);
        }
        break;
    case FAULT_MISSING:
        if (r == last) {
            c->status[r] = PIO_ERR_CANCELLED; /* stays away; the others time out */
            c->after[r] = PIO_ERR_CANCELLED;
            return;
        }
        st = pk_comm_all_reduce(comm, &t, &t, &err);
        break;
    default: st = PIO_ERR_INTERNAL;
    }
    c->status[r] = st;
    snprintf(c->message[r], sizeof c->message[r], "%s", err.message);
    c->after[r] = pk_comm_all_reduce(comm, &t, &t, NULL);
}

static void check_fault(int n, int kind, pio_status expect, pio_status expect_after,
                        const char *expect_text, int timeout_ms)
{
    world w;
    world_make(&w, n, timeout_ms);
    fault_case *c = calloc(1, sizeof *c);
    c->kind = kind;
    run_ranks(&w, fault_rank, c);
    for (int r = 0; r < n; r++) {
        if (kind == FAULT_MISSING && r == n - 1)
            continue;
        if (c->status[r] != expect || strstr(c->message[r], expect_text) == NULL)
            fprintf(stderr, "n=%d fault %d rank %d: %d %s\n", n, kind, r, c->status[r],
                    c->message[r]);
        assert_int_equal(c->status[r], expect);
        char own[32];
        snprintf(own, sizeof own, "rank %d", r);
        assert_non_null(strstr(c->message[r], own)); /* names the rank */
        assert_non_null(strstr(c->message[r], expect_text));
        assert_int_equal(c->after[r], expect_after);
    }
    free(c);
    world_free(&w);
}

static void test_disagreements_fail_on_every_rank(void **state)
{
    (void)state;
    for (int n = 2; n <= MAX_N; n++) {
        check_fault(n, FAULT_SHAPE, PIO_ERR_INVALID_ARGUMENT, PIO_OK, "[2, 5]",
                    SAFETY_TIMEOUT_MS);
        check_fault(n, FAULT_OP, PIO_ERR_INVALID_ARGUMENT, PIO_OK, "disagree",
                    SAFETY_TIMEOUT_MS);
        check_fault(n, FAULT_ROOT, PIO_ERR_INVALID_ARGUMENT, PIO_OK, "root", SAFETY_TIMEOUT_MS);
        check_fault(n, FAULT_INVALID, PIO_ERR_INVALID_ARGUMENT, PIO_OK, "in",
                    SAFETY_TIMEOUT_MS);
        check_fault(n, FAULT_DTYPE, PIO_ERR_INVALID_ARGUMENT, PIO_OK, "BF16", SAFETY_TIMEOUT_MS);
    }
}

static void test_abort_cancels_the_others(void **state)
{
    (void)state;
    for (int n = 2; n <= MAX_N; n++)
        check_fault(n, FAULT_ABORT, PIO_ERR_CANCELLED, PIO_ERR_CANCELLED, "aborted",
                    SAFETY_TIMEOUT_MS);
}

static void test_missing_rank_times_out(void **state)
{
    (void)state;
    for (int n = 2; n <= MAX_N; n++) {
        char missing[32];
        snprintf(missing, sizeof missing, "for rank(s) %d", n - 1);
        check_fault(n, FAULT_MISSING, PIO_ERR_CANCELLED, PIO_ERR_CANCELLED, missing, 100);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* API errors, create_all, ids, CUDA                                                          */
/* ------------------------------------------------------------------------------------------ */

static void test_api_errors(void **state)
{
    (void)state;
    pio_error err;
    pk_comm_group *group = NULL;
    assert_int_equal(pk_comm_group_create(PK_DEVICE_CPU, 0, NULL, &group, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_null(group);
    assert_int_equal(pk_comm_group_create(PK_DEVICE_CPU, PK_COMM_MAX_RANKS + 1, NULL, &group,
                                          &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_comm_group_create(PK_DEVICE_KIND_COUNT, 2, NULL, &group, &err),
                     PIO_ERR_UNSUPPORTED);
    assert_int_equal(pk_comm_group_create(PK_DEVICE_CPU, 2, NULL, &group, &err), PIO_OK);

    pk_comm_id id;
    assert_int_equal(pk_comm_group_id(group, &id, &err), PIO_ERR_UNSUPPORTED);
    memset(&id, 0, sizeof id);
    pk_comm_group *joined = NULL;
    assert_int_equal(pk_comm_group_from_id(PK_DEVICE_CPU, &id, 2, NULL, &joined, &err),
                     PIO_ERR_UNSUPPORTED);
    assert_null(joined);

    pk_context *ctx = NULL;
    assert_int_equal(pk_context_create(PK_DEVICE_CPU, NULL, &ctx, NULL), PIO_OK);
    pk_comm *comm = NULL;
    assert_int_equal(pk_comm_create(group, ctx, 2, &comm, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "rank 2"));
    assert_int_equal(pk_comm_create(group, NULL, 0, &comm, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_comm_create(NULL, ctx, 0, &comm, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_null(comm);

    /* create_all: both ranks from this thread, then local argument errors on a 1-rank group
     * (a lone rank's invalid arguments cannot leave anyone waiting). */
    pk_context *ctxs[2] = {ctx, ctx};
    pk_comm *comms[2];
    assert_int_equal(pk_comm_create_all(group, ctxs, comms, &err), PIO_OK);
    assert_int_equal(pk_comm_rank(comms[1]), 1);
    pk_comm_destroy(comms[0]);
    pk_comm_destroy(comms[1]);
    pk_comm_group_release(group);

    assert_int_equal(pk_comm_group_create(PK_DEVICE_CPU, 1, NULL, &group, &err), PIO_OK);
    assert_int_equal(pk_comm_create(group, ctx, 0, &comm, &err), PIO_OK);
    pk_comm_group_release(group);
    float a[16] = {0}, b[16] = {0};
    int32_t ids[12] = {0};
    pk_tensor ta = pk_tensor_host(a, PIO_DTYPE_F32, 3, 4), tb = pk_tensor_host(b, PIO_DTYPE_F32, 3, 4);
    pk_tensor ti = pk_tensor_host(ids, PIO_DTYPE_I32, 3, 4);
    pk_tensor wide = pk_tensor_host(a, PIO_DTYPE_F32, 2, 6);
    pk_tensor part = pk_tensor_cols(&wide, 1, 3);
    assert_int_equal(pk_comm_all_reduce(comm, &ti, &ti, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_comm_all_reduce: rank 0: in has dtype I32"));
    assert_int_equal(pk_comm_all_reduce(comm, &tb, &part, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_comm_all_reduce(comm, &part, &ta, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "out"));
    pk_tensor shifted = pk_tensor_host(a + 1, PIO_DTYPE_F32, 3, 4);
    assert_int_equal(pk_comm_all_reduce(comm, &shifted, &ta, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "overlaps"));
    assert_int_equal(pk_comm_all_reduce(comm, &tb, &ta, &err), PIO_OK);
    assert_int_equal(pk_comm_all_gather(comm, &tb, &ta, (pk_comm_axis)7, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_comm_all_gather(comm, &ta, &shifted, PK_COMM_ROWS, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_comm_broadcast(comm, &ta, 1, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "root 1"));
    pk_tensor on_gpu = ta;
    on_gpu.device = PK_DEVICE_CUDA;
    assert_int_equal(pk_comm_broadcast(comm, &on_gpu, 0, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_comm_barrier(NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_comm_barrier(comm, &err), PIO_OK);
    /* Still in step after the local failures. */
    assert_int_equal(pk_comm_broadcast(comm, &ti, 0, &err), PIO_OK);
    pk_comm_destroy(comm);
    pk_comm_destroy(NULL);
    pk_context_destroy(ctx);
}

static void test_cuda_group_without_gpu(void **state)
{
    (void)state;
    pk_context *gpu = NULL;
    pio_status ctx_st = pk_context_create(PK_DEVICE_CUDA, NULL, &gpu, NULL);
    pk_context_destroy(gpu);
    pk_comm_group *group = NULL;
    pio_error err;
    pio_status st = pk_comm_group_create(PK_DEVICE_CUDA, 2, NULL, &group, &err);
    if (ctx_st == PIO_ERR_UNSUPPORTED) { /* no CUDA build, or no usable GPU */
        assert_int_equal(st, PIO_ERR_UNSUPPORTED);
        assert_null(group);
        printf("CUDA communicator: %s\n", err.message);
    } else {
        assert_int_equal(st, PIO_OK); /* a GPU is there: the id exists and can be read */
        pk_comm_id id;
        assert_int_equal(pk_comm_group_id(group, &id, &err), PIO_OK);
        pk_comm_group_release(group);
    }
}

typedef struct late_writer {
    const char *path;
    pk_comm_id id;
    pio_status status;
} late_writer;

static void *write_late(void *p)
{
    late_writer *l = p;
    usleep(50000);
    l->status = pk_comm_id_write_file(l->path, &l->id, NULL);
    return NULL;
}

static void test_id_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/pio_comm_idXXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], bad[256];
    snprintf(path, sizeof path, "%s/nccl.id", dir);
    snprintf(bad, sizeof bad, "%s/bad.id", dir);
    pk_comm_id id, back;
    for (int i = 0; i < PK_COMM_ID_BYTES; i++)
        id.bytes[i] = (unsigned char)(i * 7 + 3);
    pio_error err;

    assert_int_equal(pk_comm_id_read_file(path, 0, &back, &err), PIO_ERR_NOT_FOUND);
    assert_int_equal(pk_comm_id_read_file(path, 30, &back, &err), PIO_ERR_NOT_FOUND);
    assert_non_null(strstr(err.message, "30 ms"));

    late_writer l = {path, id, PIO_ERR_INTERNAL};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, write_late, &l), 0);
    memset(&back, 0, sizeof back);
    assert_int_equal(pk_comm_id_read_file(path, 10000, &back, &err), PIO_OK);
    pthread_join(t, NULL);
    assert_int_equal(l.status, PIO_OK);
    assert_memory_equal(back.bytes, id.bytes, PK_COMM_ID_BYTES);

    FILE *f = fopen(bad, "wb");
    assert_non_null(f);
    fputs("not an id", f);
    fclose(f);
    assert_int_equal(pk_comm_id_read_file(bad, 0, &back, &err), PIO_ERR_FORMAT);
    char missing_dir[300];
    snprintf(missing_dir, sizeof missing_dir, "%s/no/such/dir/id", dir);
    assert_int_equal(pk_comm_id_write_file(missing_dir, &id, &err), PIO_ERR_IO);
    assert_int_equal(pk_comm_id_write_file(NULL, &id, &err), PIO_ERR_INVALID_ARGUMENT);

    unlink(path);
    unlink(bad);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_reduce),
        cmocka_unit_test(test_all_gather),
        cmocka_unit_test(test_all_gather_bf16_cols),
        cmocka_unit_test(test_broadcast),
        cmocka_unit_test(test_barrier_loop),
        cmocka_unit_test(test_disagreements_fail_on_every_rank),
        cmocka_unit_test(test_abort_cancels_the_others),
        cmocka_unit_test(test_missing_rank_times_out),
        cmocka_unit_test(test_api_errors),
        cmocka_unit_test(test_cuda_group_without_gpu),
        cmocka_unit_test(test_id_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
