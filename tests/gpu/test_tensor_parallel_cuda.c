/*
 * Tensor parallelism on CUDA through NCCL (issue 8), on this machine's GPUs. Run by
 * `make test-gpu` and by the GPU bundle's run-gpu-tests.sh (tests/test_tensor_parallel_cuda
 * there; NCCL comes from the machine, env.sh finds it). The plugins are found beside the test
 * (bundle: ../plugins; build: ../../plugins) or in PIO_TEST_PLUGIN_DIR; the fixtures in
 * tests/fixtures/models under the working directory, the repository root above the bundle or
 * the build folder, or PIO_TEST_FIXTURE_DIR.
 *
 *   nccl communicator  pk_comm on NCCL with one rank on GPU 0, and with 2 and 4 ranks (one
 *                      thread each) where the GPUs exist: all-reduce (F32 in place, out of
 *                      place and on strided column views; BF16), all-gather along rows and
 *                      columns (and in place), broadcast, barrier. The values are small
 *                      integers, so every sum is exact whatever order NCCL adds in: results
 *                      must be bit-exact. The 2-rank group is made by pk_comm_create from each
 *                      rank's thread (concurrent ncclCommInitRank), the others by
 *                      pk_comm_create_all. Abort cancels the later collectives.
 *   moe slice          pk_moe_experts_slice (expert parallelism) on CUDA against the CPU's for
 *                      several slices with and without accumulate (2e-5, fp32 dots in another
 *                      order), and two halves adding up to the whole call.
 *   dense, moe         the fixtures qwen3_tiny (4 q / 2 KV heads, intermediate 160) and
 *                      qwen3_moe_tiny (4 q / 1 KV head, 12 experts), F32 KV cache:
 *                      (a) tp = 1 through the rank machinery (parallel.force_ranks: a rank
 *                      decoder with its own context, weights uploaded from the host slices, and
 *                      a 1-rank NCCL communicator) against the plain CUDA path. One rank runs
 *                      the same ops on the same weights in the same layout, and a communicator
 *                      of one never reduces, so with decode graphs off on both sides the logits
 *                      are expected bit for bit. Asserted: the 1e-5 relative, also
 *                      against the plain path with its decode graphs (whose logits head is the
 *                      fused RMSNorm+matmul); printed: whether the bits agree. Greedy
 *                      continuations must agree.
 *                      (b) tp = 2 and 4 against tp = 1 on CUDA in the exact-fp32 mode
 *                      (PIO_CUDA_GEMV_MAX_M large: every matmul in fp32, as in
 *                      test_plugins_cuda.c, so no bf16 rounding of x can flip a near-tie of
 *                      the MoE router or of a greedy argmax): logits within 1e-3 (the
 *                      row-parallel sums are added in another order) and the same greedy
 *                      continuations; the dense model also in the default mode (cuBLASLt on
 *                      bf16-rounded x) within 1e-2. tp = 2 on GPUs [1, 0] equals [0, 1]; a
 *                      batched forward at tp = 2 over KV blocks of 4 tokens equals one sequence
 *                      at a time (exact-fp32 mode, 1e-4).
 *
 * Cases needing more GPUs than the machine has are reported as SKIPPED with the reason (cmocka's
 * skip), never passed silently. PIO_GPU_TEST_SANITIZER=1 (under compute-sanitizer) skips every
 * case that starts NCCL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <pthread.h>
#include <unistd.h>

#include "kernels/comm.h"
#include "kernels/ops.h"
#include "pio/dtype.h"

/* The plugin under test (each model group sets it) and the device sessions load on. */
static const char *plugin_so;
#define PLUGIN_SO plugin_so
#define SESSION_DEVICE "cuda"
#include "tests/plugin_reference.h"

/* tp = N against tp = 1 (the bar); the same in the default mode (as the CUDA plugin
 * tests' bar against the reference); forced ranks against the plain path; a batched forward
 * against one sequence at a time (exact-fp32 mode). */
#define TP_TOLERANCE 1e-3
#define TP_TOLERANCE_BF16_X 1e-2
#define SAME_PATH_TOLERANCE 1e-5
#define BATCHED_TOLERANCE 1e-4
/* CUDA against the CPU backend: fp32 dots summed in another order (as test_kernels_cuda.c). */
#define TOL_F32 2e-5

static int gpu_count;
static int sanitizer;
static char plugin_dir[PATH_MAX];
static char plugin_path[PATH_MAX + 64];
/* plugin_reference.h reads the fixture's files through 256-byte paths. */
static char fixture_dir[192];
static char fixture_path[224];

/* ------------------------------------------------------------------------------------------ */
/* Skips with the reason                                                                      */
/* ------------------------------------------------------------------------------------------ */

static void need_gpus(int n, const char *what)
{
    if (gpu_count >= n)
        return;
    print_message("SKIPPED %s: needs %d GPU%s, this machine has %d\n", what, n,
                  n == 1 ? "" : "s", gpu_count);
    skip();
}

static void need_nccl(const char *what)
{
    if (!sanitizer)
        return;
    print_message("SKIPPED %s: NCCL is not run under compute-sanitizer "
                  "(PIO_GPU_TEST_SANITIZER=1)\n", what);
    skip();
}

/* ------------------------------------------------------------------------------------------ */
/* Device tensors                                                                             */
/* ------------------------------------------------------------------------------------------ */

