/*
 * The op API of the compute layer: what model code calls, whatever backend runs it.
 *
 * A pk_context binds one backend (CPU now; CUDA behind the same calls) and one device. Every
 * tensor an op touches must live on that context's device (pk_copy alone also reaches host
 * memory). Ops are issued in order; on the CPU backend each has finished when it returns, on a
 * GPU backend it is queued, and pk_synchronize waits for everything issued so far.
 *
 * Conventions shared by all ops:
 *   - Activations (x, y, out, q, k_new, ...) are F32. Weights (embedding table, matmul W, norm
 *     weights) and KV-cache planes are BF16 or F32. Token ids, positions and block tables are I32.
 *   - Math is fp32 whatever the storage dtype.
 *   - Tensors are 2-D row-major views (tensor.h); 1-D inputs are single rows. Row strides are
 *     honoured everywhere, so column views of a wider tensor are valid operands.
 *   - Shape, dtype and device mismatches return PIO_ERR_INVALID_ARGUMENT with a message naming
 *     the op and the operand. Where an op says "may alias", out may be the same view as an input;
 *     otherwise outputs must not overlap inputs.
 *   - err may be NULL.
 *
 * A context is driven by one thread at a time.
 */
#ifndef PIO_KERNELS_OPS_H
#define PIO_KERNELS_OPS_H

#include <stdint.h>

#include "kernels/tensor.h"
#include "pio/error.h"
#include "pio/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pk_context pk_context;

/* ------------------------------------------------------------------------------------------ */
/* Contexts and memory                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* Which one-row GEMVs with BF16 weights (decode projections) a CUDA context streams through
 * shared memory with tensor-map copies rather than through registers (kernels/cuda/
 * cuda_matmul.cu): PK_GEMV_TMA_DEFAULT only those of many waves of blocks (an lm_head);
 * PK_GEMV_TMA_ALL every one; PK_GEMV_TMA_NONE none. The environment variable PIO_CUDA_GEMV_TMA
 * (0 | all) overrides it. Which is faster depends on the kernels beside them (docs/KERNELS.md,
 * "Tenth session"): all of them for a dense model's decode step at short contexts (up to ~512
 * positions on an H100, ~4,096 on an H200), the default next to the MoE kernels and at longer
 * contexts. */
typedef enum pk_gemv_tma {
    PK_GEMV_TMA_DEFAULT = 0,
    PK_GEMV_TMA_ALL = 1,
    PK_GEMV_TMA_NONE = 2,
} pk_gemv_tma;

typedef struct pk_context_options {
    int n_threads;        /* CPU worker threads; <= 0: OpenMP's default (OMP_NUM_THREADS / cores) */
    int device_index;     /* GPU ordinal for a GPU backend; ignored by the CPU backend */
    int cpu_force_scalar; /* non-zero: the CPU backend uses its portable C paths only (tests) */
    pk_gemv_tma gemv_tma; /* CUDA: see pk_gemv_tma; ignored by the CPU backend */
} pk_context_options;

/* True when this build has a backend for `device`. */
int pk_backend_available(pk_device_kind device);
/* "cpu", "cuda"; "unknown" otherwise. */
const char *pk_device_name(pk_device_kind device);

/* Creates a context on `device`; options may be NULL (defaults). PIO_ERR_UNSUPPORTED when the
 * build has no backend for that device. */
pio_status pk_context_create(pk_device_kind device, const pk_context_options *options,
                             pk_context **out, pio_error *err);
void pk_context_destroy(pk_context *ctx);
/* Changes ctx's pk_context_options.gemv_tma for the launches that follow (the decoder switches
 * it with the context length); a recorded graph keeps the choice of its recording. */
void pk_context_set_gemv_tma(pk_context *ctx, pk_gemv_tma mode);
pk_device_kind pk_context_device(const pk_context *ctx);
const char *pk_context_backend_name(const pk_context *ctx);
/* The positions below which a dense model's decode steps should run with every projection on
 * the TMA GEMV (PK_GEMV_TMA_ALL) on ctx's device, and from which with the default: 4,096 on a
 * GPU whose memory streams 4 TB/s or more (an H200), 512 below that (an H100); 0 for backends
 * without the choice (the CPU). */
int pk_context_gemv_tma_short_context(const pk_context *ctx);
/* Worker threads the CPU backend uses (1 for GPU backends). */
int pk_context_threads(const pk_context *ctx);
/* Waits until every op and copy issued on ctx has finished; reports a deferred device error. */
pio_status pk_synchronize(pk_context *ctx, pio_error *err);

