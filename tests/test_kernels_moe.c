/*
 * The mixture-of-experts ops (pk_moe_topk_softmax, pk_moe_experts, and the two in one call,
 * pk_moe_topk_experts) of the CPU backend against naive double-precision references: random
 * inputs, exact ties in the router, top-k of 1 and of every expert, BF16 and F32 expert
 * weights, the expert slices of expert parallelism (pk_moe_experts_slice) summing to the whole,
 * and a backend without the ops.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"

#define T 7   /* tokens */
#define E 6   /* experts */
#define H 20  /* hidden */
#define F 12  /* expert inner width */

static float uniform(unsigned *state)
{
    *state = *state * 1103515245u + 12345u;
    return (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void fill(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        x[i] = uniform(&seed);
}

static pk_context *cpu(void)
{
    pk_context *ctx = NULL;
    pk_context_options options = {.n_threads = 3};
    assert_int_equal(pk_context_create(PK_DEVICE_CPU, &options, &ctx, NULL), PIO_OK);
    return ctx;
}

/* The reference selection: descending probability, the lower index first among equals. */
static void naive_route(const float *logits, int k, int normalize, int32_t *ids, float *w)
{
    double p[E], max = logits[0], sum = 0.0;
    int taken[E] = {0};
    for (int e = 1; e < E; e++)
        max = logits[e] > max ? logits[e] : max;
    for (int e = 0; e < E; e++)
        sum += p[e] = exp((double)logits[e] - max);
    double chosen = 0.0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || p[e] > p[best]))
                best = e;
        taken[best] = 1;
        ids[j] = best;
        w[j] = (float)(p[best] / sum);
        chosen += p[best] / sum;
    }
    for (int j = 0; j < k && normalize; j++)
        w[j] = (float)(w[j] / chosen);
}

static void route_matches(int k, int normalize, int with_ties)
{
    pk_context *ctx = cpu();
    float logits[T * E], weights[T * E], want_w[E];
    int32_t ids[T * E], want_ids[E];
    fill(logits, T * E, 11u + (unsigned)k);
    if (with_ties)
        for (int t = 0; t < T; t++) { /* 1 ties 4 everywhere; row 0: every expert equal */
            logits[t * E + 4] = logits[t * E + 1];
            for (int e = 0; t == 0 && e < E; e++)
                logits[e] = 0.5f;
        }
    pk_tensor tl = pk_tensor_host(logits, PIO_DTYPE_F32, T, E);
    pk_tensor ti = pk_tensor_host(ids, PIO_DTYPE_I32, T, k);
    pk_tensor tw = pk_tensor_host(weights, PIO_DTYPE_F32, T, k);
    assert_int_equal(pk_moe_topk_softmax(ctx, &ti, &tw, &tl, normalize, NULL), PIO_OK);
    for (int t = 0; t < T; t++) {
        naive_route(logits + t * E, k, normalize, want_ids, want_w);
        for (int j = 0; j < k; j++) {
            assert_int_equal(ids[t * k + j], want_ids[j]);
            assert_float_equal(weights[t * k + j], want_w[j], 1e-6);
        }
    }
    pk_context_destroy(ctx);
}

static void routing_equals_the_naive_selection(void **state)
{
    (void)state;
    for (int k = 1; k <= E; k++) {
        route_matches(k, 1, 0);
        route_matches(k, 0, 0);
        route_matches(k, 1, 1);
    }
}

/* out[t] += Σ_j w · down(silu(gate x) · up x), in double. */
static void naive_experts(double *out, const float *x, const float *gate_up, const float *down,
                          const int32_t *ids, const float *w, int k)
{
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < k; j++) {
            int e = ids[t * k + j];
            double act[F];
            for (int c = 0; c < F; c++) {
                double g = 0.0, u = 0.0;
                for (int i = 0; i < H; i++) {
                    g += (double)x[t * H + i] * gate_up[((size_t)e * 2 * F + c) * H + i];
                    u += (double)x[t * H + i] * gate_up[((size_t)e * 2 * F + F + c) * H + i];
                }
                act[c] = g / (1.0 + exp(-g)) * u;
            }
            for (int r = 0; r < H; r++) {
                double y = 0.0;
                for (int c = 0; c < F; c++)
                    y += act[c] * down[((size_t)e * H + r) * F + c];
                out[t * H + r] += w[t * k + j] * y;
            }
        }
    }
}

