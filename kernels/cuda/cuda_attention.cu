/*
 * Paged-cache attention on the GPU: storing new keys/values into their slots (pk_kv_store), and
 * causal GQA attention of each token over its own sequence's cache (pk_attention).
 *
 * Attention: one block per (token, kv head, chunk of that kv head's query heads). A block
 * serves the group of query heads that share the kv head, so each cached key and value row is
 * read once per group (GQA). It walks the token's keys 0..p in tiles of `tile` keys: the tile's
 * K rows (and V rows, unless values are a column view of the keys, as in absorbed MLA) are
 * gathered through the block table into shared memory as fp32, the group's scores are computed
 * from shared memory, and an online softmax (running max m, running sum l, rescaling of the
 * fp32 accumulator) folds the tile into the output, FlashAttention style. Prefill and decode
 * tokens of many sequences mix freely: each block reads only its own token's position and
 * block-table row. Tokens of one prefill re-read the same keys (one block per token); the
 * query-tiled prefill kernel and split-KV decode are the speed work of issue 5 and slot in
 * as other kernels behind the same entry point.
 *
 * Data checks happen on the device: a token whose position, block-table row or block ids are
 * out of range gets NaN outputs (kv_store: nothing stored) and the first such token is reported
 * by pk_synchronize.
 */
#include "kernels/cuda/cuda_internal.h"

#include <math.h>

static constexpr int ATT_THREADS = 256;
static constexpr int ATT_TILE = 32; /* keys per shared-memory tile */
static constexpr int STORE_THREADS = 128;

struct batch_view {
    const int32_t *positions;
    const int32_t *seq_rows;
    const int32_t *tables;
    int64_t table_stride, table_rows, table_width;
    int32_t block_size;
    int64_t n_blocks; /* blocks in the cache planes */
};

static batch_view make_batch_view(const pk_token_batch *b, const pk_tensor *cache)
{
    batch_view v;
    v.positions = (const int32_t *)b->positions.data;
    v.seq_rows = (const int32_t *)b->seq_rows.data;
    v.tables = (const int32_t *)b->block_tables.data;
    v.table_stride = b->block_tables.stride;
    v.table_rows = b->block_tables.rows;
    v.table_width = b->block_tables.cols;
    v.block_size = b->block_size;
    v.n_blocks = cache->rows / b->block_size;
    return v;
}

/* Checks token t's position, table row and the block holding its position, as the CPU's
 * check_token; on success *pos and *table describe it. `report`: this thread records the
 * error. */
__device__ bool token_ok(const batch_view &b, int64_t t, int op, long long *info, bool report,
                         int64_t *pos, const int32_t **table)
{
    int64_t p = b.positions[t], row = b.seq_rows[t];
    if (p < 0) {
        if (report)
            pk_report(info, op, PK_CUDA_BAD_POSITION, t, p, 0, 0);
        return false;
    }
    if (row < 0 || row >= b.table_rows) {
        if (report)
            pk_report(info, op, PK_CUDA_BAD_SEQ_ROW, t, row, b.table_rows, 0);
        return false;
    }
    int64_t last = p / b.block_size;
    if (last >= b.table_width) {
        if (report)
            pk_report(info, op, PK_CUDA_BAD_TABLE_SPAN, t, p, last, b.table_width);
        return false;
    }
    const int32_t *tab = b.tables + row * b.table_stride;
    if (tab[last] < 0 || tab[last] >= b.n_blocks) {
        if (report)
            pk_report(info, op, PK_CUDA_BAD_BLOCK_ID, t, tab[last], b.n_blocks, 0);
        return false;
    }
    *pos = p;
    *table = tab;
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* kv_store                                                                                   */
/* ------------------------------------------------------------------------------------------ */

__global__ void kv_store_kernel(void *k_cache, int64_t kcs, bool k_bf16, const float *k_new,
                                int64_t kns, int64_t k_width, void *v_cache, int64_t vcs,
                                bool v_bf16, const float *v_new, int64_t vns, int64_t v_width,
                                batch_view b, int64_t T, long long *info)
{
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        int64_t pos;
        const int32_t *table;
        if (!token_ok(b, t, PK_CUDA_OP_KV_STORE, info, threadIdx.x == 0, &pos, &table))
            continue;
        int64_t slot = (int64_t)table[pos / b.block_size] * b.block_size + pos % b.block_size;
        void *kr = (char *)k_cache + (size_t)(slot * kcs) * (k_bf16 ? 2 : 4);
        for (int64_t c = threadIdx.x; c < k_width; c += blockDim.x)
            pk_store(kr, k_bf16, c, k_new[t * kns + c]);
        if (v_new != NULL) {
            void *vr = (char *)v_cache + (size_t)(slot * vcs) * (v_bf16 ? 2 : 4);
            for (int64_t c = threadIdx.x; c < v_width; c += blockDim.x)
                pk_store(vr, v_bf16, c, v_new[t * vns + c]);
        }
    }
}

