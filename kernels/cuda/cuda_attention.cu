/*
 * Paged-cache attention on the GPU: storing new keys/values into their slots (pk_kv_store), and
 * causal GQA attention of each token over its own sequence's cache (pk_attention).
 *
 * pk_attention has four kernels behind one entry point. The choice uses only what the host
 * knows (T = q->rows, head shapes, cache dtypes, pointer alignment), never positions or block
 * tables, so a launch captured in a CUDA graph stays right when it is replayed with other
 * positions:
 *
 *   0. tc_decode_kernel (tensor cores, fp32 results) - T <= DECODE_MAX_TOKENS over BF16 K and V
 *      with head_dim = v_head_dim in {64, 128} (Qwen3 and most decoders). Grid (token, kv head,
 *      head chunk of 8 x split), 4 warps (8 for a batch of one token: DEC_WARPS_ONE_TOKEN); the
 *      warps take the split's 16-key tiles in turn:
 *      S = Q·Kᵀ and O += Vᵀ·Pᵀ with mma.sync m16n8k16, laid out so that the score fragment of a
 *      lane is the Pᵀ fragment it needs (no shuffles, no shared memory in the loop), K and V
 *      fragments straight from 16-byte loads (V's paired up with byte permutes), the next tile's
 *      block-table lookups issued before the current tile computes. fp32 math kept: q and P are
 *      split into three bf16 terms (K and V are bf16 already; products are exact), each tile's
 *      tensor-core sums start from zero and are added to fp32 accumulators with FMAs. Splits
 *      S = clamp(ceil(2·3·SMs / (T·n_kv·chunks)), 1, 32) for a batch, clamp(floor(SMs / (n_kv·
 *      chunks)), 1, 32) for one token (one wave of its blocks, one an SM); a split
 *      holds max(ceil((pos + 1) / S), min_split_keys) keys rounded up to 16 a warp (one split up to
 *      DEC_ONE_SPLIT_KEYS keys: no merge), so short contexts use few splits and the empty ones
 *      return at once. The token check reads no block id (every one read is checked where
 *      it is read), so the first tile's block-table reads start with it. The merge is fused: with one active split the block writes
 *      the output, otherwise every split writes (m, l, acc), fences and bumps the token's
 *      counter in the workspace, and the last to arrive merges all partials in split order
 *      (deterministic; its loads issued together) and puts the counter back to 0 for the next
 *      launch or graph replay.
 *      Bytes as kernel 1 (the partials only where several splits hold keys).
      The same kernel also runs pk_qk_norm_rope_attention for decode batches whose tokens are
      of distinct sequences (qk_fuse): every block loads its query heads' raw rows, normalises
      and rotates them into its q fragments (pk_head_norm_rope, cos/sin once per lane), and the
      block whose split holds the token's position normalises, rotates and stores the token's
      key and its value in that slot before its warps read it (the tile holding the slot is
      read through the coherent path, every other tile through the read-only one). This
      saves the QK-norm/RoPE/store launch of the step; no other block reads that slot, which
      is why the batch must promise one token a sequence.
 *   1. split_kernel (split-KV, fp32 math) - decode shapes kernel 0 does not take, and
 *      everything the tensor cores do not take.
 *      Grid (token, kv head, split x chunk of the group's query heads), 128 threads. The number
 *      of splits S comes from T, n_kv_heads and the SM count only (about SPLIT_BLOCKS_PER_SM
 *      blocks per SM, at most SPLIT_MAX_SPLITS, and 1 once T > DECODE_MAX_TOKENS); each split
 *      derives its key range on the device from the token's position: ceil((pos + 1) / S)
 *      keys rounded up to the block's key tile, so short contexts leave the last splits empty
 *      (they write l = 0). A block serves up to 8 query heads of one kv head (all of them for
 *      GQA groups up to 8), so each K/V row is read once per group. It reads the BF16 or F32
 *      cache directly with 16-byte loads: a "lane group" of L lanes (a power of two covering the
 *      row's 16-byte chunks) takes one key, each lane holds 8 bf16 / 4 f32 of the row, dots are
 *      summed with shuffles inside the group; every lane group has 4 keys (2 for rows wider
 *      than 32 chunks) in flight per step and keeps its own online softmax (m, l, fp32
 *      accumulator); the block merges its lane groups at the end. With S = 1 the block writes
 *      the output; otherwise (m, l, unnormalised acc) go to the attention workspace and
 *      combine_kernel (a block per token and query head) merges the splits.
 *      Bytes: each token's K and V rows once per kv head, Σ (pos+1)·n_kv·(hd+vhd)·elem, plus
 *      T·n_q·S·(vhd+2)·4 twice for the partials; FLOPs 2·Σ (pos+1)·n_q·(hd+vhd), i.e.
 *      about 2·group/elem FLOP per byte: bound by memory bandwidth (and, at short contexts, by
 *      launch latency). Needs 16-byte aligned cache rows and heads (host-checked) and rows of
 *      at most 64 chunks (512 bf16 / 256 f32 wide).
 *   2. tc_prefill_kernel (FlashAttention-2 style, tensor cores) - T > DECODE_MAX_TOKENS, BF16
 *      K and V planes, head_dim = v_head_dim in {64, 128}, a group size dividing 128. Rows are
 *      (token, query head of the group) pairs, t·group + g, so a block of TC_ROWS = 128 rows
 *      holds 128 / group consecutive tokens with all their query heads of one kv head: each K/V
 *      tile it loads serves 128 rows. A 1-D grid of (row tile, kv head) blocks, the longest
 *      tiles of every head first (balance under the causal mask), 8 warps of 16 rows, two
 *      blocks an SM (128 registers: the warps' Q fragments are re-read from shared memory at
 *      every tile instead of held). A block
 *      first checks on the device that its tokens are valid, share one sequence and that
 *      every block id up to their largest position is in range ("uniform"); then it walks
 *      keys 0..max position in tiles of 64, double-buffered with cp.async through the block
 *      table into shared memory as bf16, S = Q·Kᵀ and O += P·V with mma.sync m16n8k16 (bf16
 *      in, fp32 accumulate; Q rounded to bf16 once, P rounded to bf16 per tile), online
 *      softmax in fp32 registers (exp2 by one ex2.approx.ftz), the causal mask per row (key <=
 *      that row's position) on the tiles that cross a row's position, warps past all their
 *      rows' positions skipping the tile. It
 *      records per tile whether it did the work (tile_done, in the scratch); a tile that is
 *      not uniform (sequences mixed within it, a bad token) is left to split_kernel, launched
 *      right after in "fallback" mode: a token loop that skips done tiles, one block per
 *      (token, kv head) for the rest, with the per-token checks and NaN outputs. Mixed batches
 *      (a prefill chunk plus decode tokens of other sequences) thus keep one block per decode
 *      token and kv head instead of one block per 64/group of them.
 *      FLOPs 2·Σ_rows (pos+1)·(hd+vhd) plus the masked part of the last key tile; K/V bytes
 *      from L2 n_kv·Σ_tiles (max pos+1)·(hd+vhd)·2 (each block re-reads its prefix; HBM sees
 *      it about once). Limits: mma.sync (no wgmma/TMA), exp2 throughput, L2 bandwidth of the
 *      re-reads, 104 KB of shared memory (two blocks per SM) at head_dim 128.
 *   3. attention_kernel (the first, general kernel) - what neither takes: values that are a
 *      column view of one kv head's keys (absorbed MLA, v_in_k: it reuses the key tile),
 *      unaligned cache rows or heads, rows wider than the split kernel's registers, K and V of
 *      different dtypes. One block per (token, kv head, chunk of query heads) walks all keys
 *      with fp32 shared-memory tiles (see below).
 *
 * Programmatic dependent launch: the kernels that end a decode step's attention (0, 1 and the
 * combine kernel) call pk_pdl_launch_dependents() first, so the o_proj GEMV launched after them
 * as a dependent can start loading its weights (it waits for their results with pk_pdl_wait).
 * The tensor-core decode kernel (0) is itself launched as a dependent of the kernel before it
 * (the QK-norm/RoPE/store kernel, or fused, the q/k/v projection) and waits for it first thing
 * (its launch then overlaps that kernel's end).
 *
 * Numerics: kernels 0, 1 and 3 are fp32 (the CPU's results to ~1e-6). Kernel 2 rounds q
 * and the softmax weights to bf16 (as a bf16 model does): 1-3e-3 relative.
 *
 * The graph rule: no path allocates or waits on the host once its workspace has grown. Split
 * partials, T·n_q·S·(vhd+2)·4 bytes (S > 1 only when T <= DECODE_MAX_TOKENS), live in the
 * attention workspace (pk_cuda_attention_workspace) after ATTN_COUNTER_BYTES of split counters
 * (zeroed when the workspace is allocated, then kept at 0 by the kernel); the first such call
 * grows it to the most any decode batch of that shape needs (a few MB), so graphs recorded for
 * other batch sizes later keep its address; the tensor-core kernel's tile_done flags (4 bytes
 * per row tile) use the context scratch (pk_cuda_scratch), which only prefill-sized calls
 * touch.
 *
 * Data checks happen on the device: a token whose position, block-table row or block ids are
 * out of range gets NaN outputs (kv_store: nothing stored) and the first such token is reported
 * by pk_synchronize.
 */
#include "kernels/cuda/cuda_internal.h"

#include <math.h>
#include <stdlib.h>

static constexpr int ATT_THREADS = 256;
static constexpr int ATT_TILE = 32; /* keys per shared-memory tile */
static constexpr int STORE_THREADS = 128;

/* Split-KV kernel. */
static constexpr int SPLIT_WARPS = 4;
static constexpr int SPLIT_THREADS = SPLIT_WARPS * 32;
static constexpr int SPLIT_MIN_LANES = 4;      /* so a block has at most 32 lane groups */
static constexpr int SPLIT_MAX_GROUPS = SPLIT_THREADS / SPLIT_MIN_LANES;
static constexpr int SPLIT_MAX_SPLITS = 32;    /* the combine kernel merges them in one warp */
static constexpr int SPLIT_BLOCKS_PER_SM = 4;  /* blocks the split count aims for */
static constexpr int DECODE_MAX_TOKENS = 64;   /* up to here split_kernel takes every batch */
static constexpr int FALLBACK_BLOCKS_X = 512;  /* token slots of the fallback launch */
static constexpr int COMBINE_THREADS = 128;

/* Tensor-core decode kernel. */
static constexpr int DEC_HEADS = 8;       /* query heads per block */
static constexpr int DEC_KEYS = 16;       /* keys per warp step */
static constexpr int DEC_SPLIT_WAVES = 2; /* waves of resident blocks a batch's splits aim for */
/* Warps of a tc_decode_kernel block: a batch's blocks take 4 at 3 blocks an SM (its 158
 * registers a thread); one token's take 8 at one block an SM, so each warp walks half the tiles
 * of its split, a split holds twice the keys and there are fewer splits to merge. Measured on
 * an H200 (docs/KERNELS.md, "Eleventh session"), Qwen3-4B with 8 against 4: tg128 +2.4 %,
 * depth 4096 +6.6 %, one sequence after 512 +7.6 %; batch 8 -8.9 %, batch 64 -2.7 %. */
static constexpr int DEC_WARPS = 4;
static constexpr int DEC_WARPS_ONE_TOKEN = 8;
template <int W> struct dec_shape {
    static constexpr int THREADS = W * 32;
    static constexpr int SPLIT_KEYS = W * DEC_KEYS;                /* a split's keys: a multiple */
    static constexpr int BLOCKS_PER_SM = W == DEC_WARPS ? 3 : 1;   /* resident (registers) */
    static constexpr int FUSE_ITEMS = (DEC_HEADS + 2 + W - 1) / W; /* fused rows a warp */
};
/* Contexts of up to DEC_ONE_SPLIT_KEYS keys take one split (no partials, no merge); longer ones
 * splits of at least DEC_MIN_SPLIT_KEYS keys, DEC_MIN_SPLIT_KEYS_ONE_TOKEN for a batch of one
 * token (one 16-key tile a warp of its 8). A larger minimum means fewer splits to merge but
 * more 16-key tiles a warp walks, one HBM round trip each. Measured (docs/KERNELS.md): on an
 * H100, B = 1 at depth 640 13.3 us at 64, 14.0 at 128, 16.7 at 256, 25.3 at 640 (4 warps);
 * whole Qwen3-4B steps at 128 against 64: tg128 from an empty context +1 %, batch 8 after 512
 * tokens +4.5 %. On an H200 (tenth session, 4 warps), 64 against 128 for one token after 512:
 * Qwen3-4B and Qwen3-Coder +1.5 %; batch 8 -6.8 % (4B); below 128 keys one split stays best
 * (Coder tg128 -1.1 % with two). */