static void experts_match(int k, pio_dtype dtype)
{
    pk_context *ctx = cpu();
    static float x[T * H], gate_up[E * 2 * F * H], down[E * H * F], out[T * H], w[T * E];
    static uint16_t gate_up_bf16[E * 2 * F * H], down_bf16[E * H * F];
    double want[T * H];
    int32_t ids[T * E];
    fill(x, T * H, 1);
    fill(gate_up, E * 2 * F * H, 2);
    fill(down, E * H * F, 3);
    fill(out, T * H, 4);
    fill(w, T * E, 5);
    for (size_t i = 0; dtype == PIO_DTYPE_BF16 && i < E * 2 * F * H; i++)
        gate_up[i] = pio_bf16_to_f32(gate_up_bf16[i] = pio_f32_to_bf16(gate_up[i]));
    for (size_t i = 0; dtype == PIO_DTYPE_BF16 && i < E * H * F; i++)
        down[i] = pio_bf16_to_f32(down_bf16[i] = pio_f32_to_bf16(down[i]));
    for (int t = 0; t < T; t++) /* distinct experts per token, several tokens per expert */
        for (int j = 0; j < k; j++)
            ids[t * k + j] = (t + j) % E;
    for (int i = 0; i < T * H; i++)
        want[i] = out[i];
    naive_experts(want, x, gate_up, down, ids, w, k);
    int bf16 = dtype == PIO_DTYPE_BF16;
    pk_tensor to = pk_tensor_host(out, PIO_DTYPE_F32, T, H);
    pk_tensor tx = pk_tensor_host(x, PIO_DTYPE_F32, T, H);
    pk_tensor tgu = pk_tensor_host(bf16 ? (void *)gate_up_bf16 : gate_up, dtype, E * 2 * F, H);
    pk_tensor td = pk_tensor_host(bf16 ? (void *)down_bf16 : down, dtype, E * H, F);
    pk_tensor ti = pk_tensor_host(ids, PIO_DTYPE_I32, T, k);
    pk_tensor tw = pk_tensor_host(w, PIO_DTYPE_F32, T, k);
    assert_int_equal(pk_moe_experts(ctx, &to, &tx, &tgu, &td, &ti, &tw, E, NULL), PIO_OK);
    for (int i = 0; i < T * H; i++)
        assert_float_equal(out[i], want[i], 1e-4 * (1.0 + fabs(want[i])));
    pk_context_destroy(ctx);
}

static void experts_equal_the_naive_sum(void **state)
{
    (void)state;
    for (int k = 1; k <= E; k++) {
        experts_match(k, PIO_DTYPE_F32);
        experts_match(k, PIO_DTYPE_BF16);
    }
}