/* A device copy of a contiguous host tensor, in a new buffer of ctx. */
static pio_status to_device(pk_context *ctx, const pk_tensor *host, pk_buffer *buf,
                            pk_tensor *out, pio_error *err)
{
    size_t bytes = (size_t)pk_tensor_numel(host) * pio_dtype_size(host->dtype);
    pio_status st = pk_buffer_alloc(ctx, bytes, buf, err);
    if (st != PIO_OK)
        return st;
    *out = pk_tensor_in(buf, 0, host->dtype, host->rows, host->cols);
    return pk_copy(ctx, out, host, err);
}

/* The device tensor t back into the contiguous host tensor `host`, waited for. */
static pio_status to_host(pk_context *ctx, const pk_tensor *host, const pk_tensor *t,
                          pio_error *err)
{
    pio_status st = pk_copy(ctx, host, t, err);
    return st == PIO_OK ? pk_synchronize(ctx, err) : st;
}

/* ------------------------------------------------------------------------------------------ */
/* The NCCL communicator                                                                      */
/* ------------------------------------------------------------------------------------------ */

enum { ROWS = 6, COLS = 10, N = ROWS * COLS };

/* One rank of a group under test, run on its own thread; cmocka's asserts stay on the main
 * thread, so a rank records its first failure as text. */
typedef struct rank_run {
    pk_context *ctx;
    pk_comm *comm;
    pk_comm_group *group; /* create_here: the group to join from this thread */
    int rank, size, create_here;
    pk_buffer a, b;       /* [ROWS, size·2·COLS] F32 each, enough for every check */
    char failure[512];
} rank_run;

static int rank_failed(rank_run *r, const char *format, ...)
{
    if (r->failure[0] != '\0')
        return 0;
    int n = snprintf(r->failure, sizeof r->failure, "rank %d of %d: ", r->rank, r->size);
    va_list args;
    va_start(args, format);
    vsnprintf(r->failure + n, sizeof r->failure - (size_t)n, format, args);
    va_end(args);
    return 0;
}

static int rank_ok(rank_run *r, pio_status st, const pio_error *err, const char *what)
{
    return st == PIO_OK ? 1 : rank_failed(r, "%s: %s: %s", what, pio_status_str(st),
                                           err->message);
}

/* got[i] == want(i) for every element, bit for bit. */
static int rank_expect(rank_run *r, const char *what, const float *got,
                       float (*want)(const rank_run *, int64_t), int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (got[i] != want(r, i))
            return rank_failed(r, "%s: element %lld is %g, expected %g", what, (long long)i,
                               (double)got[i], (double)want(r, i));
    return 1;
}

static float input_of(int rank, int64_t i)
{
    return (float)(i % 13 + rank);
}

static float summed(const rank_run *r, int64_t i)
{
    return (float)(r->size * (i % 13) + r->size * (r->size - 1) / 2);
}

/* Row-gathered [size·ROWS, COLS]: rank q's block of rows is q's input. */
static float gathered_rows(const rank_run *r, int64_t i)
{
    (void)r;
    return input_of((int)(i / N), i % N);
}

/* Column-gathered [ROWS, size·COLS]: rank q's columns of each row are q's input row. */
static float gathered_cols(const rank_run *r, int64_t i)
{
    int64_t row = i / (r->size * COLS), col = i % (r->size * COLS);
    return input_of((int)(col / COLS), row * COLS + col % COLS);
}

static float broadcast_value(const rank_run *r, int64_t i)
{
    return input_of(r->size - 1, i);
}

/* Uploads this rank's input into t (F32 or BF16, [ROWS, COLS], maybe strided). */
static int put_input(rank_run *r, const pk_tensor *t, pio_error *err)
{
    float f[N];
    uint16_t h[N];
    for (int64_t i = 0; i < N; i++) {
        f[i] = input_of(r->rank, i);
        h[i] = pio_f32_to_bf16(f[i]);
    }
    pk_tensor src = pk_tensor_host(t->dtype == PIO_DTYPE_BF16 ? (void *)h : (void *)f, t->dtype,
                                   ROWS, COLS);
    return rank_ok(r, pk_copy(r->ctx, t, &src, err), err, "upload");
}

/* t (F32 or BF16, any shape up to [ROWS, size·2·COLS] elements) as floats. */
static int get_floats(rank_run *r, const pk_tensor *t, float *out, pio_error *err)
{
    int64_t n = pk_tensor_numel(t);
    uint16_t *h = malloc((size_t)n * sizeof *h);
    pk_tensor dst = pk_tensor_host(t->dtype == PIO_DTYPE_BF16 ? (void *)h : (void *)out,
                                   t->dtype, t->rows, t->cols);
    int ok = rank_ok(r, to_host(r->ctx, &dst, t, err), err, "download");
    for (int64_t i = 0; ok && t->dtype == PIO_DTYPE_BF16 && i < n; i++)
        out[i] = pio_bf16_to_f32(h[i]);
    free(h);
    return ok;
}