static constexpr int DEC_ONE_SPLIT_KEYS = 128;
static constexpr int DEC_MIN_SPLIT_KEYS = 128;
static constexpr int DEC_MIN_SPLIT_KEYS_ONE_TOKEN = 128;
/* The attention workspace starts with one split counter per (token, kv head, head chunk). */
static constexpr int ATTN_COUNTERS = 16384;
static constexpr size_t ATTN_COUNTER_BYTES = sizeof(unsigned) * ATTN_COUNTERS;

/* Tensor-core prefill kernel. */
static constexpr int TC_ROWS = 128; /* (token, head) rows per block */
static constexpr int TC_KEYS = 64;  /* keys per K/V tile */
static constexpr int TC_WARPS = 8;  /* 16 rows each */
static constexpr int TC_BLOCKS_PER_SM = 2; /* 128 registers a thread, 104 KB of shared memory */
static constexpr int TC_THREADS = TC_WARPS * 32;
static constexpr int TC_PAD = 8;    /* bf16 per shared row: rows 16 bytes apart mod 128 */

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
/* Attention, general kernel (v_in_k, unaligned or very wide heads, mixed dtypes)             */
/* ------------------------------------------------------------------------------------------ */

/*
 * One block per (token, kv head, chunk of that kv head's query heads). A block serves the
 * group of query heads that share the kv head, so each cached key and value row is read once
 * per group (GQA). It walks the token's keys 0..p in tiles of `tile` keys: the tile's K rows
 * (and V rows, unless values are a column view of the keys, as in absorbed MLA) are gathered
 * through the block table into shared memory as fp32, the group's scores are computed from
 * shared memory, and an online softmax folds the tile into the output.
 */

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

/* ------------------------------------------------------------------------------------------ */
/* Attention, split-KV kernel (decode; fp32 fallback of the tensor-core path)                 */
/* ------------------------------------------------------------------------------------------ */

struct split_args {
    float *out;
    int64_t out_stride;
    const float *q;
    int64_t q_stride;
    const char *k, *v; /* kv head 0 of slot 0 */
    int64_t k_row_bytes, v_row_bytes;
    batch_view b;
    int64_t T;
    int n_q, group, head_dim, v_head_dim;
    int lanes;              /* lanes per key: a power of two, SPLIT_MIN_LANES..32 */
    int k_chunks, v_chunks; /* 16-byte chunks of a key head / value head row */
    int splits;
    int min_split_keys;     /* tc_decode_kernel: fewest keys of a split (short contexts: one) */
    int settled;            /* tc_decode_kernel: pk_token_batch.settled */
    float scale_log2;       /* scale · log2(e): the softmax runs on exp2 */
    float *part_acc;        /* splits > 1: [T][n_q][splits][v_head_dim] unnormalised outputs */
    float2 *part_ml;        /* splits > 1: [T][n_q][splits] (max, sum) in the log2 domain */
    unsigned *counters;     /* tc_decode_kernel, splits > 1: [T][n_kv][head chunks], all 0 */
    const int *tile_done;   /* fallback mode: tiles already done by the tensor-core kernel */
    int tile_tokens;        /* tokens per such tile */
    long long *info;
};

/* Shared memory of a split_kernel block, in bytes. */
static size_t split_smem_bytes(int heads, int head_dim, int v_head_dim)
{
    return sizeof(float) * ((size_t)heads * (head_dim + v_head_dim + 2 * SPLIT_MAX_GROUPS + 2));
}

template <bool BF16> struct cache_chunk; /* 16 bytes of a cache row, widened to floats */
template <> struct cache_chunk<true> {
    static constexpr int elems = 8;
    static __device__ __forceinline__ void widen(const uint4 &u, float *f)
    {
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};
template <> struct cache_chunk<false> {
    static constexpr int elems = 4;
    static __device__ __forceinline__ void widen(const uint4 &u, float *f)
    {
        f[0] = __uint_as_float(u.x);
        f[1] = __uint_as_float(u.y);
        f[2] = __uint_as_float(u.z);
        f[3] = __uint_as_float(u.w);
    }
};

/* Checks the block ids a split reads (keys [start, end)); reports a bad one. */
__device__ bool split_blocks_ok(const batch_view &b, int64_t t, const int32_t *table,
                                int64_t start, int64_t end, long long *info)
{
    bool ok = true;
    if (start < end)
        for (int64_t i = start / b.block_size + threadIdx.x; i <= (end - 1) / b.block_size;
             i += blockDim.x)
            if (table[i] < 0 || table[i] >= b.n_blocks) {
                ok = false;
                pk_report(info, PK_CUDA_OP_ATTENTION, PK_CUDA_BAD_BLOCK_ID, t, table[i],
                          b.n_blocks, 0);
            }
    return ok;
}

/* Token t, kv head kvh, query heads g0..g0+hn-1 of its group, keys of split `split`. Called by
 * the whole block; ends with the shared memory free for the next token. */
template <bool BF16, int HB, int NCH>
__device__ void split_token(const split_args &a, int64_t t, int kvh, int split, int g0, int hn)
{
    using chunk = cache_chunk<BF16>;
    constexpr int E = chunk::elems, P = E / 4; /* floats per chunk, float4s per chunk */
    constexpr int NK = NCH == 1 ? 4 : 2;       /* keys in flight per lane group */
    constexpr int ELEM = BF16 ? 2 : 4;
    extern __shared__ float4 split_smem[];
    float4 *q4 = split_smem;                                /* [HB][P][k_chunks] */
    float *acc_s = (float *)split_smem + HB * a.head_dim;   /* [HB][v_head_dim] */
    float *grp_m = acc_s + HB * a.v_head_dim;               /* [HB][SPLIT_MAX_GROUPS] */
    float *grp_l = grp_m + HB * SPLIT_MAX_GROUPS;
    float *tot_m = grp_l + HB * SPLIT_MAX_GROUPS, *tot_l = tot_m + HB;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int L = a.lanes, sub = lane & (L - 1), gid = tid / L, groups = SPLIT_THREADS / L;
    const int kc = a.k_chunks, vc = a.v_chunks, hd = a.head_dim, vhd = a.v_head_dim;
    const int h_first = kvh * a.group + g0; /* first query head of this block */
    const int64_t key_tile = (int64_t)groups * NK;

    int64_t pos = 0, start = 0, end = 0;
    const int32_t *table = NULL;
    bool ok = token_ok(a.b, t, PK_CUDA_OP_ATTENTION, a.info, tid == 0, &pos, &table);
    if (ok) {
        /* This split's keys: ceil((pos + 1) / splits), whole key tiles. */
        int64_t per = (pos + a.splits) / a.splits;
        per = (per + key_tile - 1) / key_tile * key_tile;
        start = min(pos + 1, split * per);
        end = min(pos + 1, start + per);
        ok = split_blocks_ok(a.b, t, table, start, end, a.info);
    }
    const int64_t part = (t * a.n_q + h_first) * a.splits + split; /* + h·splits */
    if (__syncthreads_or(!ok)) {
        if (a.splits == 1)
            for (int idx = tid; idx < hn * vhd; idx += SPLIT_THREADS)
                a.out[t * a.out_stride + (int64_t)h_first * vhd + idx] =
                    __int_as_float(0x7fc00000); /* NaN */
        else if (tid < hn)
            a.part_ml[part + (int64_t)tid * a.splits] =
                make_float2(-INFINITY, __int_as_float(0x7fc00000));
        return;
    }
    if (start >= end) { /* a split past the end of a short context */
        if (tid < hn)
            a.part_ml[part + (int64_t)tid * a.splits] = make_float2(-INFINITY, 0.0f);
        return;
    }

    /* q of the block's heads, prescaled, laid out so that lane `sub` reads chunk `sub` as
     * consecutive float4s (no bank conflicts). */
    const float *qr = a.q + t * a.q_stride + (int64_t)h_first * hd;
    for (int idx = tid; idx < hn * hd; idx += SPLIT_THREADS) {
        int h = idx / hd, d = idx - h * hd, c = d / E, e = d - c * E;
        ((float *)q4)[((h * P + e / 4) * kc + c) * 4 + (e & 3)] = qr[idx] * a.scale_log2;
    }
    __syncthreads();

    float m[HB], l[HB], acc[HB][NCH][E];
#pragma unroll
    for (int h = 0; h < HB; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
#pragma unroll
        for (int n = 0; n < NCH; n++)
#pragma unroll
            for (int e = 0; e < E; e++)
                acc[h][n][e] = 0.0f;
    }
    const char *k_head = a.k + (int64_t)kvh * hd * ELEM, *v_head = a.v + (int64_t)kvh * vhd * ELEM;
    const uint4 zero = make_uint4(0, 0, 0, 0);

    for (int64_t j0 = start; j0 < end; j0 += key_tile) {
        /* Lane group gid takes keys j0 + k·groups + gid: all loads first, then the math. */
        uint4 kr[NK][NCH], vr[NK][NCH];
        bool valid[NK];
#pragma unroll
        for (int k = 0; k < NK; k++) {
            int64_t key = j0 + (int64_t)k * groups + gid;
            valid[k] = key < end;
            const char *krow = k_head, *vrow = v_head;
            if (valid[k]) {
                int64_t slot = slot_of(a.b, table, (int)key);
                krow += slot * a.k_row_bytes;
                vrow += slot * a.v_row_bytes;
            }
#pragma unroll
            for (int n = 0; n < NCH; n++) {
                int c = sub + n * L;
                kr[k][n] = valid[k] && c < kc ? __ldg((const uint4 *)(krow + c * 16)) : zero;
                vr[k][n] = valid[k] && c < vc ? __ldg((const uint4 *)(vrow + c * 16)) : zero;
            }
        }
#pragma unroll
        for (int h = 0; h < HB; h++) {
            if (h >= hn) /* block-uniform */
                break;
            float s[NK];
#pragma unroll
            for (int k = 0; k < NK; k++) {
                s[k] = 0.0f;
#pragma unroll
                for (int n = 0; n < NCH; n++) {
                    int c = sub + n * L;
                    if (c < kc) {
                        float kf[E];
                        chunk::widen(kr[k][n], kf);
#pragma unroll
                        for (int p = 0; p < P; p++) {
                            float4 qv = q4[(h * P + p) * kc + c];
                            s[k] = fmaf(qv.x, kf[4 * p], s[k]);
                            s[k] = fmaf(qv.y, kf[4 * p + 1], s[k]);
                            s[k] = fmaf(qv.z, kf[4 * p + 2], s[k]);
                            s[k] = fmaf(qv.w, kf[4 * p + 3], s[k]);
                        }
                    }
                }
                for (int o = L >> 1; o > 0; o >>= 1)
                    s[k] += __shfl_xor_sync(0xffffffffu, s[k], o);
            }
            /* Online softmax of this lane group (log2 domain). */
            float mx = -INFINITY;
#pragma unroll
            for (int k = 0; k < NK; k++) {
                s[k] = valid[k] ? s[k] : -INFINITY;
                mx = fmaxf(mx, s[k]);
            }
            float m_new = fmaxf(m[h], mx);
            float base = m_new == -INFINITY ? 0.0f : m_new; /* nothing seen yet: all terms 0 */
            float corr = exp2f(m[h] - base), p[NK], psum = 0.0f;
#pragma unroll
            for (int k = 0; k < NK; k++) {
                p[k] = exp2f(s[k] - base);
                psum += p[k];
            }
            l[h] = l[h] * corr + psum;
            m[h] = m_new;
#pragma unroll
            for (int n = 0; n < NCH; n++) {
                if (sub + n * L >= vc)
                    continue;
                float vf[NK][E];
#pragma unroll
                for (int k = 0; k < NK; k++)
                    chunk::widen(vr[k][n], vf[k]);
#pragma unroll
                for (int e = 0; e < E; e++) {
                    float x = acc[h][n][e] * corr;
#pragma unroll
                    for (int k = 0; k < NK; k++)
                        x = fmaf(p[k], vf[k][e], x);
                    acc[h][n][e] = x;
                }
            }
        }
    }

    /* Merge the lane groups: common max per head, then the accumulators summed in a fixed
     * order (shuffles within a warp, then warp by warp). */
    if (sub == 0)
#pragma unroll
        for (int h = 0; h < HB; h++)
            if (h < hn) {
                grp_m[h * SPLIT_MAX_GROUPS + gid] = m[h];
                grp_l[h * SPLIT_MAX_GROUPS + gid] = l[h];
            }
    __syncthreads();
    if (tid < hn) {
        const float *gm = grp_m + tid * SPLIT_MAX_GROUPS, *gl = grp_l + tid * SPLIT_MAX_GROUPS;
        float mt = -INFINITY, lt = 0.0f;
        for (int g = 0; g < groups; g++)
            mt = fmaxf(mt, gm[g]);
        for (int g = 0; g < groups; g++)
            if (gm[g] != -INFINITY)
                lt += gl[g] * exp2f(gm[g] - mt);
        tot_m[tid] = mt;
        tot_l[tid] = lt;
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < HB; h++) {
        if (h >= hn)
            break;
        float f = m[h] == -INFINITY ? 0.0f : exp2f(m[h] - tot_m[h]);
#pragma unroll
        for (int n = 0; n < NCH; n++)
#pragma unroll
            for (int e = 0; e < E; e++) {
                float x = acc[h][n][e] * f;
                for (int o = L; o < 32; o <<= 1)
                    x += __shfl_xor_sync(0xffffffffu, x, o);
                acc[h][n][e] = x;
            }
    }
    for (int w = 0; w < SPLIT_WARPS; w++) {
        if (warp == w && lane < L)
#pragma unroll
            for (int h = 0; h < HB; h++)
                if (h < hn)
#pragma unroll
                    for (int n = 0; n < NCH; n++) {
                        int c = lane + n * L;
                        if (c < vc)
#pragma unroll
                            for (int e = 0; e < E; e++) {
                                float *dst = acc_s + h * vhd + c * E + e;
                                *dst = (w == 0 ? 0.0f : *dst) + acc[h][n][e];
                            }
                    }
        __syncthreads();
    }

    if (a.splits == 1) {
        float *o = a.out + t * a.out_stride + (int64_t)h_first * vhd;
        for (int idx = tid; idx < hn * vhd; idx += SPLIT_THREADS)
            o[idx] = acc_s[idx] / tot_l[idx / vhd];
    } else {
        for (int idx = tid; idx < hn * vhd; idx += SPLIT_THREADS) {
            int h = idx / vhd;
            a.part_acc[(part + (int64_t)h * a.splits) * vhd + (idx - h * vhd)] = acc_s[idx];
        }
        if (tid < hn)
            a.part_ml[part + (int64_t)tid * a.splits] = make_float2(tot_m[tid], tot_l[tid]);
    }
    __syncthreads(); /* shared memory is reused by the block's next token */
}

/*
 * Grid (token slots, kv heads, splits × head chunks). Block x takes tokens x, x + gridDim.x,
 * ...: all of them when tile_done is NULL, else those whose tile the tensor-core kernel left.
 * Every warp computes the same ballot, so the loop is block-uniform.
 */
template <bool BF16, int HB, int NCH>
__global__ void __launch_bounds__(SPLIT_THREADS) split_kernel(split_args a)
{
    pk_pdl_launch_dependents(); /* the o_proj GEMV may start loading its weights */
    const int kvh = blockIdx.y;
    const int split = (int)(blockIdx.z % (unsigned)a.splits);
    const int g0 = (int)(blockIdx.z / (unsigned)a.splits) * HB;
    const int hn = min(HB, a.group - g0);
    const int lane = threadIdx.x & 31;
    const int64_t stride = gridDim.x;
    for (int64_t base = blockIdx.x; base < a.T; base += stride * 32) {
        int64_t mine = base + lane * stride;
        bool left_to_us = mine < a.T &&
                          (a.tile_done == NULL || __ldg(a.tile_done + mine / a.tile_tokens) == 0);
        unsigned pending = __ballot_sync(0xffffffffu, left_to_us);
        while (pending != 0) {
            int i = __ffs(pending) - 1;
            pending &= pending - 1;
            split_token<BF16, HB, NCH>(a, base + i * stride, kvh, split, g0, hn);
        }
    }
}

/* out[t, h] = Σ_s w_s·acc_s / Σ_s w_s·l_s with w_s = 2^(m_s - max m); NaN if a split saw a bad
 * token or block. Grid (T, n_q). */
__global__ void __launch_bounds__(COMBINE_THREADS)
combine_kernel(float *out, int64_t out_stride, const float *part_acc, const float2 *part_ml,
               int n_q, int v_head_dim, int splits)
{
    __shared__ float w_s[SPLIT_MAX_SPLITS];
    __shared__ float l_total;
    pk_pdl_launch_dependents(); /* the o_proj GEMV may start loading its weights */
    const int64_t t = blockIdx.x;
    const int h = blockIdx.y;
    const int64_t first = (t * n_q + h) * splits;
    if (threadIdx.x < 32) {
        int s = threadIdx.x;
        float2 ml = s < splits ? part_ml[first + s] : make_float2(-INFINITY, 0.0f);
        bool bad = ml.y != ml.y; /* NaN */
        float mt = pk_warp_max(ml.y > 0.0f ? ml.x : -INFINITY);
        float w = ml.y > 0.0f ? exp2f(ml.x - mt) : 0.0f;
        float lt = pk_warp_sum(w * ml.y);
        if (s < splits)
            w_s[s] = w;
        bad = __any_sync(0xffffffffu, bad);
        if (s == 0)
            l_total = bad ? __int_as_float(0x7fc00000) : lt;
    }
    __syncthreads();
    float *o = out + t * out_stride + (int64_t)h * v_head_dim;
    for (int d = threadIdx.x; d < v_head_dim; d += COMBINE_THREADS) {
        float sum = 0.0f;
        for (int s = 0; s < splits; s++)
            if (w_s[s] != 0.0f) /* empty splits wrote no accumulator */
                sum = fmaf(w_s[s], part_acc[(first + s) * v_head_dim + d], sum);
        o[d] = sum / l_total;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Attention, tensor-core prefill kernel                                                      */
/* ------------------------------------------------------------------------------------------ */

struct tc_args {
    float *out;
    int64_t out_stride;
    const float *q;
    int64_t q_stride;
    const char *k, *v; /* kv head 0 of slot 0 */
    int64_t k_row_bytes, v_row_bytes;
    batch_view b;
    int64_t T;
    int group, tile_tokens; /* tile_tokens = TC_ROWS / group */
    unsigned n_tiles, n_kv; /* row tiles, kv heads: the grid is their product */
    float scale_log2;
    int *tile_done;         /* [row tiles]: 1 where this kernel wrote the tile's outputs */
};

template <int HD> static constexpr size_t tc_smem_bytes()
{
    return sizeof(uint16_t) * (size_t)(TC_ROWS + 4 * TC_KEYS) * (HD + TC_PAD);
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); /* hi -> upper half */
    return r;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t *smem, bool trans)
{
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr)
                     : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr)
                     : "memory");
}

