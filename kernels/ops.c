/*
 * Argument checking and dispatch of every op to the context's backend. Everything a backend may
 * assume (backend.h) is established here, once for all backends.
 */
#include "kernels/backend.h"

#include <math.h>
#include <stdint.h>

/* Allowed dtypes of an operand, as a bit set. */
#define DT(d) (1u << (d))
#define DT_F32 DT(PIO_DTYPE_F32)
#define DT_I32 DT(PIO_DTYPE_I32)
#define DT_WEIGHT (DT(PIO_DTYPE_F32) | DT(PIO_DTYPE_BF16))

static pio_status invalid(pio_error *err, const char *op, const char *what)
{
    return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s", op, what);
}

static pio_status check_context(pk_context *ctx, const char *op, pio_error *err)
{
    return ctx == NULL ? invalid(err, op, "ctx is NULL") : PIO_OK;
}

/* A valid tensor on ctx's device with one of the allowed dtypes. */
static pio_status check_operand(pk_context *ctx, const char *op, const char *name,
                                const pk_tensor *t, unsigned dtypes, pio_error *err)
{
    if (t == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s is NULL", op, name);
    if (!pk_tensor_is_valid(t))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s is not a valid tensor", op,
                             name);
    if (t->device != ctx->backend->device)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: %s lives on %s but the context runs on %s", op, name,
                             pk_device_name(t->device), pk_device_name(ctx->backend->device));
    if ((dtypes & DT(t->dtype)) == 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s has dtype %s", op, name,
                             pio_dtype_name(t->dtype));
    return PIO_OK;
}

static pio_status check_shape(const char *op, const char *name, const pk_tensor *t,
                              int64_t rows, int64_t cols, pio_error *err)
{
    if (t->rows == rows && t->cols == cols)
        return PIO_OK;
    return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                         "%s: %s is [%lld, %lld], expected [%lld, %lld]", op, name,
                         (long long)t->rows, (long long)t->cols, (long long)rows,
                         (long long)cols);
}

static int intervals_meet(int64_t a0, int64_t a1, int64_t b0, int64_t b1)
{
    return a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1;
}

/*
 * Whether two views share an element. Views with the same stride and dtype are compared
 * exactly (two column slices of one tensor interleave in memory but do not overlap); any other
 * pair is judged by its byte range, which may report overlap conservatively.
 */
static int views_overlap(const pk_tensor *a, const pk_tensor *b)
{
    size_t a_bytes = pk_tensor_span_bytes(a), b_bytes = pk_tensor_span_bytes(b);
    if (a_bytes == 0 || b_bytes == 0)
        return 0;
    uintptr_t a0 = (uintptr_t)a->data, b0 = (uintptr_t)b->data;
    if (a0 + a_bytes <= b0 || b0 + b_bytes <= a0)
        return 0;
    size_t elem = pio_dtype_size(a->dtype);
    if (a->dtype != b->dtype || a->stride != b->stride || (a0 > b0 ? a0 - b0 : b0 - a0) % elem)
        return 1;
    if (a0 > b0) {
        const pk_tensor *swap = a;
        a = b;
        b = swap;
    }
    /* b starts `offset` elements after a: at row dr, column dc of a's grid. Its columns may run
     * past the stride into the next row of the grid. */
    int64_t offset = (int64_t)(((uintptr_t)b->data - (uintptr_t)a->data) / elem);
    int64_t s = a->stride > 0 ? a->stride : 1;
    int64_t dr = offset / s, dc = offset % s;
    int64_t in_row_end = dc + b->cols < s ? dc + b->cols : s;
    if (intervals_meet(0, a->rows, dr, dr + b->rows) && intervals_meet(0, a->cols, dc, in_row_end))
        return 1;
    int64_t spill = dc + b->cols - s;
    return spill > 0 && intervals_meet(0, a->rows, dr + 1, dr + 1 + b->rows) &&
           intervals_meet(0, a->cols, 0, spill);
}

static int same_view(const pk_tensor *a, const pk_tensor *b)
{
    return a->data == b->data && a->dtype == b->dtype && a->rows == b->rows &&
           a->cols == b->cols && (a->stride == b->stride || a->rows <= 1);
}

int pk_views_overlap(const pk_tensor *a, const pk_tensor *b)
{
    return views_overlap(a, b);
}

int pk_views_same(const pk_tensor *a, const pk_tensor *b)
{
    return same_view(a, b);
}

/* out must not share elements with in, except (when may_alias) by being exactly the same view. */
static pio_status check_no_overlap(const char *op, const char *out_name, const pk_tensor *out,
                                   const char *in_name, const pk_tensor *in, int may_alias,
                                   pio_error *err)
{
    if (in == NULL || !views_overlap(out, in) || (may_alias && same_view(out, in)))
        return PIO_OK;
    return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s overlaps %s", op, out_name,
                         in_name);
}

/* ------------------------------------------------------------------------------------------ */

pio_status pk_copy(pk_context *ctx, const pk_tensor *dst, const pk_tensor *src, pio_error *err)
{
    static const char op[] = "pk_copy";
    pio_status st = check_context(ctx, op, err);
    if (st != PIO_OK)
        return st;
    if (dst == NULL || src == NULL || !pk_tensor_is_valid(dst) || !pk_tensor_is_valid(src))
        return invalid(err, op, "dst and src must be valid tensors");
    pk_device_kind dev = ctx->backend->device;
    if ((dst->device != dev && dst->device != PK_DEVICE_CPU) ||
        (src->device != dev && src->device != PK_DEVICE_CPU))
        return invalid(err, op, "tensors must live on the context's device or the host");
    if (dst->dtype != src->dtype)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: dtype %s != %s (use pk_cast)",
                             op, pio_dtype_name(dst->dtype), pio_dtype_name(src->dtype));
    if ((st = check_shape(op, "dst", dst, src->rows, src->cols, err)) != PIO_OK)
        return st;
    if (dst->device == src->device && (st = check_no_overlap(op, "dst", dst, "src", src, 1, err)))
        return st;
    return ctx->backend->copy(ctx, dst, src, err);
}