static int check_all_reduce(rank_run *r, pio_error *err)
{
    float got[4 * N];
    pk_tensor in = pk_tensor_in(&r->a, 0, PIO_DTYPE_F32, ROWS, COLS);
    pk_tensor out = pk_tensor_in(&r->b, 0, PIO_DTYPE_F32, ROWS, COLS);
    /* Strided: the left and right halves of a [ROWS, 2·COLS] buffer. */
    pk_tensor wide = pk_tensor_in(&r->b, 0, PIO_DTYPE_F32, ROWS, 2 * COLS);
    pk_tensor left = pk_tensor_cols(&wide, 0, COLS), right = pk_tensor_cols(&wide, COLS, COLS);
    pk_tensor bf16 = pk_tensor_in(&r->a, 0, PIO_DTYPE_BF16, ROWS, COLS);
    return put_input(r, &in, err) &&
           rank_ok(r, pk_comm_all_reduce(r->comm, &out, &in, err), err, "all_reduce") &&
           get_floats(r, &out, got, err) &&
           rank_expect(r, "all_reduce out of place", got, summed, N) &&
           rank_ok(r, pk_comm_all_reduce(r->comm, &in, &in, err), err, "all_reduce") &&
           get_floats(r, &in, got, err) && rank_expect(r, "all_reduce in place", got, summed, N) &&
           put_input(r, &left, err) &&
           rank_ok(r, pk_comm_all_reduce(r->comm, &right, &left, err), err, "all_reduce") &&
           get_floats(r, &right, got, err) &&
           rank_expect(r, "all_reduce of strided views", got, summed, N) &&
           put_input(r, &bf16, err) &&
           rank_ok(r, pk_comm_all_reduce(r->comm, &bf16, &bf16, err), err, "all_reduce") &&
           get_floats(r, &bf16, got, err) && rank_expect(r, "all_reduce bf16", got, summed, N);
}

static int check_gathers_and_broadcast(rank_run *r, pio_error *err)
{
    float got[4 * N * 2];
    int64_t s = r->size;
    pk_tensor in = pk_tensor_in(&r->a, 0, PIO_DTYPE_F32, ROWS, COLS);
    pk_tensor rows = pk_tensor_in(&r->b, 0, PIO_DTYPE_F32, s * ROWS, COLS);
    pk_tensor cols = pk_tensor_in(&r->b, 0, PIO_DTYPE_F32, ROWS, s * COLS);
    /* In place: the input is this rank's own block of the output. */
    pk_tensor own = pk_tensor_rows(&rows, r->rank * ROWS, ROWS);
    return put_input(r, &in, err) &&
           rank_ok(r, pk_comm_all_gather(r->comm, &rows, &in, PK_COMM_ROWS, err), err,
                   "all_gather rows") &&
           get_floats(r, &rows, got, err) &&
           rank_expect(r, "all_gather rows", got, gathered_rows, s * N) &&
           rank_ok(r, pk_comm_all_gather(r->comm, &cols, &in, PK_COMM_COLS, err), err,
                   "all_gather cols") &&
           get_floats(r, &cols, got, err) &&
           rank_expect(r, "all_gather cols", got, gathered_cols, s * N) &&
           put_input(r, &own, err) &&
           rank_ok(r, pk_comm_all_gather(r->comm, &rows, &own, PK_COMM_ROWS, err), err,
                   "all_gather in place") &&
           get_floats(r, &rows, got, err) &&
           rank_expect(r, "all_gather in place", got, gathered_rows, s * N) &&
           put_input(r, &in, err) &&
           rank_ok(r, pk_comm_broadcast(r->comm, &in, r->size - 1, err), err, "broadcast") &&
           get_floats(r, &in, got, err) &&
           rank_expect(r, "broadcast from the last rank", got, broadcast_value, N) &&
           rank_ok(r, pk_comm_barrier(r->comm, err), err, "barrier");
}

static void *run_collectives(void *arg)
{
    rank_run *r = arg;
    pio_error err;
    pio_error_clear(&err);
    size_t bytes = (size_t)(r->size * 2 * N) * sizeof(float);
    if (r->create_here &&
        !rank_ok(r, pk_comm_create(r->group, r->ctx, r->rank, &r->comm, &err), &err,
                 "pk_comm_create"))
        return NULL;
    if (rank_ok(r, pk_buffer_alloc(r->ctx, bytes, &r->a, &err), &err, "alloc") &&
        rank_ok(r, pk_buffer_alloc(r->ctx, bytes, &r->b, &err), &err, "alloc") &&
        strcmp(pk_comm_backend_name(r->comm), "nccl") != 0)
        rank_failed(r, "the communicator is %s, not nccl", pk_comm_backend_name(r->comm));
    if (r->failure[0] == '\0' && check_all_reduce(r, &err))
        check_gathers_and_broadcast(r, &err);
    return NULL;
}

/* A group of n ranks on GPUs 0..n-1 runs every check, one thread per rank; per_thread: each
 * rank makes its communicator in its thread, else pk_comm_create_all from this one. */
static void check_group(int n, int per_thread)
{
    rank_run runs[4];
    pthread_t threads[4];
    pio_error err;
    memset(runs, 0, sizeof runs);
    pk_comm_group *group = NULL;
    assert_int_equal(pk_comm_group_create(PK_DEVICE_CUDA, n, NULL, &group, &err), PIO_OK);
    pk_context *ctxs[4];
    pk_comm *comms[4];
    for (int r = 0; r < n; r++) {
        pk_context_options options = {.device_index = r};
        if (pk_context_create(PK_DEVICE_CUDA, &options, &ctxs[r], &err) != PIO_OK)
            fail_msg("cuda:%d: %s", r, err.message);
        runs[r] = (rank_run){.ctx = ctxs[r], .group = group, .rank = r, .size = n,
                             .create_here = per_thread};
    }
    if (!per_thread) {
        if (pk_comm_create_all(group, ctxs, comms, &err) != PIO_OK)
            fail_msg("pk_comm_create_all: %s", err.message);
        for (int r = 0; r < n; r++)
            runs[r].comm = comms[r];
    }
    for (int r = 0; r < n; r++)
        assert_int_equal(pthread_create(&threads[r], NULL, run_collectives, &runs[r]), 0);
    for (int r = 0; r < n; r++)
        pthread_join(threads[r], NULL);
    pk_comm_group_release(group);
    for (int r = 0; r < n; r++) {
        pk_buffer_free(runs[r].ctx, &runs[r].a);
        pk_buffer_free(runs[r].ctx, &runs[r].b);
        pk_comm_destroy(runs[r].comm);
        pk_context_destroy(runs[r].ctx);
    }
    for (int r = 0; r < n; r++)
        if (runs[r].failure[0] != '\0')
            fail_msg("%s", runs[r].failure);
    print_message("nccl, %d rank%s (%s): all-reduce f32/strided/bf16, all-gather rows/cols/in "
                  "place, broadcast, barrier: bit-exact\n", n, n == 1 ? "" : "s",
                  per_thread ? "ncclCommInitRank from each rank's thread"
                             : "pk_comm_create_all from one thread");
}