/* 2^x with one MUFU instruction; results below 2^-126 become 0 (the prefill kernel rounds
 * them to bf16 weights, where they vanish next to the row's largest weight, 1). */
__device__ __forceinline__ float exp2_ftz(float x)
{
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

/* d += a·b: m16n8k16, bf16 inputs, fp32 accumulators. */
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* 16 bytes global -> shared, asynchronously; zeros when !valid (src is then not read). */
__device__ __forceinline__ void cp_async16(uint16_t *smem, const void *src, bool valid)
{
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(addr), "l"(src),
                 "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;" ::: "memory");
}

__device__ __forceinline__ void cp_async_wait_all_but_one()
{
    asm volatile("cp.async.wait_group 1;" ::: "memory");
}

/*
 * Whether the tile's tokens t0..t0+n_tok-1 can take the tensor-core path: all valid, one
 * sequence, and every block id up to their largest position in range. Called by the whole
 * block. Fills s_pos (each token's position), *s_max_pos, *s_row; *table on success. Reports
 * nothing: the fallback launch checks these tokens one by one.
 */
__device__ bool tc_tile_uniform(const batch_view &b, int64_t t0, int n_tok, int *s_pos,
                                int *s_max_pos, int *s_row, const int32_t **table)
{
    const int tid = threadIdx.x;
    if (tid == 0) {
        *s_max_pos = -1;
        *s_row = b.seq_rows[t0];
    }
    __syncthreads();
    bool bad = false;
    if (tid < n_tok) {
        int64_t p = b.positions[t0 + tid], row = b.seq_rows[t0 + tid];
        bad = p < 0 || row != *s_row || row < 0 || row >= b.table_rows ||
              p / b.block_size >= b.table_width;
        s_pos[tid] = (int)p;
        if (!bad)
            atomicMax(s_max_pos, (int)p);
    }
    if (__syncthreads_or(bad))
        return false;
    const int32_t *tab = b.tables + (int64_t)*s_row * b.table_stride;
    for (int64_t i = tid; i <= *s_max_pos / b.block_size; i += blockDim.x)
        if (tab[i] < 0 || tab[i] >= b.n_blocks)
            bad = true;
    if (__syncthreads_or(bad))
        return false;
    *table = tab;
    return true;
}

/* Starts copying keys j0..j0+TC_KEYS-1 (K and V rows of kv head kvh) into shared memory;
 * keys past max_pos become zeros (a zero V row times a zero weight stays 0; garbage could be
 * NaN). */
template <int HD>
__device__ __forceinline__ void tc_load_tile(const tc_args &a, const int32_t *table, int kvh,
                                             int j0, int max_pos, uint16_t *k_s, uint16_t *v_s)
{
    constexpr int RS = HD + TC_PAD, CPR = HD / 8, KPP = TC_THREADS / CPR;
    const int c = threadIdx.x % CPR, first = threadIdx.x / CPR;
    const char *k_head = a.k + (int64_t)kvh * HD * 2 + c * 16;
    const char *v_head = a.v + (int64_t)kvh * HD * 2 + c * 16;
#pragma unroll
    for (int key = first; key < TC_KEYS; key += KPP) {
        const bool valid = j0 + key <= max_pos;
        const char *ksrc = a.k, *vsrc = a.v; /* not read when !valid */
        if (valid) {
            int64_t slot = slot_of(a.b, table, j0 + key);
            ksrc = k_head + slot * a.k_row_bytes;
            vsrc = v_head + slot * a.v_row_bytes;
        }
        cp_async16(k_s + key * RS + c * 8, ksrc, valid);
        cp_async16(v_s + key * RS + c * 8, vsrc, valid);
    }
}

/*
 * A 1-D grid of (row tile, kv head) blocks, TC_THREADS threads. Block b works for kv head
 * b % n_kv and row tile n_tiles - 1 - b / n_kv: blocks start in that order, so the longest
 * tiles of every head (the latest tokens, which see the most keys under the causal mask) go
 * first and short ones fill in behind them. (With the heads as a second grid dimension, a
 * head's long tiles started after the previous heads' short ones and the SMs idled 28 % of a
 * 2048-token launch waiting for that tail.) Row r of tile i is token i·tile_tokens + r / group,
 * query head kvh·group + r % group. Warp w owns rows 16w..16w+15: lane holds rows
 * 16w + lane/4 ("a") and +8 ("b") of every accumulator fragment.
 */