/* Device memory of ctx's device, 64-byte aligned; *out is empty after a failure. */
pio_status pk_buffer_alloc(pk_context *ctx, size_t bytes, pk_buffer *out, pio_error *err);
/* Releases buf's memory (no-op for an empty buffer) and empties it. */
void pk_buffer_free(pk_context *ctx, pk_buffer *buf);

/* Page-locked host memory for staging copies (faster, truly asynchronous transfers on a GPU
 * backend; plain aligned memory on the CPU backend); *out is NULL after a failure. Free with
 * pk_host_free on the same context. */
pio_status pk_host_alloc(pk_context *ctx, size_t bytes, void **out, pio_error *err);
void pk_host_free(pk_context *ctx, void *data);

/* dst = src, element by element (same dtype and shape). Either side may be host memory
 * (PK_DEVICE_CPU) or ctx's device. Host memory read or written must stay valid until
 * pk_synchronize returns (on the CPU backend the copy is done on return). */
pio_status pk_copy(pk_context *ctx, const pk_tensor *dst, const pk_tensor *src, pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* Ops                                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* out[t, :] = table[ids[t], :] as F32. out [T, H] F32, table [V, H] BF16|F32, ids [1, T] I32.
 * An id outside [0, V) is PIO_ERR_INVALID_ARGUMENT. */
pio_status pk_embedding(pk_context *ctx, const pk_tensor *out, const pk_tensor *table,
                        const pk_tensor *ids, pio_error *err);

/* y[M, N] = x[M, K] · w[N, K]^T (w in the Hugging Face Linear layout), fp32 accumulation.
 * y, x F32; w BF16|F32. */
pio_status pk_matmul(pk_context *ctx, const pk_tensor *y, const pk_tensor *x, const pk_tensor *w,
                     pio_error *err);
/* y[M, N] += x[M, K] · w[N, K]^T: a projection fused with its residual add. */
pio_status pk_matmul_add(pk_context *ctx, const pk_tensor *y, const pk_tensor *x,
                         const pk_tensor *w, pio_error *err);

/* RMSNorm over each row, in Hugging Face's order: out = (x · rsqrt(mean(x²) + eps)) · weight.
 * out, x [T, H] F32 (may alias); weight [1, H] BF16|F32. */
pio_status pk_rmsnorm(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                      const pk_tensor *weight, float eps, pio_error *err);

/* The same RMSNorm applied to every head_dim-wide slice of each row with one shared weight
 * (Qwen3's q_norm / k_norm). out, x [T, n_heads·head_dim] F32 (may alias); weight [1, head_dim]. */
pio_status pk_head_rmsnorm(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                           const pk_tensor *weight, int64_t head_dim, float eps, pio_error *err);

typedef enum pk_rope_layout {
    PK_ROPE_NEOX = 0,       /* rotate-half: dims (i, i + rotary_dim/2) form a pair (Qwen3, Llama) */
    PK_ROPE_INTERLEAVED = 1 /* dims (2i, 2i + 1) form a pair (GLM, GPT-J) */
} pk_rope_layout;

typedef struct pk_rope_params {
    pk_rope_layout layout;
    int32_t head_dim;      /* distance between heads within a row */
    int32_t rotary_dim;    /* dims rotated in each head, even, <= head_dim - rotary_offset */
    int32_t rotary_offset; /* first rotated dim within the head (0 normally; MLA puts rope last) */
    float theta;           /* base: inv_freq[i] = theta^(-2i / rotary_dim) */
} pk_rope_params;

/* Rotary position embedding of every head of every row. Pair i turns by positions[t]·inv_freq[i];
 * inv_freq, the angle, cos and sin are computed in fp32 as Hugging Face does, so large positions
 * round the same way. Dims outside the rotary range are copied. out, x [T, n_heads·head_dim] F32
 * (may alias); positions [1, T] I32. */
pio_status pk_rope(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                   const pk_tensor *positions, const pk_rope_params *params, pio_error *err);

/* out = silu(gate) · up, silu(g) = g / (1 + e^-g). All [T, F] F32; out may alias gate or up. */
pio_status pk_swiglu(pk_context *ctx, const pk_tensor *out, const pk_tensor *gate,
                     const pk_tensor *up, pio_error *err);
/* The same on a fused projection output: gate_up [T, 2F] = [gate | up], out [T, F]. */
pio_status pk_swiglu_fused(pk_context *ctx, const pk_tensor *out, const pk_tensor *gate_up,
                           pio_error *err);

/* out = a + b, all [T, H] F32; out may alias a or b (the residual add). */
pio_status pk_add(pk_context *ctx, const pk_tensor *out, const pk_tensor *a, const pk_tensor *b,
                  pio_error *err);

/* Numerically stable softmax of each row, fp32. out, x [T, N] F32 (may alias). */
pio_status pk_softmax(pk_context *ctx, const pk_tensor *out, const pk_tensor *x, pio_error *err);

/* ids[0, t] = index of the largest value of row t of x (the lowest index among ties; NaN is
 * never chosen unless the whole row is NaN). ids [1, T] I32, x [T, N] F32. */
pio_status pk_argmax(pk_context *ctx, const pk_tensor *ids, const pk_tensor *x, pio_error *err);

/* Seeded stand-in weights (load_format: dummy): out[r, c] = offset + scale · u, u in [-1, 1)
 * a hash of (seed, tensor_id, r·cols + c) (kernels/dummy_values.h), rounded to out's dtype
 * (BF16|F32). The same values on every backend; written where the tensor lives, so a model's
 * dummy weights need no host copy. */
pio_status pk_fill_dummy(pk_context *ctx, const pk_tensor *out, uint64_t seed,
                         uint64_t tensor_id, float scale, float offset, pio_error *err);

/* out = x converted element by element between F32 and BF16 (round to nearest even); same
 * dtypes copy. Same shape; no aliasing. */
pio_status pk_cast(pk_context *ctx, const pk_tensor *out, const pk_tensor *x, pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* Mixture of experts                                                                         */
/* ------------------------------------------------------------------------------------------ */

/*
 * Softmax top-k routing (the mechanism of Qwen3-MoE-style routers; which variant a model uses
 * is its policy). For each row t of the router logits [T, E]: p = softmax(logits[t]) in fp32,
 * then the k experts of largest p in descending order, ties going to the lower expert index
 * (what torch.topk returns for the routers of our references), and their weights p[e], divided
 * by their sum when `normalize` (norm_topk_prob). ids [T, k] I32, weights [T, k] F32,
 * logits [T, E] F32 with 1 <= k <= E. Runs on the device: no host synchronisation.
 */
pio_status pk_moe_topk_softmax(pk_context *ctx, const pk_tensor *ids, const pk_tensor *weights,
                               const pk_tensor *logits, int normalize, pio_error *err);

/*
 * The routed SwiGLU experts, accumulated into the residual stream:
 *   out[t] += Σ_j weights[t, j] · down_e(silu(gate_e(x[t])) · up_e(x[t])),  e = ids[t, j]
 * Expert weights are packed by expert (the layout a grouped GEMM reads):
 *   gate_up [E·2F, H]: rows e·2F .. e·2F+F-1 are expert e's gate_proj, the next F its up_proj;
 *   down    [E·H, F]:  rows e·H .. e·H+H-1 are expert e's down_proj.
 * out, x [T, H] F32 (no overlap); ids [T, k] I32 and weights [T, k] F32 (pk_moe_topk_softmax);
 * both weight tensors BF16|F32. Backends group the tokens by expert, so each selected expert's
 * weights are read once per call however many tokens chose it. An id outside [0, n_experts) is
 * PIO_ERR_INVALID_ARGUMENT.
 */
pio_status pk_moe_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                          const pk_tensor *gate_up, const pk_tensor *down, const pk_tensor *ids,
                          const pk_tensor *weights, int64_t n_experts, pio_error *err);

/*
 * pk_moe_topk_softmax(ids, weights, logits, normalize), then pk_moe_experts(out, x, gate_up,
 * down, ids, weights, n_experts) with n_experts = logits->cols: the routed half of a MoE block
 * after its router, in one call. ids and weights are written either way. A backend may route
 * inside its experts kernels (CUDA: decode batches of up to 8 tokens, at most 256 experts and
 * k <= 32, where the routing launch cost as much as the routing), otherwise it runs the two.
 */
pio_status pk_moe_topk_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                               const pk_tensor *logits, const pk_tensor *gate_up,
                               const pk_tensor *down, const pk_tensor *ids,
                               const pk_tensor *weights, int normalize, pio_error *err);