static void nccl_collectives_with_one_rank(void **state)
{
    (void)state;
    need_gpus(1, "NCCL with one rank");
    need_nccl("NCCL with one rank");
    check_group(1, 0);
}

static void nccl_collectives_with_two_ranks(void **state)
{
    (void)state;
    need_gpus(2, "NCCL with 2 ranks");
    need_nccl("NCCL with 2 ranks");
    check_group(2, 1);
}

static void nccl_collectives_with_four_ranks(void **state)
{
    (void)state;
    need_gpus(4, "NCCL with 4 ranks");
    need_nccl("NCCL with 4 ranks");
    check_group(4, 0);
}

/* After pk_comm_abort every later collective is cancelled; the communicator is still freed. */
static void nccl_abort_cancels_later_collectives(void **state)
{
    (void)state;
    need_gpus(1, "NCCL abort");
    need_nccl("NCCL abort");
    pio_error err;
    pk_context *ctx = NULL;
    pk_comm_group *group = NULL;
    pk_comm *comm = NULL;
    pk_buffer buf = {0};
    assert_int_equal(pk_context_create(PK_DEVICE_CUDA, NULL, &ctx, &err), PIO_OK);
    assert_int_equal(pk_comm_group_create(PK_DEVICE_CUDA, 1, NULL, &group, &err), PIO_OK);
    assert_int_equal(pk_comm_create(group, ctx, 0, &comm, &err), PIO_OK);
    assert_int_equal(pk_buffer_alloc(ctx, N * sizeof(float), &buf, &err), PIO_OK);
    pk_tensor t = pk_tensor_in(&buf, 0, PIO_DTYPE_F32, ROWS, COLS);
    assert_int_equal(pk_comm_all_reduce(comm, &t, &t, &err), PIO_OK);
    pk_comm_abort(comm);
    assert_int_equal(pk_comm_all_reduce(comm, &t, &t, &err), PIO_ERR_CANCELLED);
    assert_non_null(strstr(err.message, "cancelled"));
    assert_int_equal(pk_comm_barrier(comm, &err), PIO_ERR_CANCELLED);
    pk_buffer_free(ctx, &buf);
    pk_comm_destroy(comm);
    pk_comm_group_release(group);
    pk_context_destroy(ctx);
}

/* ------------------------------------------------------------------------------------------ */
/* pk_moe_experts_slice                                                                       */
/* ------------------------------------------------------------------------------------------ */

enum { MT = 7, MH = 72, MF = 40, ME = 12, MK = 3 };

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float uniform(float lo, float hi)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) * 0x1.0p-24);
}

/* The inputs of one experts call on the host: weights BF16, the rest F32/I32. */
typedef struct moe_inputs {
    uint16_t gate_up[ME * 2 * MF * MH], down[ME * MH * MF];
    float x[MT * MH], weights[MT * MK], out[MT * MH];
    int32_t ids[MT * MK];
} moe_inputs;

static void fill_moe_inputs(moe_inputs *in)
{
    for (size_t i = 0; i < sizeof in->gate_up / sizeof *in->gate_up; i++)
        in->gate_up[i] = pio_f32_to_bf16(uniform(-0.2f, 0.2f));
    for (size_t i = 0; i < sizeof in->down / sizeof *in->down; i++)
        in->down[i] = pio_f32_to_bf16(uniform(-0.2f, 0.2f));
    for (int i = 0; i < MT * MH; i++) {
        in->x[i] = uniform(-1.0f, 1.0f);
        in->out[i] = uniform(-1.0f, 1.0f);
    }
    for (int t = 0; t < MT; t++) /* k distinct experts per token */
        for (int j = 0; j < MK; j++) {
            in->ids[t * MK + j] = (int32_t)((t * 5 + j * 4) % ME);
            in->weights[t * MK + j] = uniform(0.0f, 1.0f);
        }
}

/* The call's tensors on one context (host memory for the CPU's). */
typedef struct moe_tensors {
    pk_tensor gate_up, down, x, ids, weights, out;
    pk_buffer buffers[6];
} moe_tensors;

static void place_moe_inputs(pk_context *ctx, moe_inputs *in, moe_tensors *m)
{
    pk_tensor host[6] = {
        pk_tensor_host(in->gate_up, PIO_DTYPE_BF16, ME * 2 * MF, MH),
        pk_tensor_host(in->down, PIO_DTYPE_BF16, ME * MH, MF),
        pk_tensor_host(in->x, PIO_DTYPE_F32, MT, MH),
        pk_tensor_host(in->ids, PIO_DTYPE_I32, MT, MK),
        pk_tensor_host(in->weights, PIO_DTYPE_F32, MT, MK),
        pk_tensor_host(in->out, PIO_DTYPE_F32, MT, MH),
    };
    pk_tensor *dst[6] = {&m->gate_up, &m->down, &m->x, &m->ids, &m->weights, &m->out};
    pio_error err;
    for (int i = 0; i < 6; i++)
        if (to_device(ctx, &host[i], &m->buffers[i], dst[i], &err) != PIO_OK)
            fail_msg("placing the experts' inputs: %s", err.message);
}