template <int HD>
__global__ void __launch_bounds__(TC_THREADS, TC_BLOCKS_PER_SM) tc_prefill_kernel(tc_args a)
{
    constexpr int RS = HD + TC_PAD;
    extern __shared__ __align__(16) unsigned char tc_smem[];
    uint16_t *q_s = (uint16_t *)tc_smem;   /* [TC_ROWS][RS] bf16 */
    uint16_t *k_s = q_s + TC_ROWS * RS;    /* [2][TC_KEYS][RS] */
    uint16_t *v_s = k_s + 2 * TC_KEYS * RS; /* [2][TC_KEYS][RS] */
    __shared__ int s_pos[TC_ROWS];
    __shared__ int s_max_pos, s_row;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t tile = a.n_tiles - 1 - blockIdx.x / a.n_kv; /* later tokens (longer) first */
    const int kvh = (int)(blockIdx.x % a.n_kv), G = a.group;
    const int64_t t0 = tile * a.tile_tokens;
    const int n_tok = (int)min((int64_t)a.tile_tokens, a.T - t0);

    const int32_t *table = NULL;
    const bool uniform = tc_tile_uniform(a.b, t0, n_tok, s_pos, &s_max_pos, &s_row, &table);
    if (kvh == 0 && tid == 0)
        a.tile_done[tile] = uniform ? 1 : 0;
    if (!uniform)
        return;
    const int max_pos = s_max_pos;
    const int n_tiles = max_pos / TC_KEYS + 1;

    tc_load_tile<HD>(a, table, kvh, 0, max_pos, k_s, v_s);
    cp_async_commit();

    /* Q rows as bf16 (round to nearest even); rows past the batch are zeros. */
    for (int idx = tid; idx < TC_ROWS * (HD / 2); idx += TC_THREADS) {
        int r = idx / (HD / 2), d = (idx % (HD / 2)) * 2, tok = r / G;
        uint32_t packed = 0;
        if (tok < n_tok) {
            const float *qr = a.q + (t0 + tok) * a.q_stride + (int64_t)(kvh * G + r % G) * HD + d;
            packed = pack_bf16x2(qr[0], qr[1]);
        }
        *(uint32_t *)(q_s + r * RS + d) = packed;
    }
    const int row_a = warp * 16 + (lane >> 2), row_b = row_a + 8;
    const int tok_a = row_a / G, tok_b = row_b / G;
    const int pos_a = tok_a < n_tok ? s_pos[tok_a] : -1; /* -1: no such row, all masked */
    const int pos_b = tok_b < n_tok ? s_pos[tok_b] : -1;
    const int warp_max = __reduce_max_sync(0xffffffffu, max(pos_a, pos_b));
    const int warp_min = __reduce_min_sync(0xffffffffu, min(pos_a, pos_b));
    __syncthreads();
    /* The warp's Q fragments are read from shared memory at every tile: held in registers
     * they would cost the 32 that keep two blocks on an SM. */
    const uint16_t *q_frag = q_s + (warp * 16 + (lane & 15)) * RS + (lane >> 4) * 8;

    float o[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; dn++)
        o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f; /* l: this lane's part */

    for (int it = 0; it < n_tiles; it++) {
        const int stage = it & 1, j0 = it * TC_KEYS;
        if (it + 1 < n_tiles)
            tc_load_tile<HD>(a, table, kvh, j0 + TC_KEYS, max_pos,
                             k_s + (stage ^ 1) * TC_KEYS * RS, v_s + (stage ^ 1) * TC_KEYS * RS);
        cp_async_commit(); /* possibly empty: keeps "all but the newest group" = tile it */
        cp_async_wait_all_but_one();
        __syncthreads();
        if (j0 <= warp_max) { /* warp-uniform: some row of the warp sees a key of this tile */
            const uint16_t *ks = k_s + stage * TC_KEYS * RS, *vs = v_s + stage * TC_KEYS * RS;
            float s[TC_KEYS / 8][4];
#pragma unroll
            for (int nt = 0; nt < TC_KEYS / 8; nt++)
                s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            /* S = Q·Kᵀ: K rows are the B operand's columns (ldmatrix without transpose). */
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint32_t qa[4];
                ldmatrix_x4(qa, q_frag + kk * 16, false);
#pragma unroll
                for (int np = 0; np < TC_KEYS / 16; np++) {
                    uint32_t b[4];
                    ldmatrix_x4(b, ks + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * RS + kk * 16 +
                                       ((lane >> 3) & 1) * 8,
                                false);
                    mma_bf16(s[2 * np], qa, b[0], b[1]);
                    mma_bf16(s[2 * np + 1], qa, b[2], b[3]);
                }
            }
            /* Causal mask per row (only where the tile reaches past a row's position), scale,
             * online softmax (a row's 4 lanes share its max). */
            const bool masked = j0 + TC_KEYS - 1 > warp_min; /* warp-uniform */
            float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < TC_KEYS / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int key = j0 + nt * 8 + 2 * (lane & 3) + e;
                    s[nt][e] = masked && key > pos_a ? -INFINITY : s[nt][e] * a.scale_log2;
                    s[nt][2 + e] = masked && key > pos_b ? -INFINITY : s[nt][2 + e] * a.scale_log2;
                    mx_a = fmaxf(mx_a, s[nt][e]);
                    mx_b = fmaxf(mx_b, s[nt][2 + e]);
                }
#pragma unroll
            for (int o_ = 1; o_ <= 2; o_ <<= 1) {
                mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, o_));
                mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, o_));
            }
            const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
            const float base_a = mn_a == -INFINITY ? 0.0f : mn_a;
            const float base_b = mn_b == -INFINITY ? 0.0f : mn_b;
            const float corr_a = exp2_ftz(m_a - base_a), corr_b = exp2_ftz(m_b - base_b);
            m_a = mn_a;
            m_b = mn_b;
            float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
            for (int nt = 0; nt < TC_KEYS / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    s[nt][e] = exp2_ftz(s[nt][e] - base_a);
                    s[nt][2 + e] = exp2_ftz(s[nt][2 + e] - base_b);
                    sum_a += s[nt][e];
                    sum_b += s[nt][2 + e];
                }
            l_a = l_a * corr_a + sum_a;
            l_b = l_b * corr_b + sum_b;
#pragma unroll
            for (int dn = 0; dn < HD / 8; dn++) {
                o[dn][0] *= corr_a;
                o[dn][1] *= corr_a;
                o[dn][2] *= corr_b;
                o[dn][3] *= corr_b;
            }
            /* O += P·V: the S accumulators of keys 16kk..16kk+15 are the A fragment; V rows
             * are the B operand's rows (ldmatrix with transpose). */
#pragma unroll
            for (int kk = 0; kk < TC_KEYS / 16; kk++) {
                const uint32_t pa[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]),
                                        pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                                        pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                        pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
                for (int dp = 0; dp < HD / 16; dp++) {
                    uint32_t b[4];
                    ldmatrix_x4(b, vs + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * RS +
                                       dp * 16 + (lane >> 4) * 8,
                                true);
                    mma_bf16(o[2 * dp], pa, b[0], b[1]);
                    mma_bf16(o[2 * dp + 1], pa, b[2], b[3]);
                }
            }
        }
        __syncthreads(); /* the next iteration's copy overwrites this stage */
    }