pio_status pk_embedding(pk_context *ctx, const pk_tensor *out, const pk_tensor *table,
                        const pk_tensor *ids, pio_error *err)
{
    static const char op[] = "pk_embedding";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "out", out, DT_F32, err)) ||
        (st = check_operand(ctx, op, "table", table, DT_WEIGHT, err)) ||
        (st = check_operand(ctx, op, "ids", ids, DT_I32, err)) ||
        (st = check_shape(op, "ids", ids, 1, out->rows, err)) ||
        (st = check_shape(op, "table", table, table->rows, out->cols, err)) ||
        (st = check_no_overlap(op, "out", out, "table", table, 0, err)) ||
        (st = check_no_overlap(op, "out", out, "ids", ids, 0, err)))
        return st;
    return ctx->backend->embedding(ctx, out, table, ids, err);
}

static pio_status check_matmul(pk_context *ctx, const char *op, const pk_tensor *y,
                               const pk_tensor *x, const pk_tensor *w, pio_error *err)
{
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "y", y, DT_F32, err)) ||
        (st = check_operand(ctx, op, "x", x, DT_F32, err)) ||
        (st = check_operand(ctx, op, "w", w, DT_WEIGHT, err)) ||
        (st = check_shape(op, "x", x, y->rows, w->cols, err)) ||
        (st = check_shape(op, "w", w, y->cols, x->cols, err)) ||
        (st = check_no_overlap(op, "y", y, "x", x, 0, err)) ||
        (st = check_no_overlap(op, "y", y, "w", w, 0, err)))
        return st;
    return PIO_OK;
}

static pio_status matmul_checked(pk_context *ctx, const char *op, const pk_tensor *y,
                                 const pk_tensor *x, const pk_tensor *w, int accumulate,
                                 pio_error *err)
{
    pio_status st = check_matmul(ctx, op, y, x, w, err);
    return st != PIO_OK ? st : ctx->backend->matmul(ctx, y, x, w, accumulate, err);
}

pio_status pk_matmul(pk_context *ctx, const pk_tensor *y, const pk_tensor *x, const pk_tensor *w,
                     pio_error *err)
{
    return matmul_checked(ctx, "pk_matmul", y, x, w, 0, err);
}

pio_status pk_matmul_add(pk_context *ctx, const pk_tensor *y, const pk_tensor *x,
                         const pk_tensor *w, pio_error *err)
{
    return matmul_checked(ctx, "pk_matmul_add", y, x, w, 1, err);
}

static pio_status check_rmsnorm(pk_context *ctx, const char *op, const pk_tensor *out,
                                const pk_tensor *x, const pk_tensor *weight, int64_t group,
                                float eps, pio_error *err)
{
    pio_status st;
    if ((st = check_operand(ctx, op, "out", out, DT_F32, err)) ||
        (st = check_operand(ctx, op, "x", x, DT_F32, err)) ||
        (st = check_operand(ctx, op, "weight", weight, DT_WEIGHT, err)) ||
        (st = check_shape(op, "x", x, out->rows, out->cols, err)) ||
        (st = check_shape(op, "weight", weight, 1, group, err)) ||
        (st = check_no_overlap(op, "out", out, "x", x, 1, err)) ||
        (st = check_no_overlap(op, "out", out, "weight", weight, 0, err)))
        return st;
    if (!(eps >= 0.0f) || !isfinite(eps))
        return invalid(err, op, "eps must be finite and >= 0");
    return PIO_OK;
}

static pio_status rmsnorm_checked(pk_context *ctx, const char *op, const pk_tensor *out,
                                  const pk_tensor *x, const pk_tensor *weight, int64_t group,
                                  float eps, pio_error *err)
{
    pio_status st = check_rmsnorm(ctx, op, out, x, weight, group, eps, err);
    return st != PIO_OK ? st : ctx->backend->rmsnorm(ctx, out, x, weight, group, eps, err);
}

pio_status pk_rmsnorm(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                      const pk_tensor *weight, float eps, pio_error *err)
{
    static const char op[] = "pk_rmsnorm";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "out", out, DT_F32, err)))
        return st;
    if (out->cols == 0)
        return invalid(err, op, "rows must not be empty");
    return rmsnorm_checked(ctx, op, out, x, weight, out->cols, eps, err);
}

pio_status pk_head_rmsnorm(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                           const pk_tensor *weight, int64_t head_dim, float eps, pio_error *err)
{
    static const char op[] = "pk_head_rmsnorm";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "out", out, DT_F32, err)))
        return st;
    if (head_dim <= 0 || out->cols % head_dim != 0)
        return invalid(err, op, "head_dim must be positive and divide the row width");
    return rmsnorm_checked(ctx, op, out, x, weight, head_dim, eps, err);
}

static pio_status check_rope_params(const char *op, const pk_rope_params *p, int64_t cols,
                                    pio_error *err)
{
    if (p == NULL)
        return invalid(err, op, "params is NULL");
    if (p->layout != PK_ROPE_NEOX && p->layout != PK_ROPE_INTERLEAVED)
        return invalid(err, op, "unknown layout");
    if (p->head_dim <= 0 || cols % p->head_dim != 0)
        return invalid(err, op, "head_dim must be positive and divide the row width");
    if (p->rotary_dim <= 0 || p->rotary_dim % 2 != 0 || p->rotary_offset < 0 ||
        p->rotary_dim > p->head_dim - p->rotary_offset)
        return invalid(err, op, "rotary_dim must be even, positive and fit the head after "
                                "rotary_offset");
    if (!(p->theta > 0.0f) || !isfinite(p->theta))
        return invalid(err, op, "theta must be finite and positive");
    return PIO_OK;
}

pio_status pk_rope(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                   const pk_tensor *positions, const pk_rope_params *params, pio_error *err)
{
    static const char op[] = "pk_rope";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "out", out, DT_F32, err)) ||
        (st = check_operand(ctx, op, "x", x, DT_F32, err)) ||
        (st = check_operand(ctx, op, "positions", positions, DT_I32, err)) ||
        (st = check_shape(op, "x", x, out->rows, out->cols, err)) ||
        (st = check_shape(op, "positions", positions, 1, out->rows, err)) ||
        (st = check_rope_params(op, params, out->cols, err)) ||
        (st = check_no_overlap(op, "out", out, "x", x, 1, err)) ||
        (st = check_no_overlap(op, "out", out, "positions", positions, 0, err)))
        return st;
    return ctx->backend->rope(ctx, out, x, positions, params, err);
}

