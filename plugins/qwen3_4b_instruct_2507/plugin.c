/*
 * The qwen3_4b_instruct_2507 plugin: Qwen3ForCausalLM (Qwen3-4B-Instruct-2507 and any Qwen3
 * dense model of the same structure) as a decoder of the SDK (pio/decoder.h) with the dense
 * SwiGLU MLP of model.h, in the Qwen3 ChatML format.
 */
#include "model.h"

static const pio_decoder_spec qwen3_spec = {
    .architecture = "Qwen3ForCausalLM",
    .family = "Qwen3 dense",
    .chat_format = PIO_CHAT_FORMAT_QWEN3,
    .model_size = sizeof(qwen3_dense),
    .read_config = qwen3_read_config,
    .builtin_config = qwen3_builtin_config,
    .prepare = qwen3_prepare,
    .layer_slots = qwen3_layer_slots,
    .workspace = qwen3_workspace,
    .ffn_block = qwen3_mlp_block,
    .release = qwen3_release,
    .shard = qwen3_shard,
};

static const char *const qwen3_architectures[] = {"Qwen3ForCausalLM", NULL};

PIO_DECODER_PLUGIN_DEFINE("qwen3_4b_instruct_2507", "0.1.0", qwen3_architectures,
                          PIO_CAP_CPU | PIO_CAP_CHAT | PIO_CAP_STREAMING | PIO_CAP_TENSOR_PARALLEL,
                          qwen3_spec)