#pragma unroll
    for (int o_ = 1; o_ <= 2; o_ <<= 1) {
        l_a += __shfl_xor_sync(0xffffffffu, l_a, o_);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, o_);
    }
    const int col = 2 * (lane & 3);
    if (pos_a >= 0) {
        float *out = a.out + (t0 + tok_a) * a.out_stride + (int64_t)(kvh * G + row_a % G) * HD;
#pragma unroll
        for (int dn = 0; dn < HD / 8; dn++) {
            out[dn * 8 + col] = o[dn][0] / l_a;
            out[dn * 8 + col + 1] = o[dn][1] / l_a;
        }
    }
    if (pos_b >= 0) {
        float *out = a.out + (t0 + tok_b) * a.out_stride + (int64_t)(kvh * G + row_b % G) * HD;
#pragma unroll
        for (int dn = 0; dn < HD / 8; dn++) {
            out[dn * 8 + col] = o[dn][2] / l_b;
            out[dn * 8 + col + 1] = o[dn][3] / l_b;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Attention, tensor-core decode kernel (BF16 caches, fp32 results through split operands)    */
/* ------------------------------------------------------------------------------------------ */

/* Three bf16 pairs whose sums are (x0, x1) to fp32 precision: each residual is exact in fp32,
 * so 3 x 8 significant bits cover the 24 of the float. Low halves hold x0's terms. */
__device__ __forceinline__ void split_bf16x2(float x0, float x1, uint32_t (&terms)[3])
{
#pragma unroll
    for (int i = 0; i < 3; i++) {
        uint32_t p = pack_bf16x2(x0, x1);
        terms[i] = p;
        x0 -= __uint_as_float(p << 16);
        x1 -= __uint_as_float(p & 0xffff0000u);
    }
}

__device__ __forceinline__ uint32_t word_of(const uint4 &u, int i)
{
    return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

/* Cache slot of `key` (< end), or -1 for a key past end or a block id out of range (reported;
 * the caller's `bad` then turns the token's outputs into NaN). */
__device__ __forceinline__ int64_t checked_slot(const split_args &a, const int32_t *table,
                                                int64_t t, int64_t key, int64_t end, bool &bad)
{
    if (key >= end)
        return -1;
    const batch_view &b = a.b;
    int block, offset;
    if (b.block_shift >= 0) {
        block = (int)(key >> b.block_shift);
        offset = (int)(key & (b.block_size - 1));
    } else {
        block = (int)(key / b.block_size);
        offset = (int)(key - (int64_t)block * b.block_size);
    }
    int32_t id = __ldg(table + block);
    if (id < 0 || id >= b.n_blocks) {
        bad = true;
        pk_report(a.info, PK_CUDA_OP_ATTENTION, PK_CUDA_BAD_BLOCK_ID, t, id, b.n_blocks, 0);
        return -1;
    }
    return (int64_t)id * b.block_size + offset;
}

/* The cache slots one lane reads for the DEC_KEYS keys from j0: keys j0 + g and j0 + 8 + g for
 * Kᵀ (B operand of Q·Kᵀ), keys j0 + 2·tq + {0, 1, 8, 9} for Vᵀ (A operand of Vᵀ·Pᵀ). */
struct decode_slots {
    int64_t k[2], v[4];
};

__device__ __forceinline__ decode_slots decode_slots_of(const split_args &a, const int32_t *table,
                                                        int64_t t, int64_t j0, int64_t end,
                                                        bool &bad)
{
    const int lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    decode_slots s;
#pragma unroll
    for (int i = 0; i < 2; i++)
        s.k[i] = checked_slot(a, table, t, j0 + 8 * i + g, end, bad);
#pragma unroll
    for (int i = 0; i < 4; i++)
        s.v[i] = checked_slot(a, table, t, j0 + 8 * (i >> 1) + 2 * tq + (i & 1), end, bad);
    return s;
}

/* Run by the last split of a token to finish: out = Σ_s w_s·acc_s / Σ_s w_s·l_s over the
 * n_active splits in split order, w_s = 2^(m_s - max m); NaN if a split saw a bad block. The
 * partials were written by other blocks: read through L2 (__ldcg), after the caller's fence.
 * The merge is on the path of every token with several splits, so its loads are issued
 * together: a lane per split for (m, l), then BATCH splits of every output a thread writes. */
template <int HD, int W>
__device__ void merge_splits(const split_args &a, int64_t t, int h_first, int hn, int n_active,
                             float (&w_s)[DEC_HEADS][SPLIT_MAX_SPLITS], float *l_s)
{
    constexpr int THREADS = dec_shape<W>::THREADS;
    constexpr int ITEMS = DEC_HEADS * HD / THREADS; /* outputs per thread */
    constexpr int BATCH = 4;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t part = (t * a.n_q + h_first) * a.splits; /* + h·splits + split */
    for (int h = warp; h < hn; h += W) {
        const float2 v = lane < n_active ? __ldcg(a.part_ml + part + (int64_t)h * a.splits + lane)
                                         : make_float2(-INFINITY, 0.0f);
        const float mt = pk_warp_max(v.x);
        const float w = v.x == -INFINITY ? 0.0f : exp2f(v.x - mt);
        const float lt = pk_warp_sum(w * v.y); /* a bad split's NaN makes the sum NaN */
        if (lane < n_active)
            w_s[h][lane] = w;
        if (lane == 0)
            l_s[h] = lt;
    }
    __syncthreads();
    float sum[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; i++)
        sum[i] = 0.0f;
    for (int s0 = 0; s0 < n_active; s0 += BATCH) {
        float v[ITEMS][BATCH];
#pragma unroll
        for (int i = 0; i < ITEMS; i++)
#pragma unroll
            for (int k = 0; k < BATCH; k++) {
                const int idx = tid + i * THREADS, h = idx / HD;
                v[i][k] = idx < hn * HD && s0 + k < n_active
                              ? __ldcg(a.part_acc + (part + (int64_t)h * a.splits + s0 + k) * HD +
                                       (idx - h * HD))
                              : 0.0f;
            }
#pragma unroll
        for (int i = 0; i < ITEMS; i++)
#pragma unroll
            for (int k = 0; k < BATCH; k++) {
                const int idx = tid + i * THREADS, h = idx / HD;
                if (idx < hn * HD && s0 + k < n_active && w_s[h][s0 + k] != 0.0f)
                    sum[i] = fmaf(w_s[h][s0 + k], v[i][k], sum[i]);
            }
    }
    float *o = a.out + t * a.out_stride + (int64_t)h_first * HD;
#pragma unroll
    for (int i = 0; i < ITEMS; i++) {
        const int idx = tid + i * THREADS;
        if (idx < hn * HD)
            o[idx] = sum[i] / l_s[idx / HD];
    }
}

/* What tc_decode_kernel needs to run pk_qk_norm_rope_attention (Fuse = qk_fuse): split_args.q
 * holds the projections' raw q; k_new/v_new the raw k and v rows; the caches are written. The
 * plain attention passes no_qk_fuse (no arguments, no code). */
struct no_qk_fuse {
    static constexpr bool on = false;
};
struct qk_fuse {
    static constexpr bool on = true;
    const float *k_new, *v_new;
    int64_t k_stride, v_stride;
    char *k_cache, *v_cache; /* kv head 0 of slot 0, as split_args.k / .v */
    const void *q_norm, *k_norm;
    bool q_norm_bf16, k_norm_bf16;
    float eps;
    pk_rope_freqs<64> rope; /* head_dim <= 128 */
};

/* The K and V fragments of one 16-key tile (slots from decode_slots_of; -1: zeros). A fused
 * launch writes the slot of each token's position itself, so the tile holding that slot is
 * read through the coherent path (FRESH): the read-only one, which every other tile takes (it
 * keeps more loads in flight), may not see a write of the same launch. */
template <bool FRESH, int KCH, int VCH>
__device__ __forceinline__ void load_kv_tile(const decode_slots &cur, const char *k_head,
                                             const char *v_head, int64_t k_row_bytes,
                                             int64_t v_row_bytes, uint4 (&kr)[2][KCH],
                                             uint4 (&vr)[4][VCH])
{
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int c = 0; c < KCH; c++) {
            const uint4 *p = (const uint4 *)(k_head + cur.k[i] * k_row_bytes + c * 64);
            kr[i][c] = cur.k[i] < 0 ? zero : FRESH ? *p : __ldg(p);
        }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int c = 0; c < VCH; c++) {
            const uint4 *p = (const uint4 *)(v_head + cur.v[i] * v_row_bytes + c * 16);
            vr[i][c] = cur.v[i] < 0 ? zero : FRESH ? *p : __ldg(p);
        }
}

/* Asks L2 for the rows load_kv_tile will read (16-byte pieces of 128-byte lines: one request a
 * line would do, the others are dropped as already in flight). */
template <int KCH, int VCH>
__device__ __forceinline__ void prefetch_kv_tile(const decode_slots &cur, const char *k_head,
                                                 const char *v_head, int64_t k_row_bytes,
                                                 int64_t v_row_bytes)
{
#pragma unroll
    for (int i = 0; i < 2; i++)
        if (cur.k[i] >= 0)
#pragma unroll
            for (int c = 0; c < KCH; c++)
                pk_prefetch_l2(k_head + cur.k[i] * k_row_bytes + c * 64);
#pragma unroll
    for (int i = 0; i < 4; i++)
        if (cur.v[i] >= 0)
#pragma unroll
            for (int c = 0; c < VCH; c++)
                pk_prefetch_l2(v_head + cur.v[i] * v_row_bytes + c * 16);
}

/* q scaled into the k-step fragments of tc_decode_kernel (qr: head g's row, when g < hn): lane
 * (g, tq) of k-step s holds head g's dims 8·(tq + 4·(s/2)) + 4·(s%2) + 0..3, the dims of the K
 * words it multiplies, as three bf16 terms. */
template <int HD, int W>
__device__ __forceinline__ void load_q_frags(const float *qr, int hn, float scale_log2,
                                             uint2 (*q_frag)[3][32])
{
    constexpr int STEPS = HD / 16;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    for (int s = warp; s < STEPS; s += W) {
        float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (g < hn)
#pragma unroll
            for (int e = 0; e < 4; e++)
                x[e] = qr[8 * (tq + 4 * (s >> 1)) + 4 * (s & 1) + e] * scale_log2;
        uint32_t lo[3], hi[3];
        split_bf16x2(x[0], x[1], lo);
        split_bf16x2(x[2], x[3], hi);
#pragma unroll
        for (int i = 0; i < 3; i++)
            q_frag[s][i][lane] = make_uint2(lo[i], hi[i]);
    }
}

/*
 * The fused prologue of pk_qk_norm_rope_attention, in two steps so that its loads overlap the
 * token's checks and block-table reads. Items are the block's query heads h_first..+hn-1 of
 * token t, then the token's key and value of kv head kvh; warp w of W takes items w, w + W,
 * ..., one head a warp as pk_head_norm_rope wants.
 *
 * fused_load_rows: the raw rows of the warp's items (written by the kernel before; the norm
 * weights, read-only, are loaded before the programmatic wait).
 */
template <int HD, int W>
__device__ __forceinline__ void fused_load_rows(const split_args &a, const qk_fuse &f, int64_t t,
                                                int kvh, int h_first, int hn,
                                                float (&raw)[dec_shape<W>::FUSE_ITEMS][HD / 32])
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int i = 0; i < dec_shape<W>::FUSE_ITEMS; i++) {
        const int item = warp + W * i;
        if (item >= hn + 2) {
#pragma unroll
            for (int j = 0; j < HD / 32; j++)
                raw[i][j] = 0.0f;
            continue;
        }
        const float *src = item < hn    ? a.q + t * a.q_stride + (int64_t)(h_first + item) * HD
                           : item == hn ? f.k_new + t * f.k_stride + (int64_t)kvh * HD
                                        : f.v_new + t * f.v_stride + (int64_t)kvh * HD;
#pragma unroll
        for (int j = 0; j < HD / 32; j++)
            raw[i][j] = __ldg(src + lane + 32 * j); /* written by an earlier kernel only */
    }
}

/* Three bf16 terms whose sum is x to fp32 precision: one half of split_bf16x2. */
__device__ __forceinline__ void split_bf16(float x, uint16_t (&terms)[3])
{
#pragma unroll
    for (int i = 0; i < 3; i++) {
        uint16_t b;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(x));
        terms[i] = b;
        x -= __uint_as_float((uint32_t)b << 16);
    }
}

/*
 * fused_qk_rows: the query heads normalised, rotated at pos and scaled, written straight into
 * the k-step fragments (the layout of load_q_frags: element d of head g is half d % 4 of lane
 * 4g + (d / 8) % 4 of k-step 2·(d / 32) + (d / 4) % 2; heads past hn are zeros); with a slot
 * (>= 0: the block whose split holds pos, so no other block reads that key) also the key,
 * normalised and rotated, and the value, stored as bf16 in that slot of the caches. The
 * caller's barrier then makes both visible to the block's warps. A warp's items are reduced
 * together so that their shuffles overlap.
 */
template <int HD, int W>
__device__ void fused_qk_rows(const split_args &a, const qk_fuse &f, int kvh, int hn, int64_t pos,
                              int64_t slot, const float (&freq)[HD / 64],
                              float (&raw)[dec_shape<W>::FUSE_ITEMS][HD / 32],
                              const float (&q_w)[HD / 32],
                              const float (&k_w)[HD / 32], uint2 (*q_frag)[3][32])
{
    constexpr int E = HD / 32, STEPS = HD / 16;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int items = hn + (slot >= 0 ? 2 : 0);
    for (int idx = threadIdx.x; idx < STEPS * 3 * 32; idx += dec_shape<W>::THREADS)
        if (((idx & 31) >> 2) >= hn)
            q_frag[idx / 96][(idx / 32) % 3][idx & 31] = make_uint2(0u, 0u);
    float c[E / 2], sn[E / 2], sums[dec_shape<W>::FUSE_ITEMS];
    pk_rope_cos_sin<E>((float)pos, freq, c, sn);
#pragma unroll
    for (int i = 0; i < dec_shape<W>::FUSE_ITEMS; i++)
        sums[i] = pk_lane_sum_squares(raw[i]);
#pragma unroll
    for (int i = 0; i < dec_shape<W>::FUSE_ITEMS; i++)
        sums[i] = pk_warp_sum(sums[i]);
#pragma unroll
    for (int i = 0; i < dec_shape<W>::FUSE_ITEMS; i++) {
        const int item = warp + W * i;
        if (item >= items)
            continue;
        const bool is_q = item < hn, is_k = item == hn;
        if (is_q || is_k)
            pk_head_scale_rope(raw[i], sums[i], is_q ? q_w : k_w, f.eps, c, sn);
        if (is_q) {
#pragma unroll
            for (int j = 0; j < E; j++) {
                const int d = lane + 32 * j;
                uint16_t terms[3];
                split_bf16(raw[i][j] * a.scale_log2, terms);
                uint16_t *dst = (uint16_t *)&q_frag[2 * (d >> 5) + ((d >> 2) & 1)][0]
                                                   [4 * item + ((d >> 3) & 3)];
#pragma unroll
                for (int k = 0; k < 3; k++)
                    dst[k * 32 * 4 + (d & 3)] = terms[k]; /* q_frag[s][k][lane'], half d % 4 */
            }
            continue;
        }
        uint16_t *dst = (uint16_t *)((is_k ? f.k_cache + slot * a.k_row_bytes
                                           : f.v_cache + slot * a.v_row_bytes) +
                                     (int64_t)kvh * HD * 2);
#pragma unroll
        for (int j = 0; j < E; j++)
            dst[lane + 32 * j] = pk_f32_to_bf16(raw[i][j]);
    }
}

/*
 * Grid (token, kv head, head chunks × splits), W warps (dec_shape). A block takes up to
 * DEC_HEADS query heads of one kv head and one split of the token's keys; its warps take the
 * split's 16-key tiles in turn, each with its own online softmax:
 *   S = Q·Kᵀ  (m16n8k16: rows = the heads, 8 of 16 used; columns = 8 keys; k = head dims),
 *   O += Vᵀ·Pᵀ (rows = 16 value dims, columns = the 8 heads, k = the 16 keys),
 * so the score fragment a lane gets (head g, keys 2·tq + {0, 1, 8, 9}) is the Pᵀ fragment it
 * needs. K fragments are plain 16-byte loads (the dot product does not care how head dims are
 * ordered, so q is laid out to match); V fragments are 16-byte loads of 4 keys' dims paired up
 * with byte permutes. q and P are fp32 split into three bf16 terms (K and V are bf16 already),
 * each tile's products are summed by the tensor cores from zero and added to the running fp32
 * accumulators with ordinary FMAs: fp32-level results, fixed order. The next tile's cache slots
 * are looked up while the current tile computes.
 *
 * Splits: `splits` (host) cuts the keys into ceil((pos + 1) / splits) rounded up to
 * SPLIT_KEYS (16 a warp); splits past the end return at once. A token with one active split
 * writes its output; otherwise each split writes (m, l, acc) partials and bumps the token's
 * counter, and the last one to arrive merges the partials in split order and resets the counter
 * to 0 for the next launch (graph replays).
 *
 * A settled batch (pk_token_batch.settled: the metadata and every key before a token's position
 * were written before the step began) lets the block read the token's metadata and its first
 * tile's cache slots and the slot of pos, and ask L2 for that tile (when all of its keys are
 * before pos), before the programmatic wait: at batch 1 those round trips are most of the
 * kernel, now overlapping the projection before. q (k, v), the tiles and the outputs are read
 * and written after it. Read-only inputs (the norm weights, the RoPE frequencies) are read
 * before the wait in every batch.
 */