pio_status pk_swiglu(pk_context *ctx, const pk_tensor *out, const pk_tensor *gate,
                     const pk_tensor *up, pio_error *err)
{
    static const char op[] = "pk_swiglu";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "out", out, DT_F32, err)) ||
        (st = check_operand(ctx, op, "gate", gate, DT_F32, err)) ||
        (st = check_operand(ctx, op, "up", up, DT_F32, err)) ||
        (st = check_shape(op, "gate", gate, out->rows, out->cols, err)) ||
        (st = check_shape(op, "up", up, out->rows, out->cols, err)) ||
        (st = check_no_overlap(op, "out", out, "gate", gate, 1, err)) ||
        (st = check_no_overlap(op, "out", out, "up", up, 1, err)))
        return st;
    return ctx->backend->swiglu(ctx, out, gate, up, err);
}

pio_status pk_swiglu_fused(pk_context *ctx, const pk_tensor *out, const pk_tensor *gate_up,
                           pio_error *err)
{
    static const char op[] = "pk_swiglu_fused";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "gate_up", gate_up, DT_F32, err)))
        return st;
    if (gate_up->cols % 2 != 0)
        return invalid(err, op, "gate_up must have an even number of columns");
    int64_t half = gate_up->cols / 2;
    pk_tensor gate = pk_tensor_cols(gate_up, 0, half);
    pk_tensor up = pk_tensor_cols(gate_up, half, half);
    return pk_swiglu(ctx, out, &gate, &up, err);
}

pio_status pk_add(pk_context *ctx, const pk_tensor *out, const pk_tensor *a, const pk_tensor *b,
                  pio_error *err)
{
    static const char op[] = "pk_add";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "out", out, DT_F32, err)) ||
        (st = check_operand(ctx, op, "a", a, DT_F32, err)) ||
        (st = check_operand(ctx, op, "b", b, DT_F32, err)) ||
        (st = check_shape(op, "a", a, out->rows, out->cols, err)) ||
        (st = check_shape(op, "b", b, out->rows, out->cols, err)) ||
        (st = check_no_overlap(op, "out", out, "a", a, 1, err)) ||
        (st = check_no_overlap(op, "out", out, "b", b, 1, err)))
        return st;
    return ctx->backend->add(ctx, out, a, b, err);
}

pio_status pk_softmax(pk_context *ctx, const pk_tensor *out, const pk_tensor *x, pio_error *err)
{
    static const char op[] = "pk_softmax";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "out", out, DT_F32, err)) ||
        (st = check_operand(ctx, op, "x", x, DT_F32, err)) ||
        (st = check_shape(op, "x", x, out->rows, out->cols, err)) ||
        (st = check_no_overlap(op, "out", out, "x", x, 1, err)))
        return st;
    return ctx->backend->softmax(ctx, out, x, err);
}

pio_status pk_argmax(pk_context *ctx, const pk_tensor *ids, const pk_tensor *x, pio_error *err)
{
    static const char op[] = "pk_argmax";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "ids", ids, DT_I32, err)) ||
        (st = check_operand(ctx, op, "x", x, DT_F32, err)) ||
        (st = check_shape(op, "ids", ids, 1, x->rows, err)))
        return st;
    if (x->cols == 0 || x->cols > INT32_MAX)
        return invalid(err, op, "rows must hold 1..INT32_MAX values");
    if ((st = check_no_overlap(op, "ids", ids, "x", x, 0, err)))
        return st;
    return ctx->backend->argmax(ctx, ids, x, err);
}

pio_status pk_fill_dummy(pk_context *ctx, const pk_tensor *out, uint64_t seed,
                         uint64_t tensor_id, float scale, float offset, pio_error *err)
{
    static const char op[] = "pk_fill_dummy";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "out", out, DT_WEIGHT, err)))
        return st;
    if (!isfinite(scale) || !isfinite(offset))
        return invalid(err, op, "scale and offset must be finite");
    return ctx->backend->fill_dummy(ctx, out, seed, tensor_id, scale, offset, err);
}