/* A token's result does not depend on the other tokens of the batch (grouping is exact). */
static void one_token_alone_equals_it_in_a_batch(void **state)
{
    (void)state;
    pk_context *ctx = cpu();
    static float x[T * H], gate_up[E * 2 * F * H], down[E * H * F], w[T * 2];
    float batch_out[T * H] = {0}, alone_out[H];
    int32_t ids[T * 2];
    fill(x, T * H, 6);
    fill(gate_up, E * 2 * F * H, 7);
    fill(down, E * H * F, 8);
    fill(w, T * 2, 9);
    for (int i = 0; i < T * 2; i++)
        ids[i] = (i * 7) % E;
    pk_tensor tgu = pk_tensor_host(gate_up, PIO_DTYPE_F32, E * 2 * F, H);
    pk_tensor td = pk_tensor_host(down, PIO_DTYPE_F32, E * H, F);
    pk_tensor to = pk_tensor_host(batch_out, PIO_DTYPE_F32, T, H);
    pk_tensor tx = pk_tensor_host(x, PIO_DTYPE_F32, T, H);
    pk_tensor ti = pk_tensor_host(ids, PIO_DTYPE_I32, T, 2);
    pk_tensor tw = pk_tensor_host(w, PIO_DTYPE_F32, T, 2);
    assert_int_equal(pk_moe_experts(ctx, &to, &tx, &tgu, &td, &ti, &tw, E, NULL), PIO_OK);
    for (int t = 0; t < T; t++) {
        memset(alone_out, 0, sizeof alone_out);
        pk_tensor o1 = pk_tensor_host(alone_out, PIO_DTYPE_F32, 1, H);
        pk_tensor x1 = pk_tensor_rows(&tx, t, 1), i1 = pk_tensor_rows(&ti, t, 1);
        pk_tensor w1 = pk_tensor_rows(&tw, t, 1);
        assert_int_equal(pk_moe_experts(ctx, &o1, &x1, &tgu, &td, &i1, &w1, E, NULL), PIO_OK);
        assert_memory_equal(alone_out, batch_out + t * H, sizeof alone_out);
    }
    pk_context_destroy(ctx);
}

/* Expert parallelism: the slices of 1, 2, 3 and 6 ranks (views of the packed rows), the first
 * accumulating into out and the others overwriting theirs, sum to pk_moe_experts. */
static void expert_slices_sum_to_the_whole(void **state)
{
    (void)state;
    pk_context *ctx = cpu();
    static float x[T * H], gate_up[E * 2 * F * H], down[E * H * F], w[T * 3];
    static float whole[T * H], part[E][T * H];
    int32_t ids[T * 3];
    fill(x, T * H, 10);
    fill(gate_up, E * 2 * F * H, 11);
    fill(down, E * H * F, 12);
    fill(w, T * 3, 13);
    fill(whole, T * H, 14);
    for (int i = 0; i < T * 3; i++)
        ids[i] = (i * 5 + i / 3) % E;
    pk_tensor tgu = pk_tensor_host(gate_up, PIO_DTYPE_F32, E * 2 * F, H);
    pk_tensor td = pk_tensor_host(down, PIO_DTYPE_F32, E * H, F);
    pk_tensor tx = pk_tensor_host(x, PIO_DTYPE_F32, T, H);
    pk_tensor ti = pk_tensor_host(ids, PIO_DTYPE_I32, T, 3);
    pk_tensor tw = pk_tensor_host(w, PIO_DTYPE_F32, T, 3);
    pk_tensor to = pk_tensor_host(whole, PIO_DTYPE_F32, T, H);
    assert_int_equal(pk_moe_experts(ctx, &to, &tx, &tgu, &td, &ti, &tw, E, NULL), PIO_OK);
    const int sizes[] = {1, 2, 3, 6};
    for (size_t i = 0; i < 4; i++) {
        int n = sizes[i], per = E / n;
        float sum[T * H] = {0};
        for (int r = 0; r < n; r++) {
            if (r == 0) /* part[0] keeps the residual; the slice adds to it */
                fill(part[0], T * H, 14);
            else /* garbage that the slice overwrites */
                fill(part[r], T * H, 99);
            pk_tensor o = pk_tensor_host(part[r], PIO_DTYPE_F32, T, H);
            pk_tensor g = pk_tensor_rows(&tgu, r * per * 2 * F, per * 2 * F);
            pk_tensor dn = pk_tensor_rows(&td, r * per * H, per * H);
            assert_int_equal(pk_moe_experts_slice(ctx, &o, &tx, &g, &dn, &ti, &tw, E, r * per,
                                                  per, r == 0, NULL),
                             PIO_OK);
            for (int j = 0; j < T * H; j++)
                sum[j] += part[r][j];
        }
        for (int j = 0; j < T * H; j++)
            assert_float_equal(sum[j], whole[j], 1e-5 * (1.0 + fabs(whole[j])));
    }
    pio_error err;
    pk_tensor o = pk_tensor_host(part[0], PIO_DTYPE_F32, T, H);
    pk_tensor g = pk_tensor_rows(&tgu, 0, 4 * F), dn = pk_tensor_rows(&td, 0, 2 * H);
    assert_int_equal(pk_moe_experts_slice(ctx, &o, &tx, &g, &dn, &ti, &tw, E, 5, 2, 1, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "experts [5, 7) are not a slice of the 6 experts"));
    pk_context_destroy(ctx);
}