template <int HD, int W, class Fuse>
__global__ void __launch_bounds__(dec_shape<W>::THREADS, dec_shape<W>::BLOCKS_PER_SM)
    tc_decode_kernel(split_args a, Fuse fuse)
{
    constexpr int THREADS = dec_shape<W>::THREADS, SPLIT_KEYS = dec_shape<W>::SPLIT_KEYS;
    constexpr int KCH = HD / 32;   /* 16-byte chunks of a key row per lane */
    constexpr int VCH = HD / 64;   /* 16-byte chunks of a value row per lane */
    constexpr int STEPS = HD / 16; /* k-steps of Q·Kᵀ = row tiles of Vᵀ·Pᵀ */
    constexpr int DPT = HD / 8;    /* value dims per lane */
    constexpr int AST = HD + 4;    /* floats per head row of warp_acc */
    __shared__ uint2 q_frag[STEPS][3][32];
    __shared__ float warp_acc[W][DEC_HEADS][AST];
    __shared__ float warp_m[W][DEC_HEADS], warp_l[W][DEC_HEADS];
    __shared__ float head_m[DEC_HEADS], head_l[DEC_HEADS];
    __shared__ float split_w[DEC_HEADS][SPLIT_MAX_SPLITS];
    __shared__ int last_block;

    const int64_t t = blockIdx.x;
    const int kvh = blockIdx.y;
    const int split = (int)(blockIdx.z % (unsigned)a.splits);
    const int chunk = (int)(blockIdx.z / (unsigned)a.splits);
    const int g0 = chunk * DEC_HEADS, hn = min(DEC_HEADS, a.group - g0);
    const int h_first = kvh * a.group + g0;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;
    /* q (fused: the raw rows of q, k and v): written by the kernel before */
    float raw[Fuse::on ? dec_shape<W>::FUSE_ITEMS : 1][HD / 32];
    float q_w[HD / 32], k_w[HD / 32], freq[HD / 64];
    if constexpr (Fuse::on)
        pk_rope_lane_freqs<HD / 32>(fuse.rope, freq); /* first: see pk_rope_lane_freqs */
    auto wait_and_load_queries = [&] {
        if constexpr (Fuse::on) { /* read-only; after the wait, ~1,100 cycles of an H100's */
            pk_head_norm_weights(fuse.q_norm, fuse.q_norm_bf16, q_w);
            pk_head_norm_weights(fuse.k_norm, fuse.k_norm_bf16, k_w);
        }
        pk_pdl_wait();
        pk_pdl_launch_dependents(); /* the o_proj GEMV may start loading its weights */
        if constexpr (Fuse::on)
            fused_load_rows<HD, W>(a, fuse, t, kvh, h_first, hn, raw);
        else
            load_q_frags<HD, W>(a.q + t * a.q_stride + (int64_t)(h_first + g) * HD, hn,
                             a.scale_log2, q_frag);
    };
    /* A settled batch's metadata and keys before each position are older than the kernel
     * before: they are read before waiting for it (below), everything else after. */
    if (!a.settled)
        wait_and_load_queries();

    /* The block ids are checked where they are read (checked_slot; the block holding pos is read
     * by one of the splits), so the first tile's table reads need not wait for a check. */
    int64_t pos = 0;
    const int32_t *table = NULL;
    const bool ok = token_span_ok(a.b, t, PK_CUDA_OP_ATTENTION, a.info, tid == 0, &pos, &table);
    if (!ok) {
        if (a.settled)
            pk_pdl_wait(); /* out may still be read by the kernels before */
        if (split == 0)
            for (int idx = tid; idx < hn * HD; idx += THREADS)
                a.out[t * a.out_stride + (int64_t)h_first * HD + idx] =
                    __int_as_float(0x7fc00000); /* NaN */
        return;
    }
    int64_t per = pos < DEC_ONE_SPLIT_KEYS
                      ? DEC_ONE_SPLIT_KEYS
                      : max((pos + a.splits) / a.splits, (int64_t)a.min_split_keys);
    per = (per + SPLIT_KEYS - 1) / SPLIT_KEYS * SPLIT_KEYS;
    const int n_active = (int)((pos + per) / per);
    const int64_t start = (int64_t)split * per, end = min(pos + 1, start + per);
    if (start >= end) /* past the end of a short context */
        return;
    const char *k_head = a.k + (int64_t)kvh * HD * 2 + tq * 16;
    const char *v_head = a.v + (int64_t)kvh * HD * 2 + g * DPT * 2;
    float m = -INFINITY, l = 0.0f, acc[STEPS][4];
#pragma unroll
    for (int i = 0; i < STEPS; i++)
        acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    bool bad = false;
    int64_t j0 = start + (int64_t)warp * DEC_KEYS;
    decode_slots next = {};
    if (j0 < end)
        next = decode_slots_of(a, table, t, j0, end, bad);
    /* settled: the warp's first tile asked into L2 (no registers held over the wait), when all
     * its keys are before pos */
    if (a.settled && j0 < end && j0 + DEC_KEYS <= pos)
        prefetch_kv_tile<KCH, VCH>(next, k_head, v_head, a.k_row_bytes, a.v_row_bytes);
    /* fused: the slot of pos, where the block whose split holds it stores the new key and
     * value (a bad block id there is reported and nothing is stored) */
    int64_t pos_slot = -1;
    if (a.settled) {
        if (Fuse::on && end == pos + 1)
            pos_slot = checked_slot(a, table, t, pos, pos + 1, bad);
        wait_and_load_queries();
    } else if (Fuse::on && end == pos + 1) {
        pos_slot = checked_slot(a, table, t, pos, pos + 1, bad);
    }
    if constexpr (Fuse::on)
        fused_qk_rows<HD, W>(a, fuse, kvh, hn, pos, pos_slot, freq, raw, q_w, k_w, q_frag);
    __syncthreads(); /* q_frag; fused: the new key and value in the cache */

    while (j0 < end) {
        const decode_slots cur = next;
        uint4 kr[2][KCH], vr[4][VCH];
        if (Fuse::on && j0 + DEC_KEYS > pos) /* the tile holding pos */
            load_kv_tile<true>(cur, k_head, v_head, a.k_row_bytes, a.v_row_bytes, kr, vr);
        else
            load_kv_tile<false>(cur, k_head, v_head, a.k_row_bytes, a.v_row_bytes, kr, vr);
        const int64_t j_next = j0 + SPLIT_KEYS;
        if (j_next < end)
            next = decode_slots_of(a, table, t, j_next, end, bad);

        /* Scores of head g, keys j0 + 2·tq + {0, 1} (sc[0]) and j0 + 8 + 2·tq + {0, 1}
         * (sc[1]); small terms of q first. */
        float sc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int term = 2; term >= 0; term--)
#pragma unroll
            for (int s = 0; s < STEPS; s++) {
                const uint2 qa = q_frag[s][term][lane];
                const uint32_t afr[4] = {qa.x, 0u, qa.y, 0u};
#pragma unroll
                for (int n = 0; n < 2; n++)
                    mma_bf16(sc[n], afr, word_of(kr[n][s >> 1], 2 * (s & 1)),
                             word_of(kr[n][s >> 1], 2 * (s & 1) + 1));
            }
        float sk[4] = {sc[0][0], sc[0][1], sc[1][0], sc[1][1]}, mx = -INFINITY;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            if (j0 + 8 * (k >> 1) + 2 * tq + (k & 1) >= end)
                sk[k] = -INFINITY;
            mx = fmaxf(mx, sk[k]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m, mx); /* finite: key j0 is always in range */
        const float corr = exp2f(m - m_new);
        float p[4];
#pragma unroll
        for (int k = 0; k < 4; k++)
            p[k] = exp2f(sk[k] - m_new);
        l = l * corr + ((p[0] + p[1]) + (p[2] + p[3]));
        m = m_new;
        uint32_t pb0[3], pb1[3];
        split_bf16x2(p[0], p[1], pb0);
        split_bf16x2(p[2], p[3], pb1);
        /* This lane's accumulators are heads 2·tq and 2·tq + 1: their corrections. */
        const float corr_a = __shfl_sync(0xffffffffu, corr, 8 * tq);
        const float corr_b = __shfl_sync(0xffffffffu, corr, 8 * tq + 4);
#pragma unroll
        for (int i = 0; i < STEPS; i++) {
            const uint32_t w0 = word_of(vr[0][i >> 2], i & 3), w1 = word_of(vr[1][i >> 2], i & 3);
            const uint32_t w2 = word_of(vr[2][i >> 2], i & 3), w3 = word_of(vr[3][i >> 2], i & 3);
            const uint32_t afr[4] = {__byte_perm(w0, w1, 0x5410), __byte_perm(w0, w1, 0x7632),
                                     __byte_perm(w2, w3, 0x5410), __byte_perm(w2, w3, 0x7632)};
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int term = 2; term >= 0; term--)
                mma_bf16(d, afr, pb0[term], pb1[term]);
            acc[i][0] = fmaf(acc[i][0], corr_a, d[0]);
            acc[i][1] = fmaf(acc[i][1], corr_b, d[1]);
            acc[i][2] = fmaf(acc[i][2], corr_a, d[2]);
            acc[i][3] = fmaf(acc[i][3], corr_b, d[3]);
        }
        j0 = j_next;
    }

    /* Merge the warps: per head the common max, l summed warp by warp, the accumulators
     * (lane: heads 2·tq, 2·tq + 1 × dims DPT·g + 2·i + {0, 1}) scaled into shared memory and
     * summed in warp order. */
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (tq == 0) {
        warp_m[warp][g] = m;
        warp_l[warp][g] = l;
    }
    const bool block_bad = __syncthreads_or(bad);
    float f[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const int h = 2 * tq + e;
        float mt = -INFINITY;
#pragma unroll
        for (int w = 0; w < W; w++)
            mt = fmaxf(mt, warp_m[w][h]);
        f[e] = warp_m[warp][h] == -INFINITY ? 0.0f : exp2f(warp_m[warp][h] - mt);
        if (g == 0) { /* one lane per head: the head's (m, l) */
            float lt = 0.0f;
#pragma unroll
            for (int w = 0; w < W; w++)
                if (warp_m[w][h] != -INFINITY)
                    lt += warp_l[w][h] * exp2f(warp_m[w][h] - mt);
            if (warp == 0) {
                head_m[h] = mt;
                head_l[h] = lt;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < STEPS; i++) {
        const int d = DPT * g + 2 * i;
        warp_acc[warp][2 * tq][d] = acc[i][0] * f[0];
        warp_acc[warp][2 * tq + 1][d] = acc[i][1] * f[1];
        warp_acc[warp][2 * tq][d + 1] = acc[i][2] * f[0];
        warp_acc[warp][2 * tq + 1][d + 1] = acc[i][3] * f[1];
    }
    __syncthreads();

    const float nan = __int_as_float(0x7fc00000);
    if (n_active == 1) {
        float *o = a.out + t * a.out_stride + (int64_t)h_first * HD;
        for (int idx = tid; idx < hn * HD; idx += THREADS) {
            const int h = idx / HD, d = idx - h * HD;
            float v = 0.0f;
#pragma unroll
            for (int w = 0; w < W; w++)
                v += warp_acc[w][h][d];
            o[idx] = block_bad ? nan : v / head_l[h];
        }
        return;
    }
    const int64_t part = (t * a.n_q + h_first) * a.splits; /* + h·splits + split */
    for (int idx = tid; idx < hn * HD; idx += THREADS) {
        const int h = idx / HD, d = idx - h * HD;
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < W; w++)
            v += warp_acc[w][h][d];
        a.part_acc[(part + (int64_t)h * a.splits + split) * HD + d] = v;
    }
    if (tid < hn)
        a.part_ml[part + (int64_t)tid * a.splits + split] =
            block_bad ? make_float2(-INFINITY, nan) : make_float2(head_m[tid], head_l[tid]);
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        const int chunks = (int)(gridDim.z / (unsigned)a.splits);
        unsigned *counter = a.counters + (t * gridDim.y + kvh) * chunks + chunk;
        const bool last = atomicAdd(counter, 1u) == (unsigned)n_active - 1;
        if (last)
            atomicExch(counter, 0u); /* every split has arrived: ready for the next launch */
        last_block = last;
    }
    __syncthreads();
    if (!last_block)
        return;
    __threadfence();
    merge_splits<HD, W>(a, t, h_first, hn, n_active, split_w, head_l);
}