pio_status pk_cast(pk_context *ctx, const pk_tensor *out, const pk_tensor *x, pio_error *err)
{
    static const char op[] = "pk_cast";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "out", out, DT_WEIGHT, err)) ||
        (st = check_operand(ctx, op, "x", x, DT_WEIGHT, err)) ||
        (st = check_shape(op, "x", x, out->rows, out->cols, err)) ||
        (st = check_no_overlap(op, "out", out, "x", x, 0, err)))
        return st;
    return ctx->backend->cast(ctx, out, x, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Attention                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* params with v_head_dim resolved, after range checks. */
static pio_status resolve_attention_params(const char *op, const pk_attention_params *in,
                                           pk_attention_params *out, pio_error *err)
{
    if (in == NULL)
        return invalid(err, op, "params is NULL");
    *out = *in;
    if (out->v_head_dim == 0)
        out->v_head_dim = out->head_dim;
    if (out->n_q_heads <= 0 || out->n_kv_heads <= 0 || out->n_q_heads % out->n_kv_heads != 0)
        return invalid(err, op, "n_q_heads must be a positive multiple of n_kv_heads");
    if (out->head_dim <= 0 || out->v_head_dim < 0)
        return invalid(err, op, "head_dim must be positive and v_head_dim >= 0");
    if (!isfinite(out->scale))
        return invalid(err, op, "scale must be finite");
    return PIO_OK;
}

static pio_status check_batch(pk_context *ctx, const char *op, const pk_token_batch *batch,
                              int64_t n_tokens, pio_error *err)
{
    if (batch == NULL)
        return invalid(err, op, "batch is NULL");
    pio_status st;
    if ((st = check_operand(ctx, op, "batch.positions", &batch->positions, DT_I32, err)) ||
        (st = check_operand(ctx, op, "batch.seq_rows", &batch->seq_rows, DT_I32, err)) ||
        (st = check_operand(ctx, op, "batch.block_tables", &batch->block_tables, DT_I32, err)) ||
        (st = check_shape(op, "batch.positions", &batch->positions, 1, n_tokens, err)) ||
        (st = check_shape(op, "batch.seq_rows", &batch->seq_rows, 1, n_tokens, err)))
        return st;
    if (batch->block_size <= 0)
        return invalid(err, op, "batch.block_size must be positive");
    if (n_tokens > 0 && (batch->block_tables.rows == 0 || batch->block_tables.cols == 0))
        return invalid(err, op, "batch.block_tables is empty");
    return PIO_OK;
}

/* A cache plane: [n_blocks·block_size, width], BF16|F32. */
static pio_status check_cache(pk_context *ctx, const char *op, const char *name,
                              const pk_tensor *cache, int64_t width, int32_t block_size,
                              pio_error *err)
{
    pio_status st = check_operand(ctx, op, name, cache, DT_WEIGHT, err);
    if (st || (st = check_shape(op, name, cache, cache->rows, width, err)))
        return st;
    if (cache->rows % block_size != 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: %s has %lld slots, not a multiple of block_size %d", op, name,
                             (long long)cache->rows, (int)block_size);
    return PIO_OK;
}

static pio_status check_store(pk_context *ctx, const char *op, const pk_tensor *k_cache,
                              const pk_tensor *v_cache, const pk_tensor *k_new,
                              const pk_tensor *v_new, const pk_token_batch *batch,
                              const pk_attention_params *p, pio_error *err)
{
    if ((v_new == NULL) != (v_cache == NULL))
        return invalid(err, op, "v_new and v_cache must be given together");
    int64_t k_width = (int64_t)p->n_kv_heads * p->head_dim;
    int64_t v_width = (int64_t)p->n_kv_heads * p->v_head_dim;
    pio_status st = check_operand(ctx, op, "k_new", k_new, DT_F32, err);
    if (st || (st = check_batch(ctx, op, batch, k_new->rows, err)) ||
        (st = check_shape(op, "k_new", k_new, k_new->rows, k_width, err)) ||
        (st = check_cache(ctx, op, "k_cache", k_cache, k_width, batch->block_size, err)) ||
        (st = check_no_overlap(op, "k_cache", k_cache, "k_new", k_new, 0, err)))
        return st;
    if (v_new == NULL)
        return PIO_OK;
    if ((st = check_operand(ctx, op, "v_new", v_new, DT_F32, err)) ||
        (st = check_shape(op, "v_new", v_new, k_new->rows, v_width, err)) ||
        (st = check_cache(ctx, op, "v_cache", v_cache, v_width, batch->block_size, err)) ||
        (st = check_no_overlap(op, "v_cache", v_cache, "v_new", v_new, 0, err)) ||
        (st = check_no_overlap(op, "v_cache", v_cache, "k_cache", k_cache, 0, err)))
        return st;
    if (v_cache->rows != k_cache->rows)
        return invalid(err, op, "k_cache and v_cache must have the same number of slots");
    return PIO_OK;
}

pio_status pk_kv_store(pk_context *ctx, const pk_tensor *k_cache, const pk_tensor *v_cache,
                       const pk_tensor *k_new, const pk_tensor *v_new,
                       const pk_token_batch *batch, const pk_attention_params *params,
                       pio_error *err)
{
    static const char op[] = "pk_kv_store";
    pk_attention_params p;
    pio_status st = check_context(ctx, op, err);
    if (st || (st = resolve_attention_params(op, params, &p, err)) ||
        (st = check_store(ctx, op, k_cache, v_cache, k_new, v_new, batch, &p, err)))
        return st;
    return ctx->backend->kv_store(ctx, k_cache, v_cache, k_new, v_new, batch, &p, err);
}

static pio_status check_attend(pk_context *ctx, const char *op, const pk_tensor *out,
                               const pk_tensor *q, const pk_tensor *k_cache,
                               const pk_tensor *v_cache, const pk_token_batch *batch,
                               const pk_attention_params *p, pio_error *err)
{
    int64_t n_tokens = q != NULL ? q->rows : 0;
    pio_status st;
    if ((st = check_operand(ctx, op, "q", q, DT_F32, err)) ||
        (st = check_operand(ctx, op, "out", out, DT_F32, err)) ||
        (st = check_batch(ctx, op, batch, n_tokens, err)) ||
        (st = check_shape(op, "q", q, n_tokens, (int64_t)p->n_q_heads * p->head_dim, err)) ||
        (st = check_shape(op, "out", out, n_tokens, (int64_t)p->n_q_heads * p->v_head_dim,
                          err)) ||
        (st = check_cache(ctx, op, "k_cache", k_cache, (int64_t)p->n_kv_heads * p->head_dim,
                          batch->block_size, err)) ||
        (st = check_cache(ctx, op, "v_cache", v_cache, (int64_t)p->n_kv_heads * p->v_head_dim,
                          batch->block_size, err)))
        return st;
    if (v_cache->rows != k_cache->rows)
        return invalid(err, op, "k_cache and v_cache must have the same number of slots");
    if ((st = check_no_overlap(op, "out", out, "q", q, 0, err)) ||
        (st = check_no_overlap(op, "out", out, "k_cache", k_cache, 0, err)) ||
        (st = check_no_overlap(op, "out", out, "v_cache", v_cache, 0, err)))
        return st;
    return PIO_OK;
}

pio_status pk_attention(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                        const pk_tensor *k_new, const pk_tensor *v_new, const pk_tensor *k_cache,
                        const pk_tensor *v_cache, const pk_token_batch *batch,
                        const pk_attention_params *params, pio_error *err)
{
    static const char op[] = "pk_attention";
    pk_attention_params p;
    pio_status st = check_context(ctx, op, err);
    if (st || (st = resolve_attention_params(op, params, &p, err)) ||
        (st = check_attend(ctx, op, out, q, k_cache, v_cache, batch, &p, err)))
        return st;
    if (k_new == NULL && v_new != NULL)
        return invalid(err, op, "v_new without k_new");
    if (k_new != NULL) {
        /* With v_new NULL only keys are stored: v_cache then reads values already in place
         * (a view of the key entries, or stored earlier). */
        const pk_tensor *store_v_cache = v_new != NULL ? v_cache : NULL;
        if ((st = check_store(ctx, op, k_cache, store_v_cache, k_new, v_new, batch, &p, err)))
            return st;
        if (k_new->rows != q->rows)
            return invalid(err, op, "k_new and q must have one row per token");
        if ((st = check_no_overlap(op, "out", out, "k_new", k_new, 0, err)) ||
            (st = check_no_overlap(op, "out", out, "v_new", v_new, 0, err)))
            return st;
        st = ctx->backend->kv_store(ctx, k_cache, store_v_cache, k_new, v_new, batch, &p, err);
        if (st != PIO_OK)
            return st;
    }
    return ctx->backend->attention(ctx, out, q, k_cache, v_cache, batch, &p, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Mixture of experts                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* An optional backend member that is NULL: the op exists, this backend does not run it. */
static pio_status unsupported_by_backend(pk_context *ctx, const char *op, pio_error *err)
{
    return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: the %s backend does not implement it",
                         op, ctx->backend->name);
}

static pio_status check_topk_softmax(pk_context *ctx, const char *op, const pk_tensor *ids,
                                     const pk_tensor *weights, const pk_tensor *logits,
                                     pio_error *err)
{
    pio_status st;
    if ((st = check_operand(ctx, op, "ids", ids, DT_I32, err)) ||
        (st = check_operand(ctx, op, "weights", weights, DT_F32, err)) ||
        (st = check_operand(ctx, op, "logits", logits, DT_F32, err)) ||
        (st = check_shape(op, "ids", ids, logits->rows, ids->cols, err)) ||
        (st = check_shape(op, "weights", weights, logits->rows, ids->cols, err)))
        return st;
    if (ids->cols < 1 || ids->cols > logits->cols || logits->cols > INT32_MAX)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: k = %lld must be in [1, %lld]",
                             op, (long long)ids->cols, (long long)logits->cols);
    if ((st = check_no_overlap(op, "ids", ids, "logits", logits, 0, err)) ||
        (st = check_no_overlap(op, "weights", weights, "logits", logits, 0, err)) ||
        (st = check_no_overlap(op, "weights", weights, "ids", ids, 0, err)))
        return st;
    return PIO_OK;
}

pio_status pk_moe_topk_softmax(pk_context *ctx, const pk_tensor *ids, const pk_tensor *weights,
                               const pk_tensor *logits, int normalize, pio_error *err)
{
    static const char op[] = "pk_moe_topk_softmax";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_topk_softmax(ctx, op, ids, weights, logits, err)))
        return st;
    if (ctx->backend->moe_topk_softmax == NULL)
        return unsupported_by_backend(ctx, op, err);
    return ctx->backend->moe_topk_softmax(ctx, ids, weights, logits, normalize, err);
}

