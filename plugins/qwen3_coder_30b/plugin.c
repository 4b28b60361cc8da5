/*
 * The qwen3_coder_30b plugin: Qwen3MoeForCausalLM (Qwen3-Coder-30B-A3B-Instruct and any
 * Qwen3-MoE model of the same structure) as a decoder of the SDK (pio/decoder.h) with the
 * sparse MoE block of model.h, in the Qwen3-Coder chat format: tools are rendered into the
 * prompt and the model's XML tool calls come back parsed in the response.
 */
#include "model.h"

static const pio_decoder_spec qwen3_moe_spec = {
    .architecture = "Qwen3MoeForCausalLM",
    .family = "Qwen3-MoE",
    .chat_format = PIO_CHAT_FORMAT_QWEN3_CODER,
    .model_size = sizeof(qwen3_moe),
    .read_config = qwen3_moe_read_config,
    .builtin_config = qwen3_moe_builtin_config,
    .prepare = qwen3_moe_prepare,
    .layer_slots = qwen3_moe_layer_slots,
    .weights_bound = qwen3_moe_pack,
    .workspace = qwen3_moe_workspace,
    .ffn_block = qwen3_moe_block,
    .release = qwen3_moe_release,
    .routed_weights = qwen3_moe_routed_weights,
    .shard = qwen3_moe_shard,
};

static const char *const qwen3_moe_architectures[] = {"Qwen3MoeForCausalLM", NULL};

PIO_DECODER_PLUGIN_DEFINE("qwen3_coder_30b", "0.1.0", qwen3_moe_architectures,
                          PIO_CAP_CPU | PIO_CAP_CHAT | PIO_CAP_TOOLS | PIO_CAP_STREAMING |
                              PIO_CAP_TENSOR_PARALLEL,
                          qwen3_moe_spec)