/* ------------------------------------------------------------------------------------------ */
/* Attention, host side: choosing and launching                                               */
/* ------------------------------------------------------------------------------------------ */

typedef void (*split_kernel_fn)(split_args);
typedef void (*tc_kernel_fn)(tc_args);

/* How split_kernel reads a shape: lanes per key, 16-byte chunks per lane, heads per block. */
struct split_shape {
    bool ok;
    int lanes, nch, heads, k_chunks, v_chunks;
    split_kernel_fn fn;
};

static bool rows_vectorizable(const pk_tensor *cache, int64_t head_width)
{
    size_t elem = pk_is_bf16(cache) ? 2 : 4;
    return (uintptr_t)cache->data % 16 == 0 && ((size_t)cache->stride * elem) % 16 == 0 &&
           ((size_t)head_width * elem) % 16 == 0;
}

static split_shape plan_split(const pk_tensor *k_cache, const pk_tensor *v_cache,
                              const pk_attention_params *p, bool v_in_k)
{
    split_shape s = {};
    if (v_in_k || k_cache->dtype != v_cache->dtype || !rows_vectorizable(k_cache, p->head_dim) ||
        !rows_vectorizable(v_cache, p->v_head_dim) || p->v_head_dim == 0)
        return s;
    int elem = pk_is_bf16(k_cache) ? 2 : 4;
    s.k_chunks = p->head_dim * elem / 16;
    s.v_chunks = p->v_head_dim * elem / 16;
    int widest = s.k_chunks > s.v_chunks ? s.k_chunks : s.v_chunks;
    s.lanes = SPLIT_MIN_LANES;
    while (s.lanes < widest && s.lanes < 32)
        s.lanes *= 2;
    s.nch = (widest + s.lanes - 1) / s.lanes;
    if (s.nch > 2)
        return s;
    int group = p->n_q_heads / p->n_kv_heads;
    s.heads = s.nch == 1 && group > 4 ? 8 : 4; /* registers: heads · chunks · 8 floats */
    bool bf16 = pk_is_bf16(k_cache);
    if (s.nch == 2)
        s.fn = bf16 ? split_kernel<true, 4, 2> : split_kernel<false, 4, 2>;
    else if (s.heads == 8)
        s.fn = bf16 ? split_kernel<true, 8, 1> : split_kernel<false, 8, 1>;
    else
        s.fn = bf16 ? split_kernel<true, 4, 1> : split_kernel<false, 4, 1>;
    s.ok = true;
    return s;
}

static tc_kernel_fn plan_tensor_core(const pk_tensor *q, const pk_tensor *k_cache,
                                     const pk_tensor *v_cache, const pk_attention_params *p,
                                     const split_shape &split, int max_smem)
{
    int group = p->n_q_heads / p->n_kv_heads;
    if (!split.ok || q->rows <= DECODE_MAX_TOKENS || !pk_is_bf16(k_cache) ||
        !pk_is_bf16(v_cache) || p->head_dim != p->v_head_dim || TC_ROWS % group != 0)
        return NULL;
    if (p->head_dim == 64 && tc_smem_bytes<64>() <= (size_t)max_smem)
        return tc_prefill_kernel<64>;
    if (p->head_dim == 128 && tc_smem_bytes<128>() <= (size_t)max_smem)
        return tc_prefill_kernel<128>;
    return NULL;
}

/* Splits per token: enough blocks for about SPLIT_BLOCKS_PER_SM per SM, from host-known
 * numbers only (a captured graph replays it at any positions). */
static int choose_splits(int64_t T, int n_kv, int head_chunks, int sm_count)
{
    if (T > DECODE_MAX_TOKENS)
        return 1;
    int64_t blocks = T * n_kv * head_chunks;
    int64_t want = ((int64_t)SPLIT_BLOCKS_PER_SM * sm_count + blocks - 1) / blocks;
    return (int)(want < 1 ? 1 : want > SPLIT_MAX_SPLITS ? SPLIT_MAX_SPLITS : want);
}

static split_args make_split_args(pk_cuda_state *st, const pk_tensor *out, const pk_tensor *q,
                                  const pk_tensor *k_cache, const pk_tensor *v_cache,
                                  const pk_token_batch *batch, const pk_attention_params *p,
                                  const split_shape &sh)
{
    split_args a = {};
    size_t elem = pk_is_bf16(k_cache) ? 2 : 4;
    a.out = (float *)out->data;
    a.out_stride = out->stride;
    a.q = (const float *)q->data;
    a.q_stride = q->stride;
    a.k = (const char *)k_cache->data;
    a.v = (const char *)v_cache->data;
    a.k_row_bytes = k_cache->stride * (int64_t)elem;
    a.v_row_bytes = v_cache->stride * (int64_t)elem;
    a.b = make_batch_view(batch, k_cache);
    a.T = q->rows;
    a.n_q = p->n_q_heads;
    a.group = p->n_q_heads / p->n_kv_heads;
    a.head_dim = p->head_dim;
    a.v_head_dim = p->v_head_dim;
    a.lanes = sh.lanes;
    a.k_chunks = sh.k_chunks;
    a.v_chunks = sh.v_chunks;
    a.splits = 1;
    a.min_split_keys = DEC_MIN_SPLIT_KEYS;
    /* Reading ahead of the wait pays only when the kernel before lets this one start early: the
     * GEMV of decode-sized batches does (a programmatic launch that triggers at once), a cuBLASLt
     * product does not, and there the reads would only delay the loads of q (k, v) that the
     * unsettled order overlaps with them. */
    a.settled = batch->settled && q->rows <= st->gemv_max_m;
    a.scale_log2 = p->scale * 1.4426950408889634f;
    a.tile_tokens = 1;
    a.info = st->err_info_dev;
    return a;
}

/* Bytes of the split partials of T tokens: accumulators, then (m, l) pairs at *ml_offset. */
static size_t split_partial_bytes(int64_t T, int n_q, int v_head_dim, int splits,
                                  size_t *ml_offset)
{
    size_t acc = sizeof(float) * (size_t)T * n_q * splits * v_head_dim;
    *ml_offset = (acc + 15) / 16 * 16;
    return *ml_offset + sizeof(float2) * (size_t)T * n_q * splits;
}

/* The most partials any batch of up to DECODE_MAX_TOKENS tokens of this shape needs: asked for
 * at once, so the workspace does not move after the first decode call (graphs recorded later
 * for other batch sizes keep a valid address). */
static size_t split_workspace_bound(int n_q, int n_kv, int chunks, int v_head_dim, int sm_count)
{
    size_t most = 0, unused;
    for (int64_t T = 1; T <= DECODE_MAX_TOKENS; T++) {
        size_t bytes = split_partial_bytes(T, n_q, v_head_dim,
                                           choose_splits(T, n_kv, chunks, sm_count), &unused);
        most = bytes > most ? bytes : most;
    }
    return most;
}

/*
 * The attention workspace: ATTN_COUNTER_BYTES of split counters, then `partial_bytes` for the
 * partials of T tokens (accumulators, then (m, l) pairs). The counters are zero whenever no
 * kernel runs: zeroed here when the workspace is (re)allocated, reset by the kernel's last
 * split of each token; nothing else ever writes that region.
 */
static pio_status attention_workspace(pk_context *ctx, size_t partial_bytes, int64_t T,
                                      int n_q, int v_head_dim, int splits, const char *op,
                                      split_args *a, pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    size_t before = st->attn_workspace_bytes;
    void *ws = NULL;
    pio_status status =
        pk_cuda_attention_workspace(ctx, ATTN_COUNTER_BYTES + partial_bytes, op, &ws, err);
    if (status != PIO_OK)
        return status;
    if (st->attn_workspace_bytes != before) {
        status = pk_cuda_fail(ctx, op, "cudaMemsetAsync (split counters)",
                              cudaMemsetAsync(ws, 0, ATTN_COUNTER_BYTES, st->stream), err);
        if (status != PIO_OK)
            return status;
    }
    size_t ml_offset = 0;
    (void)split_partial_bytes(T, n_q, v_head_dim, splits, &ml_offset);
    char *partials = (char *)ws + ATTN_COUNTER_BYTES;
    a->counters = (unsigned *)ws;
    a->part_acc = (float *)partials;
    a->part_ml = (float2 *)(partials + ml_offset);
    return PIO_OK;
}

static pio_status launch_split(pk_context *ctx, split_args a, const split_shape &sh,
                               int64_t grid_x, int n_kv, int splits, const char *op,
                               pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    int chunks = (a.group + sh.heads - 1) / sh.heads;
    a.splits = splits;
    if (splits > 1) {
        size_t bound = split_workspace_bound(a.n_q, n_kv, chunks, a.v_head_dim, st->sm_count);
        pio_status status = attention_workspace(ctx, bound, a.T, a.n_q, a.v_head_dim, splits, op,
                                                &a, err);
        if (status != PIO_OK)
            return status;
    }
    if ((int64_t)n_kv > 65535 || (int64_t)chunks * splits > 65535 ||
        (splits > 1 && a.n_q > 65535))
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: batch too large for one launch", op);
    dim3 grid((unsigned)grid_x, (unsigned)n_kv, (unsigned)(chunks * splits));
    sh.fn<<<grid, SPLIT_THREADS, split_smem_bytes(sh.heads, a.head_dim, a.v_head_dim),
            st->stream>>>(a);
    if (splits > 1) {
        dim3 cgrid((unsigned)a.T, (unsigned)a.n_q);
        combine_kernel<<<cgrid, COMBINE_THREADS, 0, st->stream>>>(
            a.out, a.out_stride, a.part_acc, a.part_ml, a.n_q, a.v_head_dim, splits);
    }
    return pk_cuda_check_launch(ctx, op, err);
}

/* Decode batches over BF16 caches with head_dim = v_head_dim in {64, 128}: tc_decode_kernel. */
static bool use_tc_decode(const pk_tensor *q, const pk_tensor *k_cache, const pk_tensor *v_cache,
                          const pk_attention_params *p, const split_shape &split)
{
    return split.ok && q->rows <= DECODE_MAX_TOKENS && pk_is_bf16(k_cache) &&
           pk_is_bf16(v_cache) && p->head_dim == p->v_head_dim &&
           (p->head_dim == 64 || p->head_dim == 128);
}

/* Warps of tc_decode_kernel's blocks for a batch of T tokens (see DEC_WARPS_ONE_TOKEN). */
static int decode_warps(int64_t T)
{
    return T == 1 ? DEC_WARPS_ONE_TOKEN : DEC_WARPS;
}

/* Splits per token of tc_decode_kernel, from host-known numbers only (1 where the counters
 * would not fit): a batch's about DEC_SPLIT_WAVES waves of resident blocks; one token's as many
 * as one wave holds (its blocks are one an SM, and a second wave waits for the first: Qwen3-4B
 * on an H200 at depth 8192 / 16384, 32 splits of 8 kv heads against 17, 276.8 / 248.3 against
 * 311.8 / 277.7 tok/s; docs/KERNELS.md, "Eleventh session"). */