static pio_status check_expert_weights(const char *op, const pk_tensor *out,
                                       const pk_tensor *gate_up, const pk_tensor *down,
                                       int64_t n_experts, pio_error *err)
{
    if (n_experts < 1 || n_experts > INT32_MAX)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: n_experts = %lld", op,
                             (long long)n_experts);
    int64_t hidden = out->cols, inner = down->cols;
    pio_status st = check_shape(op, "gate_up", gate_up, n_experts * 2 * inner, hidden, err);
    if (st == PIO_OK)
        st = check_shape(op, "down", down, n_experts * hidden, inner, err);
    return st;
}

pio_status pk_moe_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                          const pk_tensor *gate_up, const pk_tensor *down, const pk_tensor *ids,
                          const pk_tensor *weights, int64_t n_experts, pio_error *err)
{
    return pk_moe_experts_slice(ctx, out, x, gate_up, down, ids, weights, n_experts, 0,
                                n_experts, 1, err);
}

/* The checks of pk_moe_experts_slice (whole: the slice is every expert, accumulated). */
static pio_status check_experts(pk_context *ctx, const char *op, const pk_tensor *out,
                                const pk_tensor *x, const pk_tensor *gate_up,
                                const pk_tensor *down, const pk_tensor *ids,
                                const pk_tensor *weights, int64_t n_experts, int64_t first,
                                int64_t n_local, int whole, pio_error *err)
{
    pio_status st;
    if (!whole && (n_experts < 1 || n_experts > INT32_MAX || first < 0 || n_local < 1 ||
                   first > n_experts - n_local))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: experts [%lld, %lld) are not "
                             "a slice of the %lld experts", op, (long long)first,
                             (long long)(first + n_local), (long long)n_experts);
    if ((st = check_operand(ctx, op, "out", out, DT_F32, err)) ||
        (st = check_operand(ctx, op, "x", x, DT_F32, err)) ||
        (st = check_operand(ctx, op, "gate_up", gate_up, DT_WEIGHT, err)) ||
        (st = check_operand(ctx, op, "down", down, DT_WEIGHT, err)) ||
        (st = check_operand(ctx, op, "ids", ids, DT_I32, err)) ||
        (st = check_operand(ctx, op, "weights", weights, DT_F32, err)) ||
        (st = check_shape(op, "x", x, out->rows, out->cols, err)) ||
        (st = check_shape(op, "ids", ids, out->rows, ids->cols, err)) ||
        (st = check_shape(op, "weights", weights, out->rows, ids->cols, err)) ||
        (st = check_expert_weights(op, out, gate_up, down, n_local, err)) ||
        (st = check_no_overlap(op, "out", out, "x", x, 0, err)) ||
        (st = check_no_overlap(op, "out", out, "weights", weights, 0, err)))
        return st;
    if (ids->cols < 1 || ids->cols > n_experts)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: k = %lld must be in [1, %lld]",
                             op, (long long)ids->cols, (long long)n_experts);
    return PIO_OK;
}