static void free_moe_tensors(pk_context *ctx, moe_tensors *m)
{
    for (int i = 0; i < 6; i++)
        pk_buffer_free(ctx, &m->buffers[i]);
}

/* Experts [first, first + n) of m on ctx: the slice's rows of the packed weights. */
static pio_status run_slice(pk_context *ctx, const moe_tensors *m, int first, int n,
                            int accumulate, pio_error *err)
{
    pk_tensor gate_up = pk_tensor_rows(&m->gate_up, (int64_t)first * 2 * MF, (int64_t)n * 2 * MF);
    pk_tensor down = pk_tensor_rows(&m->down, (int64_t)first * MH, (int64_t)n * MH);
    return pk_moe_experts_slice(ctx, &m->out, &m->x, &gate_up, &down, &m->ids, &m->weights, ME,
                                first, n, accumulate, err);
}

static void download_out(pk_context *ctx, const moe_tensors *m, float *out)
{
    pio_error err;
    pk_tensor host = pk_tensor_host(out, PIO_DTYPE_F32, MT, MH);
    if (to_host(ctx, &host, &m->out, &err) != PIO_OK)
        fail_msg("pk_moe_experts_slice: %s", err.message);
}

static void moe_experts_slice_matches_the_cpu(void **state)
{
    (void)state;
    need_gpus(1, "pk_moe_experts_slice on CUDA");
    static const int slices[][3] = {{0, ME, 1}, {0, 6, 0}, {6, 6, 1}, {3, 3, 0}, {11, 1, 0},
                                    {0, 4, 1}};
    moe_inputs *in = malloc(sizeof *in);
    fill_moe_inputs(in);
    pk_context *cpu = NULL, *gpu = NULL;
    pio_error err;
    assert_int_equal(pk_context_create(PK_DEVICE_CPU, NULL, &cpu, &err), PIO_OK);
    assert_int_equal(pk_context_create(PK_DEVICE_CUDA, NULL, &gpu, &err), PIO_OK);
    float want[MT * MH], got[MT * MH], half[MT * MH];
    for (size_t s = 0; s < sizeof slices / sizeof *slices; s++) {
        moe_tensors c, g;
        place_moe_inputs(cpu, in, &c);
        place_moe_inputs(gpu, in, &g);
        int first = slices[s][0], n = slices[s][1], acc = slices[s][2];
        if (run_slice(cpu, &c, first, n, acc, &err) != PIO_OK ||
            run_slice(gpu, &g, first, n, acc, &err) != PIO_OK)
            fail_msg("experts [%d, %d): %s", first, first + n, err.message);
        download_out(cpu, &c, want);
        download_out(gpu, &g, got);
        double e = relative_error(got, want, MT * MH);
        print_message("pk_moe_experts_slice [%d, %d) of %d, accumulate %d: cuda vs cpu %.3g\n",
                      first, first + n, ME, acc, e);
        assert_true(e <= TOL_F32);
        free_moe_tensors(cpu, &c);
        free_moe_tensors(gpu, &g);
    }
    /* Two halves add up to the whole call: the first accumulated into out, the second written in
     * its place (accumulate 0) and added on the host. */
    moe_tensors g;
    place_moe_inputs(gpu, in, &g);
    assert_int_equal(run_slice(gpu, &g, 0, ME, 1, &err), PIO_OK);
    download_out(gpu, &g, want);
    free_moe_tensors(gpu, &g);
    place_moe_inputs(gpu, in, &g);
    assert_int_equal(run_slice(gpu, &g, 0, ME / 2, 1, &err), PIO_OK);
    download_out(gpu, &g, got);
    assert_int_equal(run_slice(gpu, &g, ME / 2, ME / 2, 0, &err), PIO_OK);
    download_out(gpu, &g, half);
    free_moe_tensors(gpu, &g);
    for (int i = 0; i < MT * MH; i++)
        got[i] += half[i];
    double e = relative_error(got, want, MT * MH);
    print_message("pk_moe_experts_slice: two halves vs the whole call %.3g\n", e);
    assert_true(e <= SAME_PATH_TOLERANCE);
    pk_context_destroy(gpu);
    pk_context_destroy(cpu);
    free(in);
}

/* ------------------------------------------------------------------------------------------ */
/* The fixture models                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* Contexts made after this call run every matmul in fp32 through the GEMV kernel (on), or
 * the default way: cuBLASLt on bf16-rounded x above two rows (off). */
static void exact_fp32(int on)
{
    if (on)
        setenv("PIO_CUDA_GEMV_MAX_M", "1000000000", 1);
    else
        unsetenv("PIO_CUDA_GEMV_MAX_M");
}

#define F32_NO_GRAPHS "kv_cache: {dtype: f32}\nruntime: {cuda_graphs: false}\n"

/* Logits of every position of every fixture sequence. The caller frees each. */
static void logits_of_every_sequence(const char *yaml, float **out)
{
    session s;
    open_ok(&s, yaml, ref.dir, NULL);
    for (size_t q = 0; q < ref.n_seqs; q++)
        out[q] = infer_all(&s, ref.seqs[q], ref.seq_len[q]);
    close_session(&s);
}

static void free_logits(float **logits)
{
    for (size_t q = 0; q < ref.n_seqs; q++)
        free(logits[q]);
}