static int choose_decode_splits(int64_t T, int n_kv, int chunks, int sm_count)
{
    int64_t blocks = T * n_kv * chunks;
    if ((int64_t)DECODE_MAX_TOKENS * n_kv * chunks > ATTN_COUNTERS)
        return 1;
    int64_t want;
    if (decode_warps(T) == DEC_WARPS)
        want = ((int64_t)DEC_SPLIT_WAVES * dec_shape<DEC_WARPS>::BLOCKS_PER_SM * sm_count +
                blocks - 1) / blocks;
    else
        want = (int64_t)dec_shape<DEC_WARPS_ONE_TOKEN>::BLOCKS_PER_SM * sm_count / blocks;
    return (int)(want < 1 ? 1 : want > SPLIT_MAX_SPLITS ? SPLIT_MAX_SPLITS : want);
}

/* The most partials any decode batch of this shape needs (see split_workspace_bound). */
static size_t decode_workspace_bound(int n_q, int n_kv, int chunks, int v_head_dim, int sm_count)
{
    size_t most = 0, unused;
    for (int64_t T = 1; T <= DECODE_MAX_TOKENS; T++) {
        size_t bytes = split_partial_bytes(T, n_q, v_head_dim,
                                           choose_decode_splits(T, n_kv, chunks, sm_count),
                                           &unused);
        most = bytes > most ? bytes : most;
    }
    return most;
}

/* Fewest keys of a tc_decode_kernel split of a context longer than DEC_ONE_SPLIT_KEYS (T tokens
 * in the batch): DEC_MIN_SPLIT_KEYS(_ONE_TOKEN), or PIO_CUDA_DECODE_SPLIT_MIN_KEYS read at every
 * call (benchmarks and tuning; a recorded graph keeps the value of its recording). */
static pio_status decode_min_split_keys(const char *op, int64_t T, int *keys, pio_error *err)
{
    const char *text = getenv("PIO_CUDA_DECODE_SPLIT_MIN_KEYS");
    *keys = decode_warps(T) == DEC_WARPS_ONE_TOKEN ? DEC_MIN_SPLIT_KEYS_ONE_TOKEN
                                                   : DEC_MIN_SPLIT_KEYS;
    if (text == NULL || *text == '\0')
        return PIO_OK;
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end != '\0' || v < 1 || v > (1 << 20))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: PIO_CUDA_DECODE_SPLIT_MIN_KEYS=\"%s\" is not a key count from "
                             "1 to 1048576", op, text);
    *keys = (int)v;
    return PIO_OK;
}

template <int W, class Fuse>
static cudaError_t launch_tc_decode_warps(const pk_cuda_state *st, dim3 grid, const split_args &a,
                                         const Fuse &fuse)
{
    const dim3 threads(dec_shape<W>::THREADS);
    return a.head_dim == 64
               ? pk_cuda_launch_pdl(st, tc_decode_kernel<64, W, Fuse>, grid, threads, 0, a, fuse)
               : pk_cuda_launch_pdl(st, tc_decode_kernel<128, W, Fuse>, grid, threads, 0, a, fuse);
}

template <class Fuse>
static pio_status launch_tc_decode(pk_context *ctx, split_args a, int n_kv, const Fuse &fuse,
                                   const char *op, pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    pio_status min_status = decode_min_split_keys(op, a.T, &a.min_split_keys, err);
    if (min_status != PIO_OK)
        return min_status;
    int chunks = (a.group + DEC_HEADS - 1) / DEC_HEADS;
    a.splits = choose_decode_splits(a.T, n_kv, chunks, st->sm_count);
    if (a.splits > 1) {
        size_t bound = decode_workspace_bound(a.n_q, n_kv, chunks, a.v_head_dim, st->sm_count);
        pio_status status = attention_workspace(ctx, bound, a.T, a.n_q, a.v_head_dim, a.splits,
                                                op, &a, err);
        if (status != PIO_OK)
            return status;
    }
    if (n_kv > 65535 || (int64_t)chunks * a.splits > 65535)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: batch too large for one launch", op);
    dim3 grid((unsigned)a.T, (unsigned)n_kv, (unsigned)(chunks * a.splits));
    cudaError_t e = decode_warps(a.T) == DEC_WARPS
                        ? launch_tc_decode_warps<DEC_WARPS>(st, grid, a, fuse)
                        : launch_tc_decode_warps<DEC_WARPS_ONE_TOKEN>(st, grid, a, fuse);
    if (e != cudaSuccess)
        return pk_cuda_fail(ctx, op, "kernel launch", e, err);
    return pk_cuda_check_launch(ctx, op, err);
}

/* Tensor-core prefill over the uniform row tiles, then split_kernel for the tokens of the
 * others. */
static pio_status launch_tensor_core(pk_context *ctx, tc_kernel_fn fn, split_args sa,
                                     const split_shape &sh, int n_kv, const char *op,
                                     pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    tc_args a;
    a.out = sa.out;
    a.out_stride = sa.out_stride;
    a.q = sa.q;
    a.q_stride = sa.q_stride;
    a.k = sa.k;
    a.v = sa.v;
    a.k_row_bytes = sa.k_row_bytes;
    a.v_row_bytes = sa.v_row_bytes;
    a.b = sa.b;
    a.T = sa.T;
    a.group = sa.group;
    a.tile_tokens = TC_ROWS / sa.group;
    a.scale_log2 = sa.scale_log2;
    int64_t n_tiles = (a.T + a.tile_tokens - 1) / a.tile_tokens;
    void *ws = NULL;
    pio_status status = pk_cuda_scratch(ctx, sizeof(int) * (size_t)n_tiles, op, &ws, err);
    if (status != PIO_OK)
        return status;
    a.tile_done = (int *)ws;
    if (n_tiles * n_kv > INT32_MAX)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: batch too large for one launch", op);
    a.n_tiles = (unsigned)n_tiles;
    a.n_kv = (unsigned)n_kv;
    size_t smem = sa.head_dim == 64 ? tc_smem_bytes<64>() : tc_smem_bytes<128>();
    fn<<<(unsigned)(n_tiles * n_kv), TC_THREADS, smem, st->stream>>>(a);
    sa.tile_done = a.tile_done;
    sa.tile_tokens = a.tile_tokens;
    int64_t grid_x = sa.T < FALLBACK_BLOCKS_X ? sa.T : FALLBACK_BLOCKS_X;
    return launch_split(ctx, sa, sh, grid_x, n_kv, 1, op, err);
}

static pio_status set_max_smem(const void *fn, int bytes, pio_error *err)
{
    cudaError_t e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess)
        return PIO_OK;
    (void)cudaGetLastError();
    return pio_error_set(err, PIO_ERR_DEVICE,
                         "pk_context_create: cannot raise an attention kernel's shared memory "
                         "to %d bytes: %s", bytes, cudaGetErrorString(e));
}

pio_status pk_cuda_attention_init(pk_context *ctx, pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    pio_status status = set_max_smem((const void *)attention_kernel, st->max_smem_optin, err);
    if (status == PIO_OK && tc_smem_bytes<64>() <= (size_t)st->max_smem_optin)
        status = set_max_smem((const void *)tc_prefill_kernel<64>, (int)tc_smem_bytes<64>(), err);
    if (status == PIO_OK && tc_smem_bytes<128>() <= (size_t)st->max_smem_optin)
        status =
            set_max_smem((const void *)tc_prefill_kernel<128>, (int)tc_smem_bytes<128>(), err);
    return status;
}

/* The general kernel: as many of the group's heads per block as shared memory allows, in
 * tiles of ATT_TILE keys (fewer for very wide heads). */
static pio_status launch_general(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                                 const pk_tensor *k_cache, const pk_tensor *v_cache,
                                 const pk_token_batch *batch, const pk_attention_params *params,
                                 bool v_in_k, const char *op, pio_error *err)
{
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
    a.v_in_k = v_in_k;

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
    /* With one kv head, values that are the first v_head_dim columns of the key entries are
     * taken from the key tile of the general kernel instead of being read again. */
    bool v_in_k = params->n_kv_heads == 1 && v_cache->data == k_cache->data &&
                  v_cache->stride == k_cache->stride && v_cache->dtype == k_cache->dtype &&
                  params->v_head_dim <= params->head_dim;
    split_shape sh = plan_split(k_cache, v_cache, params, v_in_k);
    if (!sh.ok)
        return launch_general(ctx, out, q, k_cache, v_cache, batch, params, v_in_k, op, err);
    split_args sa = make_split_args(st, out, q, k_cache, v_cache, batch, params, sh);
    tc_kernel_fn tc = plan_tensor_core(q, k_cache, v_cache, params, sh, st->max_smem_optin);
    if (tc != NULL)
        return launch_tensor_core(ctx, tc, sa, sh, params->n_kv_heads, op, err);
    if (use_tc_decode(q, k_cache, v_cache, params, sh))
        return launch_tc_decode(ctx, sa, params->n_kv_heads, no_qk_fuse{}, op, err);
    int chunks = (sa.group + sh.heads - 1) / sh.heads;
    int splits = choose_splits(q->rows, params->n_kv_heads, chunks, st->sm_count);
    int64_t grid_x = q->rows < INT32_MAX ? q->rows : INT32_MAX;
    return launch_split(ctx, sa, sh, grid_x, params->n_kv_heads, splits, op, err);
}

/* pk_qk_norm_rope_attention in one tc_decode_kernel launch where the batch promises one token a
 * sequence and the shapes are the common ones (NEOX RoPE over whole heads, BF16 caches, head_dim
 * = v_head_dim in {64, 128}, at most DEC_HEADS query heads a kv head, separate K and V planes);
 * otherwise the QK-norm/RoPE/store kernel and then pk_attention's choice. */
static bool fuses_qk_attention(const pk_tensor *q, const pk_tensor *v, const pk_rope_params *rope,
                               const pk_tensor *k_cache, const pk_tensor *v_cache,
                               const pk_token_batch *batch, const pk_attention_params *p,
                               const split_shape &sh)
{
    return batch->distinct_sequences && v != NULL && v_cache->data != k_cache->data &&
           rope->layout == PK_ROPE_NEOX && rope->rotary_offset == 0 &&
           rope->rotary_dim == p->head_dim && p->n_q_heads / p->n_kv_heads <= DEC_HEADS &&
           use_tc_decode(q, k_cache, v_cache, p, sh);
}

pio_status pk_cuda_qk_norm_rope_attention(pk_context *ctx, const pk_tensor *out,
                                          const pk_tensor *q, const pk_tensor *k,
                                          const pk_tensor *v, const pk_tensor *q_norm,
                                          const pk_tensor *k_norm, float eps,
                                          const pk_rope_params *rope, const pk_tensor *k_cache,
                                          const pk_tensor *v_cache, const pk_token_batch *batch,
                                          const pk_attention_params *params, pio_error *err)
{
    static const char op[] = "pk_qk_norm_rope_attention";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || q->rows == 0)
        return status;
    split_shape sh = plan_split(k_cache, v_cache, params, false);
    if (!fuses_qk_attention(q, v, rope, k_cache, v_cache, batch, params, sh)) {
        status = pk_cuda_qk_norm_rope_store(ctx, q, k, v, q_norm, k_norm, eps, rope, k_cache,
                                            v != NULL ? v_cache : NULL, batch, params, err);
        return status != PIO_OK ? status
                                : pk_cuda_attention(ctx, out, q, k_cache, v_cache, batch, params,
                                                    err);
    }
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    qk_fuse f;
    f.k_new = (const float *)k->data;
    f.v_new = (const float *)v->data;
    f.k_stride = k->stride;
    f.v_stride = v->stride;
    f.k_cache = (char *)k_cache->data;
    f.v_cache = (char *)v_cache->data;
    f.q_norm = q_norm->data;
    f.k_norm = k_norm->data;
    f.q_norm_bf16 = pk_is_bf16(q_norm);
    f.k_norm_bf16 = pk_is_bf16(k_norm);
    f.eps = eps;
    f.rope = pk_make_rope_freqs<64>(rope);
    split_args sa = make_split_args(st, out, q, k_cache, v_cache, batch, params, sh);
    return launch_tc_decode(ctx, sa, params->n_kv_heads, f, op, err);
}