pio_status pk_moe_experts_slice(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                                const pk_tensor *gate_up, const pk_tensor *down,
                                const pk_tensor *ids, const pk_tensor *weights,
                                int64_t n_experts, int64_t first, int64_t n_local,
                                int accumulate, pio_error *err)
{
    static const char op[] = "pk_moe_experts";
    int whole = first == 0 && n_local == n_experts && accumulate;
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_experts(ctx, op, out, x, gate_up, down, ids, weights, n_experts, first,
                                  n_local, whole, err)))
        return st;
    if (whole && ctx->backend->moe_experts != NULL)
        return ctx->backend->moe_experts(ctx, out, x, gate_up, down, ids, weights, n_experts,
                                         err);
    if (whole || ctx->backend->moe_experts_slice == NULL)
        return unsupported_by_backend(ctx, whole ? op : "pk_moe_experts_slice", err);
    return ctx->backend->moe_experts_slice(ctx, out, x, gate_up, down, ids, weights, n_experts,
                                           first, n_local, accumulate, err);
}

pio_status pk_moe_topk_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                               const pk_tensor *logits, const pk_tensor *gate_up,
                               const pk_tensor *down, const pk_tensor *ids,
                               const pk_tensor *weights, int normalize, pio_error *err)
{
    static const char op[] = "pk_moe_topk_experts";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_topk_softmax(ctx, op, ids, weights, logits, err)) ||
        (st = check_experts(ctx, op, out, x, gate_up, down, ids, weights, logits->cols, 0,
                            logits->cols, 1, err)) ||
        (st = check_no_overlap(op, "out", out, "logits", logits, 0, err)) ||
        (st = check_no_overlap(op, "out", out, "ids", ids, 0, err)) ||
        (st = check_no_overlap(op, "ids", ids, "x", x, 0, err)) ||
        (st = check_no_overlap(op, "weights", weights, "x", x, 0, err)))
        return st;
    if (ctx->backend->moe_topk_experts != NULL)
        return ctx->backend->moe_topk_experts(ctx, out, x, logits, gate_up, down, ids, weights,
                                              normalize, err);
    if (ctx->backend->moe_topk_softmax == NULL || ctx->backend->moe_experts == NULL)
        return unsupported_by_backend(ctx, op, err);
    if ((st = ctx->backend->moe_topk_softmax(ctx, ids, weights, logits, normalize, err)))
        return st;
    return ctx->backend->moe_experts(ctx, out, x, gate_up, down, ids, weights, logits->cols,
                                     err);
}

/* ------------------------------------------------------------------------------------------ */
/* Fused ops                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static pio_status check_rmsnorm_matmul(pk_context *ctx, const char *op, const pk_tensor *y,
                                       const pk_tensor *h, const pk_tensor *x,
                                       const pk_tensor *norm_weight, float eps,
                                       const pk_tensor *w, pio_error *err)
{
    pio_status st;
    if ((st = check_operand(ctx, op, "h", h, DT_F32, err)))
        return st;
    if (h->cols == 0)
        return invalid(err, op, "rows must not be empty");
    if ((st = check_rmsnorm(ctx, op, h, x, norm_weight, h->cols, eps, err)) ||
        (st = check_matmul(ctx, op, y, h, w, err)) ||
        (st = check_no_overlap(op, "y", y, "x", x, 0, err)) ||
        (st = check_no_overlap(op, "y", y, "norm_weight", norm_weight, 0, err)))
        return st;
    return PIO_OK;
}

/* The unfused sequence: the norm, the matmul, and (out != NULL) the SwiGLU of y's halves. */
static pio_status rmsnorm_matmul_composed(pk_context *ctx, const pk_tensor *out,
                                          const pk_tensor *y, const pk_tensor *h,
                                          const pk_tensor *x, const pk_tensor *norm_weight,
                                          float eps, const pk_tensor *w, pio_error *err)
{
    pio_status st;
    if ((st = ctx->backend->rmsnorm(ctx, h, x, norm_weight, h->cols, eps, err)) ||
        (st = ctx->backend->matmul(ctx, y, h, w, 0, err)) || out == NULL)
        return st;
    pk_tensor gate = pk_tensor_cols(y, 0, out->cols), up = pk_tensor_cols(y, out->cols, out->cols);
    return ctx->backend->swiglu(ctx, out, &gate, &up, err);
}

static pio_status rmsnorm_matmul_run(pk_context *ctx, const pk_tensor *out, const pk_tensor *y,
                                     const pk_tensor *h, const pk_tensor *x,
                                     const pk_tensor *norm_weight, float eps, const pk_tensor *w,
                                     pio_error *err)
{
    if (ctx->backend->rmsnorm_matmul != NULL)
        return ctx->backend->rmsnorm_matmul(ctx, out, y, h, x, norm_weight, eps, w, err);
    return rmsnorm_matmul_composed(ctx, out, y, h, x, norm_weight, eps, w, err);
}

pio_status pk_rmsnorm_matmul(pk_context *ctx, const pk_tensor *y, const pk_tensor *h,
                             const pk_tensor *x, const pk_tensor *norm_weight, float eps,
                             const pk_tensor *w, pio_error *err)
{
    static const char op[] = "pk_rmsnorm_matmul";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_rmsnorm_matmul(ctx, op, y, h, x, norm_weight, eps, w, err)))
        return st;
    return rmsnorm_matmul_run(ctx, NULL, y, h, x, norm_weight, eps, w, err);
}

pio_status pk_rmsnorm_matmul_swiglu(pk_context *ctx, const pk_tensor *out,
                                    const pk_tensor *gate_up, const pk_tensor *h,
                                    const pk_tensor *x, const pk_tensor *norm_weight, float eps,
                                    const pk_tensor *w, pio_error *err)
{
    static const char op[] = "pk_rmsnorm_matmul_swiglu";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_rmsnorm_matmul(ctx, op, gate_up, h, x, norm_weight, eps, w, err)) ||
        (st = check_operand(ctx, op, "out", out, DT_F32, err)))
        return st;
    if (gate_up->cols % 2 != 0)
        return invalid(err, op, "gate_up must have an even number of columns");
    pk_tensor gate = pk_tensor_cols(gate_up, 0, gate_up->cols / 2);
    if ((st = check_shape(op, "out", out, gate_up->rows, gate_up->cols / 2, err)) ||
        (st = check_no_overlap(op, "out", out, "x", x, 0, err)) ||
        (st = check_no_overlap(op, "out", out, "h", h, 0, err)) ||
        (st = check_no_overlap(op, "out", out, "norm_weight", norm_weight, 0, err)) ||
        (st = check_no_overlap(op, "out", out, "w", w, 0, err)))
        return st;
    if (views_overlap(out, gate_up) && !same_view(out, &gate))
        return invalid(err, op, "out overlaps gate_up other than as its gate half");
    return rmsnorm_matmul_run(ctx, out, gate_up, h, x, norm_weight, eps, w, err);
}