/* The worst relative error of a's rows against b's (or the reference's when b is NULL);
 * *bit_exact tells whether every value is the same. */
static double worst_error(float **a, float **b, int *bit_exact)
{
    double worst = 0.0;
    int exact = 1;
    size_t v = ref.logits.cols;
    for (size_t q = 0; q < ref.n_seqs; q++)
        for (size_t p = 0; p < ref.seq_len[q]; p++) {
            const float *want = b != NULL ? b[q] + p * v : reference_row(q, p);
            double e = relative_error(a[q] + p * v, want, v);
            worst = e > worst ? e : worst;
            exact = exact && memcmp(a[q] + p * v, want, v * sizeof(float)) == 0;
        }
    if (bit_exact != NULL)
        *bit_exact = exact;
    return worst;
}

/* Greedy decoding of every fixture sequence at once (one prefill batch, then one batch per
 * step): the new tokens, sequence by sequence, greedy_new_tokens each. The caller frees. */
static int32_t *greedy_tokens(const char *yaml)
{
    session s;
    open_ok(&s, yaml, ref.dir, NULL);
    size_t n_new = (size_t)json_integer_value(json_object_get(ref.json, "greedy_new_tokens"));
    size_t vocab = s.model->vocab_size, n_seqs = ref.n_seqs, total = 0;
    int32_t seq_ids[MAX_SEQS], tokens[64], owners[64], rows[MAX_SEQS], next[MAX_SEQS];
    int32_t *out = calloc(n_seqs * n_new, sizeof *out);
    float *logits = malloc(n_seqs * vocab * sizeof *logits);
    pio_error err;
    for (size_t q = 0; q < n_seqs; q++) {
        assert_int_equal(s.model->seq_open(s.model->self, &seq_ids[q], &err), PIO_OK);
        for (size_t p = 0; p < ref.seq_len[q]; p++) {
            tokens[total] = ref.seqs[q][p];
            owners[total++] = seq_ids[q];
        }
        rows[q] = (int32_t)total - 1;
    }
    pio_textgen_batch batch = {.struct_size = sizeof batch, .n_tokens = total, .tokens = tokens,
                               .seq_ids = owners, .n_logits_rows = n_seqs, .logits_rows = rows,
                               .logits = logits};
    for (size_t step = 0; step < n_new; step++) {
        if (s.model->forward(s.model->self, &batch, &err) != PIO_OK)
            fail_msg("forward: %s", err.message);
        for (size_t q = 0; q < n_seqs; q++) {
            next[q] = argmax(logits + q * vocab, vocab);
            out[q * n_new + step] = next[q];
            rows[q] = (int32_t)q;
        }
        batch = (pio_textgen_batch){.struct_size = sizeof batch, .n_tokens = n_seqs,
                                    .tokens = next, .seq_ids = seq_ids, .n_logits_rows = n_seqs,
                                    .logits_rows = rows, .logits = logits};
    }
    free(logits);
    close_session(&s);
    return out;
}

/* Whether tokens are the reference's greedy_continuations_f32. */
static int greedy_equals_reference(const int32_t *tokens)
{
    const json_t *expected = json_object_get(ref.json, "greedy_continuations_f32");
    size_t n_new = (size_t)json_integer_value(json_object_get(ref.json, "greedy_new_tokens"));
    for (size_t q = 0; q < ref.n_seqs; q++)
        for (size_t j = 0; j < n_new; j++)
            if (tokens[q * n_new + j] !=
                json_integer_value(json_array_get(json_array_get(expected, q), j)))
                return 0;
    return 1;
}

static void expect_same_greedy(const int32_t *a, const int32_t *b, const char *what)
{
    size_t n_new = (size_t)json_integer_value(json_object_get(ref.json, "greedy_new_tokens"));
    for (size_t i = 0; i < ref.n_seqs * n_new; i++)
        if (a[i] != b[i])
            fail_msg("%s: sequence %zu, new token %zu: %d against %d", what, i / n_new,
                     i % n_new, a[i], b[i]);
}

/* The backend get_model_info reports for a session of `yaml`. */
static void expect_backend(const char *yaml, const char *backend)
{
    session s;
    open_ok(&s, yaml, ref.dir, NULL);
    pio_model_info info = {.struct_size = sizeof info};
    assert_int_equal(s.vt->get_model_info(s.inst, &info), PIO_OK);
    assert_string_equal(info.backend, backend);
    close_session(&s);
}

/* (a) One rank through NCCL against the plain CUDA path. */
static void tp_1_through_nccl_equals_the_plain_path(void **state)
{
    (void)state;
    need_gpus(1, "tp = 1 through NCCL");
    need_nccl("tp = 1 through NCCL");
    const char *forced = F32_NO_GRAPHS "parallel: {tensor_parallel_size: 1, force_ranks: true}\n";
    float *plain[MAX_SEQS], *graphs[MAX_SEQS], *ranks[MAX_SEQS];
    logits_of_every_sequence(F32_NO_GRAPHS, plain);
    logits_of_every_sequence(F32_CACHE, graphs);
    logits_of_every_sequence(forced, ranks);
    int exact = 0, exact_graphs = 0;
    double e = worst_error(ranks, plain, &exact);
    double e_graphs = worst_error(ranks, graphs, &exact_graphs);
    print_message("tp = 1 through NCCL vs the plain CUDA path: max relative logits error %.3g "
                  "(%s); vs the plain path with decode graphs %.3g (%s)\n", e,
                  exact ? "bit-exact" : "not bit-exact", e_graphs,
                  exact_graphs ? "bit-exact" : "not bit-exact");
    free_logits(plain);
    free_logits(graphs);
    free_logits(ranks);
    assert_true(e <= SAME_PATH_TOLERANCE);
    assert_true(e_graphs <= SAME_PATH_TOLERANCE);
    int32_t *plain_greedy = greedy_tokens(F32_NO_GRAPHS), *ranks_greedy = greedy_tokens(forced);
    expect_same_greedy(ranks_greedy, plain_greedy, "greedy, tp = 1 through NCCL vs plain");
    free(plain_greedy);
    free(ranks_greedy);
    expect_backend(forced, "cuda");
}