pio_status pk_cuda_kv_store(pk_context *ctx, const pk_tensor *k_cache, const pk_tensor *v_cache,
                            const pk_tensor *k_new, const pk_tensor *v_new,
                            const pk_token_batch *batch, const pk_attention_params *params,
                            pio_error *err)
{
    static const char op[] = "pk_kv_store";
    (void)params;
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || k_new->rows == 0)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    int64_t T = k_new->rows;
    unsigned grid = (unsigned)(T < (1 << 20) ? T : (1 << 20));
    kv_store_kernel<<<grid, STORE_THREADS, 0, st->stream>>>(
        k_cache->data, k_cache->stride, pk_is_bf16(k_cache), (const float *)k_new->data,
        k_new->stride, k_new->cols, v_new != NULL ? v_cache->data : NULL,
        v_new != NULL ? v_cache->stride : 0, v_new != NULL && pk_is_bf16(v_cache),
        v_new != NULL ? (const float *)v_new->data : NULL, v_new != NULL ? v_new->stride : 0,
        v_new != NULL ? v_new->cols : 0, make_batch_view(batch, k_cache), T, st->err_info_dev);
    return pk_cuda_check_launch(ctx, op, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Attention                                                                                  */
/* ------------------------------------------------------------------------------------------ */

struct attn_args {
    float *out;
    int64_t out_stride;
    const float *q;
    int64_t q_stride;
    const void *k;
    int64_t k_stride;
    const void *v;
    int64_t v_stride;
    bool k_bf16, v_bf16;
    bool v_in_k; /* values are the first v_head_dim columns of the key tile already loaded */
    batch_view b;
    int group;   /* query heads per kv head */
    int heads;   /* query heads per block (a chunk of the group) */
    int head_dim, v_head_dim, tile;
    float scale;
    long long *info;
};

/* Shared memory of one block, in floats. */
static size_t attention_smem_floats(int heads, int head_dim, int v_head_dim, int tile,
                                    bool v_in_k)
{
    size_t k_stride = (size_t)head_dim + 1; /* padded: score threads read different rows */
    return (size_t)heads * head_dim + (size_t)heads * v_head_dim + (size_t)tile * k_stride +
           (v_in_k ? 0 : (size_t)tile * v_head_dim) + (size_t)heads * tile + 3 * (size_t)heads;
}

__global__ void __launch_bounds__(ATT_THREADS) attention_kernel(attn_args a)
{
    extern __shared__ float sm[];
    const int64_t t = blockIdx.x;
    const int kvh = blockIdx.y;
    const int first_in_group = blockIdx.z * a.heads;
    const int hn = min(a.heads, a.group - first_in_group);
    const int h_first = kvh * a.group + first_in_group;
    const int hd = a.head_dim, vhd = a.v_head_dim, tile = a.tile, kst = hd + 1;

    float *q_s = sm;                                   /* [heads][hd] */
    float *acc_s = q_s + a.heads * hd;                 /* [heads][vhd] */
    float *k_s = acc_s + a.heads * vhd;                /* [tile][hd + 1] */
    float *v_s = k_s + tile * kst;                     /* [tile][vhd] unless v_in_k */
    float *p_s = v_s + (a.v_in_k ? 0 : tile * vhd);    /* [heads][tile] */
    float *m_s = p_s + a.heads * tile, *l_s = m_s + a.heads, *c_s = l_s + a.heads;

    int64_t pos = 0;
    const int32_t *table = NULL;
    bool ok = token_ok(a.b, t, PK_CUDA_OP_ATTENTION, a.info, threadIdx.x == 0, &pos, &table);
    bool bad_prefix = false;
    if (ok) /* every block before the one holding pos must be a real block too */
        for (int64_t i = threadIdx.x; i < pos / a.b.block_size; i += blockDim.x)
            if (table[i] < 0 || table[i] >= a.b.n_blocks) {
                bad_prefix = true;
                pk_report(a.info, PK_CUDA_OP_ATTENTION, PK_CUDA_BAD_BLOCK_ID, t, table[i],
                          a.b.n_blocks, 0);
            }
    float *o = a.out + t * a.out_stride + (int64_t)h_first * vhd;
    if (__syncthreads_or(!ok || bad_prefix)) {
        for (int idx = threadIdx.x; idx < hn * vhd; idx += blockDim.x)
            o[idx] = __int_as_float(0x7fc00000); /* NaN */
        return;
    }

    const float *qr = a.q + t * a.q_stride + (int64_t)h_first * hd;
    for (int idx = threadIdx.x; idx < hn * hd; idx += blockDim.x)
        q_s[idx] = qr[idx];
    for (int idx = threadIdx.x; idx < hn * vhd; idx += blockDim.x)
        acc_s[idx] = 0.0f;
    for (int g = threadIdx.x; g < hn; g += blockDim.x) {
        m_s[g] = -INFINITY;
        l_s[g] = 0.0f;
    }
    const size_t k_elem = a.k_bf16 ? 2 : 4, v_elem = a.v_bf16 ? 2 : 4;
    const int bs = a.b.block_size;
    const int64_t n_keys = pos + 1;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    __syncthreads();

    for (int64_t j0 = 0; j0 < n_keys; j0 += tile) {
        const int nt = (int)min((int64_t)tile, n_keys - j0);
        /* Gather the tile's keys (and values) through the block table. */
        for (int idx = threadIdx.x; idx < nt * hd; idx += blockDim.x) {
            int j = idx / hd, d = idx % hd;
            int64_t key = j0 + j;
            int64_t slot = (int64_t)table[key / bs] * bs + key % bs;
            const void *row = (const char *)a.k + (size_t)(slot * a.k_stride) * k_elem;
            k_s[j * kst + d] = pk_load(row, a.k_bf16, (int64_t)kvh * hd + d);
        }
        if (!a.v_in_k)
            for (int idx = threadIdx.x; idx < nt * vhd; idx += blockDim.x) {
                int j = idx / vhd, d = idx % vhd;
                int64_t key = j0 + j;
                int64_t slot = (int64_t)table[key / bs] * bs + key % bs;
                const void *row = (const char *)a.v + (size_t)(slot * a.v_stride) * v_elem;
                v_s[j * vhd + d] = pk_load(row, a.v_bf16, (int64_t)kvh * vhd + d);
            }
        __syncthreads();
        /* Scores of every (head, key) pair of the tile. */
        for (int idx = threadIdx.x; idx < hn * nt; idx += blockDim.x) {
            int g = idx / nt, j = idx % nt;
            const float *qg = q_s + g * hd, *kj = k_s + j * kst;
            float s = 0.0f;
            for (int d = 0; d < hd; d++)
                s = fmaf(qg[d], kj[d], s);
            p_s[g * tile + j] = a.scale * s;
        }
        __syncthreads();
        /* Online softmax: one warp per head. */
        for (int g = warp; g < hn; g += warps) {
            float *pg = p_s + g * tile;
            float mx = -INFINITY;
            for (int j = lane; j < nt; j += 32)
                mx = fmaxf(mx, pg[j]);
            mx = pk_warp_max(mx);
            float m_old = m_s[g], m_new = fmaxf(m_old, mx);
            float sum = 0.0f;
            for (int j = lane; j < nt; j += 32) {
                float e = m_new == -INFINITY ? 0.0f : expf(pg[j] - m_new);
                pg[j] = e;
                sum += e;
            }
            sum = pk_warp_sum(sum);
            float corr = m_old == -INFINITY ? (m_new == -INFINITY ? 1.0f : 0.0f)
                                            : expf(m_old - m_new);
            __syncwarp();
            if (lane == 0) {
                l_s[g] = l_s[g] * corr + sum;
                m_s[g] = m_new;
                c_s[g] = corr;
            }
        }
        __syncthreads();
        /* acc = acc · corr + P · V */
        const float *vt = a.v_in_k ? k_s : v_s;
        const int vst = a.v_in_k ? kst : vhd;
        for (int idx = threadIdx.x; idx < hn * vhd; idx += blockDim.x) {
            int g = idx / vhd, d = idx % vhd;
            const float *pg = p_s + g * tile;
            float acc = acc_s[idx] * c_s[g];
            for (int j = 0; j < nt; j++)
                acc = fmaf(pg[j], vt[j * vst + d], acc);
            acc_s[idx] = acc;
        }
        __syncthreads();
    }
    for (int idx = threadIdx.x; idx < hn * vhd; idx += blockDim.x)
        o[idx] = acc_s[idx] / l_s[idx / vhd];
}

pio_status pk_cuda_attention_init(pk_context *ctx, pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    cudaError_t e = cudaFuncSetAttribute(attention_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         st->max_smem_optin);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return pio_error_set(err, PIO_ERR_DEVICE,
                             "pk_context_create: cannot raise the attention kernel's shared "
                             "memory to %d bytes: %s", st->max_smem_optin, cudaGetErrorString(e));
    }
    return PIO_OK;
}