static pio_status check_qk_norm_rope(pk_context *ctx, const char *op, const pk_tensor *q,
                                     const pk_tensor *k, const pk_tensor *q_norm,
                                     const pk_tensor *k_norm, float eps,
                                     const pk_rope_params *rope, const pk_token_batch *batch,
                                     const pk_attention_params *p, pio_error *err)
{
    pio_status st;
    if ((st = check_operand(ctx, op, "q", q, DT_F32, err)) ||
        (st = check_shape(op, "q", q, q->rows, (int64_t)p->n_q_heads * p->head_dim, err)) ||
        (st = check_rmsnorm(ctx, op, q, q, q_norm, p->head_dim, eps, err)) ||
        (st = check_rmsnorm(ctx, op, k, k, k_norm, p->head_dim, eps, err)) ||
        (st = check_shape(op, "k", k, q->rows, (int64_t)p->n_kv_heads * p->head_dim, err)) ||
        (st = check_rope_params(op, rope, q->cols, err)) ||
        (st = check_no_overlap(op, "q", q, "k", k, 0, err)))
        return st;
    if (rope->head_dim != p->head_dim)
        return invalid(err, op, "rope->head_dim must equal params->head_dim");
    if ((st = check_no_overlap(op, "q", q, "batch.positions", &batch->positions, 0, err)) ||
        (st = check_no_overlap(op, "k", k, "batch.positions", &batch->positions, 0, err)))
        return st;
    return PIO_OK;
}

/* The checks of pk_qk_norm_rope_store (params resolved). */
static pio_status check_qk_norm_rope_store(pk_context *ctx, const char *op, const pk_tensor *q,
                                           const pk_tensor *k, const pk_tensor *v,
                                           const pk_tensor *q_norm, const pk_tensor *k_norm,
                                           float eps, const pk_rope_params *rope,
                                           const pk_tensor *k_cache, const pk_tensor *v_cache,
                                           const pk_token_batch *batch,
                                           const pk_attention_params *p, pio_error *err)
{
    pio_status st;
    if ((st = check_store(ctx, op, k_cache, v_cache, k, v, batch, p, err)) ||
        (st = check_qk_norm_rope(ctx, op, q, k, q_norm, k_norm, eps, rope, batch, p, err)))
        return st;
    return v != NULL ? check_no_overlap(op, "q", q, "v", v, 0, err) : PIO_OK;
}

/* pk_qk_norm_rope_store once checked: the backend's fused kernel, or the five ops. */
static pio_status qk_norm_rope_store_run(pk_context *ctx, const pk_tensor *q, const pk_tensor *k,
                                         const pk_tensor *v, const pk_tensor *q_norm,
                                         const pk_tensor *k_norm, float eps,
                                         const pk_rope_params *rope, const pk_tensor *k_cache,
                                         const pk_tensor *v_cache, const pk_token_batch *batch,
                                         const pk_attention_params *p, pio_error *err)
{
    pio_status st;
    if (ctx->backend->qk_norm_rope_store != NULL)
        return ctx->backend->qk_norm_rope_store(ctx, q, k, v, q_norm, k_norm, eps, rope, k_cache,
                                                v_cache, batch, p, err);
    if ((st = ctx->backend->rmsnorm(ctx, q, q, q_norm, p->head_dim, eps, err)) ||
        (st = ctx->backend->rmsnorm(ctx, k, k, k_norm, p->head_dim, eps, err)) ||
        (st = ctx->backend->rope(ctx, q, q, &batch->positions, rope, err)) ||
        (st = ctx->backend->rope(ctx, k, k, &batch->positions, rope, err)))
        return st;
    return ctx->backend->kv_store(ctx, k_cache, v_cache, k, v, batch, p, err);
}

pio_status pk_qk_norm_rope_store(pk_context *ctx, const pk_tensor *q, const pk_tensor *k,
                                 const pk_tensor *v, const pk_tensor *q_norm,
                                 const pk_tensor *k_norm, float eps, const pk_rope_params *rope,
                                 const pk_tensor *k_cache, const pk_tensor *v_cache,
                                 const pk_token_batch *batch, const pk_attention_params *params,
                                 pio_error *err)
{
    static const char op[] = "pk_qk_norm_rope_store";
    pk_attention_params p;
    pio_status st = check_context(ctx, op, err);
    if (st || (st = resolve_attention_params(op, params, &p, err)) ||
        (st = check_qk_norm_rope_store(ctx, op, q, k, v, q_norm, k_norm, eps, rope, k_cache,
                                       v_cache, batch, &p, err)))
        return st;
    return qk_norm_rope_store_run(ctx, q, k, v, q_norm, k_norm, eps, rope, k_cache, v_cache,
                                  batch, &p, err);
}