/* Logits of tp = n against tp = 1 on CUDA (both in the current matmul mode), printed with
 * `label`; returns the worst relative error. */
static double logits_against_tp_1(int n, const char *label)
{
    char yaml[160];
    float *base[MAX_SEQS], *split[MAX_SEQS];
    tp_yaml(yaml, sizeof yaml, 1, "");
    logits_of_every_sequence(yaml, base);
    tp_yaml(yaml, sizeof yaml, n, "");
    logits_of_every_sequence(yaml, split);
    double e = worst_error(split, base, NULL);
    print_message("tp = %d on CUDA, %s: max relative logits error against tp = 1 on CUDA %.3g; "
                  "against the reference %.3g (tp = 1: %.3g)\n", n, label, e,
                  worst_error(split, NULL, NULL), worst_error(base, NULL, NULL));
    free_logits(base);
    free_logits(split);
    return e;
}

/* (b) tp = n on n GPUs against tp = 1 on CUDA: logits and greedy continuations. */
static void check_tp_against_tp_1(int n, int default_mode_too)
{
    char what[64], yaml[160];
    snprintf(what, sizeof what, "tp = %d on CUDA", n);
    need_gpus(n, what);
    need_nccl(what);
    exact_fp32(1);
    double e = logits_against_tp_1(n, "exact fp32");
    tp_yaml(yaml, sizeof yaml, 1, "");
    int32_t *base_greedy = greedy_tokens(yaml);
    tp_yaml(yaml, sizeof yaml, n, "");
    int32_t *split_greedy = greedy_tokens(yaml);
    exact_fp32(0);
    print_message("tp = %d on CUDA, exact fp32: greedy continuations %s the reference's\n", n,
                  greedy_equals_reference(split_greedy) ? "equal" : "differ from");
    assert_true(e <= TP_TOLERANCE);
    expect_same_greedy(split_greedy, base_greedy, what);
    free(base_greedy);
    free(split_greedy);
    if (default_mode_too)
        assert_true(logits_against_tp_1(n, "default matmuls") <= TP_TOLERANCE_BF16_X);
}

static void dense_tp_2_equals_tp_1_on_cuda(void **state)
{
    (void)state;
    check_tp_against_tp_1(2, 1);
}

static void dense_tp_4_equals_tp_1_on_cuda(void **state)
{
    (void)state;
    check_tp_against_tp_1(4, 1);
}

/* The MoE only in the exact mode: bf16 rounding of x can flip a router near-tie, which moves
 * a token's logits by far more than any bar. */
static void moe_tp_2_equals_tp_1_on_cuda(void **state)
{
    (void)state;
    check_tp_against_tp_1(2, 0);
}

static void moe_tp_4_equals_tp_1_on_cuda(void **state)
{
    (void)state;
    check_tp_against_tp_1(4, 0);
}

/* parallel.devices maps ranks to GPUs: [1, 0] gives [0, 1]'s logits. */
static void tp_2_on_gpus_1_0_equals_0_1(void **state)
{
    (void)state;
    need_gpus(2, "parallel.devices [1, 0]");
    need_nccl("parallel.devices [1, 0]");
    exact_fp32(1);
    float *forward[MAX_SEQS], *reversed[MAX_SEQS];
    logits_of_every_sequence("kv_cache: {dtype: f32}\n"
                             "parallel: {tensor_parallel_size: 2, devices: [0, 1]}\n", forward);
    logits_of_every_sequence("kv_cache: {dtype: f32}\n"
                             "parallel: {tensor_parallel_size: 2, devices: [1, 0]}\n", reversed);
    int exact = 0;
    double e = worst_error(reversed, forward, &exact);
    exact_fp32(0);
    print_message("tp = 2 on GPUs [1, 0] vs [0, 1]: %.3g (%s)\n", e,
                  exact ? "bit-exact" : "not bit-exact");
    free_logits(forward);
    free_logits(reversed);
    assert_true(e <= TP_TOLERANCE);
}

static void batched_forward_at_tp_2_equals_one_sequence_at_a_time(void **state)
{
    (void)state;
    need_gpus(2, "a batched forward at tp = 2");
    need_nccl("a batched forward at tp = 2");
    exact_fp32(1);
    check_batched_forward_equals_one_sequence_at_a_time(
        "kv_cache: {dtype: f32, block_size: 4, max_tokens: 64}\n"
        "parallel: {tensor_parallel_size: 2}\n", BATCHED_TOLERANCE);
    exact_fp32(0);
}

/* A GPU the machine does not have is refused, naming the count. */
static void a_missing_gpu_is_a_clear_error(void **state)
{
    (void)state;
    need_gpus(1, "the missing-GPU refusal");
    char yaml[160], message[160];
    snprintf(yaml, sizeof yaml, "parallel: {tensor_parallel_size: 2, devices: [0, %d]}\n",
             gpu_count);
    session s;
    assert_int_equal(open_session(&s, yaml, ref.dir, NULL), PIO_ERR_CONFIG);
    snprintf(message, sizeof message, "parallel.devices: rank 1 would run on cuda:%d, but the "
             "machine has %d CUDA device", gpu_count, gpu_count);
    expect_error(&s, message);
    close_session(&s);
}