pio_status pk_cuda_attention(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                             const pk_tensor *k_cache, const pk_tensor *v_cache,
                             const pk_token_batch *batch, const pk_attention_params *params,
                             pio_error *err)
{
    static const char op[] = "pk_attention";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || q->rows == 0)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    attn_args a;
    a.out = (float *)out->data;
    a.out_stride = out->stride;
    a.q = (const float *)q->data;
    a.q_stride = q->stride;
    a.k = k_cache->data;
    a.k_stride = k_cache->stride;
    a.v = v_cache->data;
    a.v_stride = v_cache->stride;
    a.k_bf16 = pk_is_bf16(k_cache);
    a.v_bf16 = pk_is_bf16(v_cache);
    a.b = make_batch_view(batch, k_cache);
    a.group = params->n_q_heads / params->n_kv_heads;
    a.head_dim = params->head_dim;
    a.v_head_dim = params->v_head_dim;
    a.scale = params->scale;
    a.info = st->err_info_dev;
    /* With one kv head, values that are the first v_head_dim columns of the key entries are
     * taken from the key tile instead of being read again. */
    a.v_in_k = params->n_kv_heads == 1 && v_cache->data == k_cache->data &&
               v_cache->stride == k_cache->stride && v_cache->dtype == k_cache->dtype &&
               params->v_head_dim <= params->head_dim;

    /* As many of the group's heads per block as shared memory allows, in tiles of ATT_TILE
     * keys (fewer for very wide heads). */
    size_t budget = (size_t)st->max_smem_optin / sizeof(float);
    int heads = 0, tile = ATT_TILE;
    for (; tile >= 4; tile /= 2) {
        size_t fixed = attention_smem_floats(0, a.head_dim, a.v_head_dim, tile, a.v_in_k);
        size_t per_head = attention_smem_floats(1, a.head_dim, a.v_head_dim, tile, a.v_in_k) -
                          fixed;
        if (fixed + per_head <= budget) {
            size_t fit = (budget - fixed) / per_head;
            heads = (int)(fit < (size_t)a.group ? fit : (size_t)a.group);
            break;
        }
    }
    if (heads < 1)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: head_dim %d / v_head_dim %d do not fit the cuda attention "
                             "kernel's shared memory", op, a.head_dim, a.v_head_dim);
    a.heads = heads;
    a.tile = tile;
    size_t smem = attention_smem_floats(heads, a.head_dim, a.v_head_dim, tile, a.v_in_k) *
                  sizeof(float);
    int chunks = (a.group + heads - 1) / heads;
    if (q->rows > INT32_MAX || params->n_kv_heads > 65535 || chunks > 65535)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: batch too large for one launch", op);
    dim3 grid((unsigned)q->rows, (unsigned)params->n_kv_heads, (unsigned)chunks);
    attention_kernel<<<grid, ATT_THREADS, smem, st->stream>>>(a);
    return pk_cuda_check_launch(ctx, op, err);
}