/*
 * Expert parallelism: pk_moe_experts over a slice of the experts. gate_up [n_local·2F, H] and
 * down [n_local·H, F] hold experts [first, first + n_local) of the router's n_experts (expert e
 * at local index e - first); the (token, slot) pairs routed outside the slice are skipped, so
 * they contribute zero. accumulate: out += the slice's sum (as pk_moe_experts); otherwise
 * out = it (a row none of whose experts is in the slice becomes zero). ids outside
 * [0, n_experts) are PIO_ERR_INVALID_ARGUMENT. first 0, n_local n_experts, accumulate 1 is
 * pk_moe_experts. Optional for a backend (PIO_ERR_UNSUPPORTED where it lacks the slice).
 */
pio_status pk_moe_experts_slice(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                                const pk_tensor *gate_up, const pk_tensor *down,
                                const pk_tensor *ids, const pk_tensor *weights,
                                int64_t n_experts, int64_t first, int64_t n_local,
                                int accumulate, pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* Attention over the paged KV cache                                                          */
/* ------------------------------------------------------------------------------------------ */

/*
 * A flattened batch: T tokens drawn from S sequences, prefill and decode mixed. A cache plane is
 * a [n_blocks·block_size, width] tensor (kv_cache.h); the entry of the token at position p of a
 * sequence lives in slot block_table[p / block_size]·block_size + p % block_size.
 */
typedef struct pk_token_batch {
    pk_tensor positions;    /* [1, T] I32: position of each token within its sequence */
    pk_tensor seq_rows;     /* [1, T] I32: which row of block_tables is the token's sequence */
    pk_tensor block_tables; /* [S, W] I32: each sequence's block ids in order (padding ignored) */
    int32_t block_size;     /* tokens per cache block */
    /* 1: no two tokens share a sequence (a decode step), the caller's promise. A backend may
     * then store a token's new key and value in the same kernel that attends over its cache
     * (pk_qk_norm_rope_attention), since no other token of the batch reads them. 0 (the
     * default of a zeroed batch): no promise. */
    int32_t distinct_sequences;
    /* 1: the metadata above and every cache entry before each token's position were written
     * before the step's first op began (by the host, or by an earlier step: the decoder's steps
     * copy their metadata first), the caller's promise. A backend may then read them while the
     * op before is still running (CUDA: the decode attention loads them ahead of its
     * programmatic wait). 0: no promise. */
    int32_t settled;
} pk_token_batch;

typedef struct pk_attention_params {
    int32_t n_q_heads;  /* a multiple of n_kv_heads; query head h reads kv head h / (n_q / n_kv) */
    int32_t n_kv_heads;
    int32_t head_dim;   /* width of a query and key head */
    int32_t v_head_dim; /* width of a value head; 0 = head_dim */
    float scale;        /* score = scale · q·k, usually 1/sqrt(head_dim) */
} pk_attention_params;

/* Writes each token's key and value into its cache slot. k_new [T, n_kv·head_dim] and v_new
 * [T, n_kv·v_head_dim] F32; the cache planes have those widths and are BF16|F32. v_new and
 * v_cache may both be NULL to store keys only (a latent cache whose values live inside the key
 * entry). Block ids and positions outside the cache are PIO_ERR_INVALID_ARGUMENT. */
pio_status pk_kv_store(pk_context *ctx, const pk_tensor *k_cache, const pk_tensor *v_cache,
                       const pk_tensor *k_new, const pk_tensor *v_new,
                       const pk_token_batch *batch, const pk_attention_params *params,
                       pio_error *err);

/*
 * Causal attention of every token over its own sequence's cache: stores k_new/v_new first (as
 * pk_kv_store; pass both NULL when already stored), then for token t at position p, query head h:
 *   out[t, h] = Σ_{j<=p} softmax_j(scale · q[t, h] · K[j, kvh]) · V[j, kvh]
 * with K/V read through the sequence's block table. All positions 0..p must have been stored
 * (by this call or an earlier one). out [T, n_q·v_head_dim], q [T, n_q·head_dim], both F32.
 * v_cache may be a column view of k_cache (absorbed MLA: values are the first v_head_dim
 * columns of each latent key entry).
 */
pio_status pk_attention(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                        const pk_tensor *k_new, const pk_tensor *v_new, const pk_tensor *k_cache,
                        const pk_tensor *v_cache, const pk_token_batch *batch,
                        const pk_attention_params *params, pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* Fused ops: one call where a backend can save launches and passes over memory               */
/* ------------------------------------------------------------------------------------------ */

/*
 * h = RMSNorm(x) · norm_weight (as pk_rmsnorm), then y = h · wᵀ (as pk_matmul): the pre-norm
 * of a block and its first projection. h [T, H] and x [T, H] F32 (may alias); y [T, N] F32;
 * w [N, H] BF16|F32. h is written either way. A backend may fuse the two (CUDA: for
 * decode-sized T the GEMV normalises x in its prologue, saving the norm's launch).
 */
pio_status pk_rmsnorm_matmul(pk_context *ctx, const pk_tensor *y, const pk_tensor *h,
                             const pk_tensor *x, const pk_tensor *norm_weight, float eps,
                             const pk_tensor *w, pio_error *err);

/*
 * The pre-norm, the packed gate/up projection and SwiGLU of an MLP in one call:
 *   h = RMSNorm(x) · norm_weight, [g | u] = h · wᵀ with w = [gate; up] [2F, H] BF16|F32,
 *   out[t, j] = silu(g_tj) · u_tj (as pk_swiglu)
 * out [T, F], gate_up [T, 2F], h and x [T, H] F32 (h may alias x). gate_up and h are the
 * intermediates: a backend that fuses need not write them, so their contents afterwards are
 * unspecified. out may be gate_up's gate half (its first F columns) and must not overlap x, h
 * or the rest of gate_up.
 */
pio_status pk_rmsnorm_matmul_swiglu(pk_context *ctx, const pk_tensor *out,
                                    const pk_tensor *gate_up, const pk_tensor *h,
                                    const pk_tensor *x, const pk_tensor *norm_weight, float eps,
                                    const pk_tensor *w, pio_error *err);

/*
 * Qwen3-style per-head QK-norm, then RoPE, then the keys and values stored in the cache:
 *   q = rope(head_rmsnorm(q, q_norm)), k = rope(head_rmsnorm(k, k_norm)) (in place), then
 *   pk_kv_store(k, v)
 * with the shapes and rules of those ops (q [T, n_q·head_dim], k and v [T, n_kv·head_dim] F32;
 * q_norm and k_norm [1, head_dim]; rope->head_dim = params->head_dim). A backend without a
 * fused kernel runs the five ops.
 */
pio_status pk_qk_norm_rope_store(pk_context *ctx, const pk_tensor *q, const pk_tensor *k,
                                 const pk_tensor *v, const pk_tensor *q_norm,
                                 const pk_tensor *k_norm, float eps, const pk_rope_params *rope,
                                 const pk_tensor *k_cache, const pk_tensor *v_cache,
                                 const pk_token_batch *batch, const pk_attention_params *params,
                                 pio_error *err);

/*
 * pk_qk_norm_rope_store, then pk_attention of q over the caches into out: the attention half of
 * a Qwen3-style layer after its projections. The shapes and rules of those two ops; out
 * [T, n_q·v_head_dim] F32 must not overlap q, k or v. q and k are intermediates: a backend that
 * fuses need not write them back, so their contents afterwards are unspecified. A backend may
 * fuse the two for batches with batch->distinct_sequences set (CUDA: one decode kernel
 * normalises and rotates q as it loads it, and the block that holds a token's position stores
 * its key and value before reading them back); otherwise it runs them one after the other.
 */
pio_status pk_qk_norm_rope_attention(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                                     const pk_tensor *k, const pk_tensor *v,
                                     const pk_tensor *q_norm, const pk_tensor *k_norm, float eps,
                                     const pk_rope_params *rope, const pk_tensor *k_cache,
                                     const pk_tensor *v_cache, const pk_token_batch *batch,
                                     const pk_attention_params *params, pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* Graphs: record a sequence of ops once, replay it                                           */
/* ------------------------------------------------------------------------------------------ */

/*
 * Between pk_graph_begin and pk_graph_end the ops issued on ctx are recorded rather than run
 * (a CUDA graph captured from the context's stream); pk_graph_launch replays them with the
 * operands they were recorded with: the same buffers, shapes and parameters, whatever the
 * buffers hold at replay. Recorded ops must not allocate or wait on the host: pk_copy from or to
 * host memory and pk_synchronize are not allowed while recording, and an op's first call with a
 * shape (which may grow a workspace) should run once outside the recording first. An error
 * while recording ends it: pk_graph_end then fails and nothing is kept.
 *
 * pk_graph_supported is 0 when the backend cannot record (the CPU backend): callers then run
 * their ops directly. Graphs belong to their context; destroy them before it.
 */
typedef struct pk_graph pk_graph;

int pk_graph_supported(const pk_context *ctx);
pio_status pk_graph_begin(pk_context *ctx, pio_error *err);
pio_status pk_graph_end(pk_context *ctx, pk_graph **out, pio_error *err);
pio_status pk_graph_launch(pk_context *ctx, pk_graph *graph, pio_error *err);
void pk_graph_destroy(pk_context *ctx, pk_graph *graph);
/* 0 when a workspace the recorded ops use grew (moved) during or after the recording, e.g. a
 * longer prefill that came later: the graph must not be launched; destroy it and record again. */
int pk_graph_is_current(pk_context *ctx, const pk_graph *graph);

/* ------------------------------------------------------------------------------------------ */
/* Sampling: a token per row of logits, on the device                                         */
/* ------------------------------------------------------------------------------------------ */

/* Columns of pk_sample's params tensor: the fields of pk_sampling (sampler.h), one row per row
 * of logits; pk_sampling_to_row fills one. */
typedef enum pk_sample_param {
    PK_SAMPLE_TEMPERATURE = 0,        /* >= 0; 0 = greedy */
    PK_SAMPLE_TOP_K = 1,              /* a whole number >= 0; 0 = off */
    PK_SAMPLE_TOP_P = 2,              /* (0, 1]; 1 = off */
    PK_SAMPLE_MIN_P = 3,              /* [0, 1); 0 = off */
    PK_SAMPLE_REPETITION_PENALTY = 4, /* > 0; 1 = off */
    PK_SAMPLE_PRESENCE_PENALTY = 5,   /* 0 = off */
    PK_SAMPLE_FREQUENCY_PENALTY = 6,  /* 0 = off */
    PK_SAMPLE_PARAM_COUNT = 7
} pk_sample_param;

/*
 * Samples one token from each row of logits, choosing the token pk_sampler_sample (sampler.h)
 * chooses from the same logits, parameters, history and uniform: penalties, greedy or
 * temperature, top-k, top-p, min-p and one draw, in that order (sampler.h has the rules: ties
 * go to the lower id, NaN reads as -inf and +inf as the largest float). Only the ids come back.
 *
 *   ids        [1, R] I32 out: the chosen id of each row, or -1 for a row that cannot be sampled:
 *              parameters out of range (or a top_k that is not a whole number), no finite logit
 *              (after the penalties, when sampling), or a uniform outside [0, 2^53) on a row
 *              that draws. Such a row does not fail the op.
 *   logits     [R, V] F32, read only. Only columns [0, n_valid) take part, 1 <= n_valid <= V:
 *              ids in the padding of the vocabulary are never chosen.
 *   params     [R, PK_SAMPLE_PARAM_COUNT] F32 (pk_sample_param).
 *   prompt_tokens [R, Lp] I32 or NULL, output_tokens [R, Lo] I32 or NULL (Lo < 2^30): each row's
 *              history for the penalties: the repetition penalty applies to the ids of both, the
 *              presence and frequency penalties to the ids of output_tokens (frequency times
 *              their count), each once per distinct id. Entries outside [0, n_valid) are
 *              ignored, so rows of different lengths pad with -1.
 *   uniforms   [1, R] I64: each row's uniform in [0, 1) as its 53 random bits (u = bits·2^-53),
 *              which the caller draws: pk_sampling_uniform_bits draws from a pk_rng in step
 *              with pk_sampler_sample. Greedy rows (temperature 0 or top_k 1) ignore theirs.
 *
 * ids must not overlap the other operands. The op reads nothing on the host and waits for
 * nothing, so it can be recorded in a graph; its device workspace grows (never shrinks) with
 * R·n_valid, so run the largest shape once before recording. The CPU backend runs
 * pk_sampler_sample on each row; other backends reproduce its arithmetic (docs/KERNELS.md says
 * where the CUDA backend's summation order differs). Optional for a backend
 * (PIO_ERR_UNSUPPORTED where it lacks it).
 */
pio_status pk_sample(pk_context *ctx, const pk_tensor *ids, const pk_tensor *logits,
                     int64_t n_valid, const pk_tensor *params, const pk_tensor *prompt_tokens,
                     const pk_tensor *output_tokens, const pk_tensor *uniforms, pio_error *err);

#ifdef __cplusplus
}
#endif

#endif