/* pk_moe_topk_experts is pk_moe_topk_softmax then pk_moe_experts: ids, weights and out bit for
 * bit, with and without the renormalisation, router ties included; its own checks name it. */
static void routing_and_experts_in_one_call(void **state)
{
    (void)state;
    pk_context *ctx = cpu();
    static float x[T * H], gate_up[E * 2 * F * H], down[E * H * F], logits[T * E];
    static float out_a[T * H], out_b[T * H], w_a[T * 3], w_b[T * 3];
    int32_t ids_a[T * 3], ids_b[T * 3];
    fill(x, T * H, 21);
    fill(gate_up, E * 2 * F * H, 22);
    fill(down, E * H * F, 23);
    fill(logits, T * E, 24);
    logits[2] = logits[4]; /* a tie in token 0 */
    pk_tensor tx = pk_tensor_host(x, PIO_DTYPE_F32, T, H);
    pk_tensor tl = pk_tensor_host(logits, PIO_DTYPE_F32, T, E);
    pk_tensor tgu = pk_tensor_host(gate_up, PIO_DTYPE_F32, E * 2 * F, H);
    pk_tensor td = pk_tensor_host(down, PIO_DTYPE_F32, E * H, F);
    pk_tensor oa = pk_tensor_host(out_a, PIO_DTYPE_F32, T, H);
    pk_tensor ob = pk_tensor_host(out_b, PIO_DTYPE_F32, T, H);
    pk_tensor ia = pk_tensor_host(ids_a, PIO_DTYPE_I32, T, 3);
    pk_tensor ib = pk_tensor_host(ids_b, PIO_DTYPE_I32, T, 3);
    pk_tensor wa = pk_tensor_host(w_a, PIO_DTYPE_F32, T, 3);
    pk_tensor wb = pk_tensor_host(w_b, PIO_DTYPE_F32, T, 3);
    for (int normalize = 0; normalize < 2; normalize++) {
        fill(out_a, T * H, 25);
        fill(out_b, T * H, 25);
        assert_int_equal(pk_moe_topk_experts(ctx, &oa, &tx, &tl, &tgu, &td, &ia, &wa, normalize,
                                             NULL),
                         PIO_OK);
        assert_int_equal(pk_moe_topk_softmax(ctx, &ib, &wb, &tl, normalize, NULL), PIO_OK);
        assert_int_equal(pk_moe_experts(ctx, &ob, &tx, &tgu, &td, &ib, &wb, E, NULL), PIO_OK);
        assert_memory_equal(ids_a, ids_b, sizeof ids_a);
        assert_memory_equal(w_a, w_b, sizeof w_a);
        assert_memory_equal(out_a, out_b, sizeof out_a);
    }
    pio_error err;
    pk_tensor x_as_logits = pk_tensor_host(x, PIO_DTYPE_F32, T, E); /* out overlaps logits */
    pk_tensor x_rows = pk_tensor_host(x + H, PIO_DTYPE_F32, T, H);
    assert_int_equal(pk_moe_topk_experts(ctx, &tx, &x_rows, &x_as_logits, &tgu, &td, &ia, &wa, 1,
                                         &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_moe_topk_experts: out overlaps"));
    pk_tensor five = pk_tensor_host(logits, PIO_DTYPE_F32, T, 5); /* 5 router columns, 6 experts */
    assert_int_equal(pk_moe_topk_experts(ctx, &oa, &tx, &five, &tgu, &td, &ia, &wa, 1, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_moe_topk_experts: gate_up is"));
    pk_context_destroy(ctx);
}

static void bad_arguments_are_named(void **state)
{
    (void)state;
    pk_context *ctx = cpu();
    static float x[T * H], out[T * H], gate_up[E * 2 * F * H], down[E * H * F], w[T];
    int32_t ids[T] = {0, 1, 2, 3, 4, 5, E}; /* the last is out of range */
    pk_tensor to = pk_tensor_host(out, PIO_DTYPE_F32, T, H);
    pk_tensor tx = pk_tensor_host(x, PIO_DTYPE_F32, T, H);
    pk_tensor tgu = pk_tensor_host(gate_up, PIO_DTYPE_F32, E * 2 * F, H);
    pk_tensor td = pk_tensor_host(down, PIO_DTYPE_F32, E * H, F);
    pk_tensor ti = pk_tensor_host(ids, PIO_DTYPE_I32, T, 1);
    pk_tensor tw = pk_tensor_host(w, PIO_DTYPE_F32, T, 1);
    pio_error err;
    assert_int_equal(pk_moe_experts(ctx, &to, &tx, &tgu, &td, &ti, &tw, E, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "ids[6, 0] is 6, outside [0, 6)"));
    assert_int_equal(pk_moe_experts(ctx, &to, &tx, &tgu, &td, &ti, &tw, E + 1, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_moe_experts: gate_up is"));
    pk_tensor wide = pk_tensor_host(ids, PIO_DTYPE_I32, 1, 5);
    pk_tensor wide_w = pk_tensor_host(w, PIO_DTYPE_F32, 1, 5);
    pk_tensor one_row = pk_tensor_host(x, PIO_DTYPE_F32, 1, 4);
    assert_int_equal(pk_moe_topk_softmax(ctx, &wide, &wide_w, &one_row, 1, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "k = 5 must be in [1, 4]"));
    pk_context_destroy(ctx);
}

/* A backend that leaves the MoE members NULL (a GPU backend before it has them). */
static void a_backend_without_the_ops_says_so(void **state)
{
    (void)state;
    pk_backend partial = pk_cpu_backend;
    partial.name = "partial";
    partial.moe_topk_softmax = NULL;
    partial.moe_experts = NULL;
    pk_context *ctx = NULL;
    assert_int_equal(pk_context_create_with(&partial, NULL, &ctx, NULL), PIO_OK);
    float logits[E] = {0}, w[1], x[H] = {0}, out[H] = {0};
    static float gate_up[E * 2 * F * H], down[E * H * F];
    int32_t ids[1] = {0};
    pk_tensor tl = pk_tensor_host(logits, PIO_DTYPE_F32, 1, E);
    pk_tensor ti = pk_tensor_host(ids, PIO_DTYPE_I32, 1, 1);
    pk_tensor tw = pk_tensor_host(w, PIO_DTYPE_F32, 1, 1);
    pk_tensor to = pk_tensor_host(out, PIO_DTYPE_F32, 1, H);
    pk_tensor tx = pk_tensor_host(x, PIO_DTYPE_F32, 1, H);
    pk_tensor tgu = pk_tensor_host(gate_up, PIO_DTYPE_F32, E * 2 * F, H);
    pk_tensor td = pk_tensor_host(down, PIO_DTYPE_F32, E * H, F);
    pio_error err;
    assert_int_equal(pk_moe_topk_softmax(ctx, &ti, &tw, &tl, 1, &err), PIO_ERR_UNSUPPORTED);
    assert_string_equal(err.message,
                        "pk_moe_topk_softmax: the partial backend does not implement it");
    assert_int_equal(pk_moe_experts(ctx, &to, &tx, &tgu, &td, &ti, &tw, E, &err),
                     PIO_ERR_UNSUPPORTED);
    assert_string_equal(err.message, "pk_moe_experts: the partial backend does not implement it");
    pk_context_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(routing_equals_the_naive_selection),
        cmocka_unit_test(experts_equal_the_naive_sum),
        cmocka_unit_test(one_token_alone_equals_it_in_a_batch),
        cmocka_unit_test(expert_slices_sum_to_the_whole),
        cmocka_unit_test(routing_and_experts_in_one_call),
        cmocka_unit_test(bad_arguments_are_named),
        cmocka_unit_test(a_backend_without_the_ops_says_so),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