/* ------------------------------------------------------------------------------------------ */
/* Setup                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static int file_exists(const char *path)
{
    return access(path, R_OK) == 0;
}

/* The folder of this program. */
static void program_dir(char *out, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", out, size - 1);
    out[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(out, '/');
    if (slash != NULL)
        *slash = '\0';
}

/* The first of `tries` (relative to `base` when not absolute) holding `probe`; 0 when found. */
static int find_dir(char *out, size_t size, const char *base, const char *const *tries,
                    size_t n_tries, const char *probe)
{
    for (size_t i = 0; i < n_tries; i++) {
        char path[PATH_MAX + 256];
        if (tries[i][0] == '/' || base == NULL)
            snprintf(out, size, "%s", tries[i]);
        else
            snprintf(out, size, "%s/%s", base, tries[i]);
        snprintf(path, sizeof path, "%s/%s", out, probe);
        if (file_exists(path))
            return 0;
    }
    out[0] = '\0';
    return -1;
}

static void find_plugins_and_fixtures(void)
{
    char exe[PATH_MAX];
    program_dir(exe, sizeof exe);
    const char *env = getenv("PIO_TEST_PLUGIN_DIR");
    const char *plugin_tries[] = {env != NULL ? env : "../plugins", "../plugins",
                                  "../../plugins"};
    find_dir(plugin_dir, sizeof plugin_dir, exe, plugin_tries, 3, "qwen3_4b_instruct_2507.so");
    /* Above the bundle (build-gpu/bundle/tests) or the build (build-gpu/tests/gpu). */
    env = getenv("PIO_TEST_FIXTURE_DIR");
    const char *cwd_tries[] = {env != NULL ? env : "tests/fixtures/models",
                               "tests/fixtures/models"};
    const char *exe_tries[] = {"../../../tests/fixtures/models",
                               "../../../../tests/fixtures/models"};
    if (find_dir(fixture_dir, sizeof fixture_dir, NULL, cwd_tries, 2, "qwen3_tiny/config.json"))
        find_dir(fixture_dir, sizeof fixture_dir, exe, exe_tries, 2, "qwen3_tiny/config.json");
}

static int use_model(const char *plugin, const char *fixture)
{
    snprintf(plugin_path, sizeof plugin_path, "%s/%s.so", plugin_dir, plugin);
    snprintf(fixture_path, sizeof fixture_path, "%s/%s", fixture_dir, fixture);
    plugin_so = plugin_path;
    if (!file_exists(plugin_path) || reference_load(fixture_path) != 0) {
        print_error("cannot find %s or the fixture %s (run from the repository root, or set "
                    "PIO_TEST_PLUGIN_DIR / PIO_TEST_FIXTURE_DIR)\n", plugin_path,
                    fixture_path);
        return -1;
    }
    return 0;
}

static int use_dense_model(void **state)
{
    (void)state;
    return use_model("qwen3_4b_instruct_2507", "qwen3_tiny");
}

static int use_moe_model(void **state)
{
    (void)state;
    return use_model("qwen3_coder_30b", "qwen3_moe_tiny");
}

int main(void)
{
    const char *env = getenv("PIO_GPU_TEST_SANITIZER");
    sanitizer = env != NULL && strcmp(env, "1") == 0;
    gpu_count = pk_comm_device_count(PK_DEVICE_CUDA);
    find_plugins_and_fixtures();
    printf("tensor parallelism on CUDA: %d GPU%s visible; plugins in %s, fixtures in %s\n",
           gpu_count, gpu_count == 1 ? "" : "s", plugin_dir[0] ? plugin_dir : "(not found)",
           fixture_dir[0] ? fixture_dir : "(not found)");
    const struct CMUnitTest comm[] = {
        cmocka_unit_test(nccl_collectives_with_one_rank),
        cmocka_unit_test(nccl_abort_cancels_later_collectives),
        cmocka_unit_test(nccl_collectives_with_two_ranks),
        cmocka_unit_test(nccl_collectives_with_four_ranks),
        cmocka_unit_test(moe_experts_slice_matches_the_cpu),
    };
    const struct CMUnitTest dense[] = {
        cmocka_unit_test(tp_1_through_nccl_equals_the_plain_path),
        cmocka_unit_test(dense_tp_2_equals_tp_1_on_cuda),
        cmocka_unit_test(dense_tp_4_equals_tp_1_on_cuda),
        cmocka_unit_test(tp_2_on_gpus_1_0_equals_0_1),
        cmocka_unit_test(batched_forward_at_tp_2_equals_one_sequence_at_a_time),
        cmocka_unit_test(a_missing_gpu_is_a_clear_error),
    };
    const struct CMUnitTest moe[] = {
        cmocka_unit_test(tp_1_through_nccl_equals_the_plain_path),
        cmocka_unit_test(moe_tp_2_equals_tp_1_on_cuda),
        cmocka_unit_test(moe_tp_4_equals_tp_1_on_cuda),
        cmocka_unit_test(batched_forward_at_tp_2_equals_one_sequence_at_a_time),
    };
    int failed = cmocka_run_group_tests_name("nccl communicator and expert slices", comm, NULL,
                                             NULL);
    failed += cmocka_run_group_tests_name("dense: qwen3_tiny", dense, use_dense_model,
                                          reference_group_teardown);
    return failed + cmocka_run_group_tests_name("moe: qwen3_moe_tiny", moe, use_moe_model,
                                                reference_group_teardown);
}