pio_status pk_qk_norm_rope_attention(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                                     const pk_tensor *k, const pk_tensor *v,
                                     const pk_tensor *q_norm, const pk_tensor *k_norm, float eps,
                                     const pk_rope_params *rope, const pk_tensor *k_cache,
                                     const pk_tensor *v_cache, const pk_token_batch *batch,
                                     const pk_attention_params *params, pio_error *err)
{
    static const char op[] = "pk_qk_norm_rope_attention";
    /* With v NULL only keys are stored; v_cache then reads values already in place. */
    const pk_tensor *store_v_cache = v != NULL ? v_cache : NULL;
    pk_attention_params p;
    pio_status st = check_context(ctx, op, err);
    if (st || (st = resolve_attention_params(op, params, &p, err)) ||
        (st = check_qk_norm_rope_store(ctx, op, q, k, v, q_norm, k_norm, eps, rope, k_cache,
                                       store_v_cache, batch, &p, err)) ||
        (st = check_attend(ctx, op, out, q, k_cache, v_cache, batch, &p, err)) ||
        (st = check_no_overlap(op, "out", out, "k", k, 0, err)) ||
        (st = check_no_overlap(op, "out", out, "v", v, 0, err)))
        return st;
    if (ctx->backend->qk_norm_rope_attention != NULL)
        return ctx->backend->qk_norm_rope_attention(ctx, out, q, k, v, q_norm, k_norm, eps, rope,
                                                    k_cache, v_cache, batch, &p, err);
    if ((st = qk_norm_rope_store_run(ctx, q, k, v, q_norm, k_norm, eps, rope, k_cache,
                                     store_v_cache, batch, &p, err)))
        return st;
    return ctx->backend->attention(ctx, out, q, k_cache, v_cache, batch, &p, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Graphs                                                                                     */
/* ------------------------------------------------------------------------------------------ */

int pk_graph_supported(const pk_context *ctx)
{
    return ctx != NULL && ctx->backend->graph_begin != NULL;
}

pio_status pk_graph_begin(pk_context *ctx, pio_error *err)
{
    static const char op[] = "pk_graph_begin";
    pio_status st = check_context(ctx, op, err);
    if (st != PIO_OK)
        return st;
    return ctx->backend->graph_begin != NULL ? ctx->backend->graph_begin(ctx, err)
                                             : unsupported_by_backend(ctx, op, err);
}

pio_status pk_graph_end(pk_context *ctx, pk_graph **out, pio_error *err)
{
    static const char op[] = "pk_graph_end";
    pio_status st = check_context(ctx, op, err);
    if (st != PIO_OK)
        return st;
    if (out == NULL)
        return invalid(err, op, "out is NULL");
    *out = NULL;
    return ctx->backend->graph_end != NULL ? ctx->backend->graph_end(ctx, out, err)
                                           : unsupported_by_backend(ctx, op, err);
}

pio_status pk_graph_launch(pk_context *ctx, pk_graph *graph, pio_error *err)
{
    static const char op[] = "pk_graph_launch";
    pio_status st = check_context(ctx, op, err);
    if (st != PIO_OK)
        return st;
    if (graph == NULL)
        return invalid(err, op, "graph is NULL");
    return ctx->backend->graph_launch != NULL ? ctx->backend->graph_launch(ctx, graph, err)
                                              : unsupported_by_backend(ctx, op, err);
}

int pk_graph_is_current(pk_context *ctx, const pk_graph *graph)
{
    return ctx != NULL && graph != NULL && ctx->backend->graph_is_current != NULL &&
           ctx->backend->graph_is_current(ctx, graph);
}

void pk_graph_destroy(pk_context *ctx, pk_graph *graph)
{
    if (ctx != NULL && graph != NULL && ctx->backend->graph_destroy != NULL)
        ctx->backend->graph_destroy(ctx, graph);
}

/* ------------------------------------------------------------------------------------------ */
/* Sampling                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* A history operand of pk_sample: NULL, or [rows, L] I32 with L below max_cols. */
static pio_status check_history(pk_context *ctx, const char *op, const char *name,
                                const pk_tensor *t, int64_t rows, int64_t max_cols,
                                pio_error *err)
{
    if (t == NULL)
        return PIO_OK;
    pio_status st = check_operand(ctx, op, name, t, DT_I32, err);
    if (st || (st = check_shape(op, name, t, rows, t->cols, err)))
        return st;
    if (t->cols >= max_cols)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s has %lld columns (< %lld)",
                             op, name, (long long)t->cols, (long long)max_cols);
    return PIO_OK;
}

pio_status pk_sample(pk_context *ctx, const pk_tensor *ids, const pk_tensor *logits,
                     int64_t n_valid, const pk_tensor *params, const pk_tensor *prompt_tokens,
                     const pk_tensor *output_tokens, const pk_tensor *uniforms, pio_error *err)
{
    static const char op[] = "pk_sample";
    pio_status st = check_context(ctx, op, err);
    if (st || (st = check_operand(ctx, op, "logits", logits, DT_F32, err)))
        return st;
    int64_t rows = logits->rows;
    if ((st = check_operand(ctx, op, "ids", ids, DT_I32, err)) ||
        (st = check_shape(op, "ids", ids, 1, rows, err)) ||
        (st = check_operand(ctx, op, "params", params, DT_F32, err)) ||
        (st = check_shape(op, "params", params, rows, PK_SAMPLE_PARAM_COUNT, err)) ||
        (st = check_operand(ctx, op, "uniforms", uniforms, DT(PIO_DTYPE_I64), err)) ||
        (st = check_shape(op, "uniforms", uniforms, 1, rows, err)) ||
        (st = check_history(ctx, op, "prompt_tokens", prompt_tokens, rows, INT32_MAX, err)) ||
        (st = check_history(ctx, op, "output_tokens", output_tokens, rows, 1 << 30, err)))
        return st;
    if (n_valid < 1 || n_valid > logits->cols || n_valid > INT32_MAX)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: n_valid %lld must be in [1, %lld] (the logits width)", op,
                             (long long)n_valid, (long long)logits->cols);
    if ((st = check_no_overlap(op, "ids", ids, "logits", logits, 0, err)) ||
        (st = check_no_overlap(op, "ids", ids, "params", params, 0, err)) ||
        (st = check_no_overlap(op, "ids", ids, "prompt_tokens", prompt_tokens, 0, err)) ||
        (st = check_no_overlap(op, "ids", ids, "output_tokens", output_tokens, 0, err)) ||
        (st = check_no_overlap(op, "ids", ids, "uniforms", uniforms, 0, err)))
        return st;
    if (ctx->backend->sample == NULL)
        return unsupported_by_backend(ctx, op, err);
    if (rows == 0)
        return PIO_OK;
    return ctx->backend->sample(ctx, ids, logits, n_valid, params, prompt_tokens, output_tokens,
                                uniforms, err);
}
