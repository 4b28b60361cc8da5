/*
 * Every configuration key the host knows. To add a key, add one row here and one line to
 * configs/README.md (tests/test_config.c checks that the README mentions every key).
 * Defaults are applied by whoever reads the key (host or plugin); default_text documents them.
 */
#include "host/config.h"

#include <string.h>

/* clang-format off */
#define ANY_RANGE           {0, 0, 0, 0.0, 0.0}
#define AT_LEAST(lo)        {1, 0, 0, (lo), 0.0}
#define ABOVE(lo)           {1, 1, 0, (lo), 0.0}
#define BETWEEN(lo, hi)     {1, 0, 1, (lo), (hi)}
#define ABOVE_UP_TO(lo, hi) {1, 1, 1, (lo), (hi)}

#define STR(key, choices, dflt, text) {key, PIO_CONFIG_STR, 0, 0, choices, ANY_RANGE, dflt, text}
#define I64(key, range, dflt, text)   {key, PIO_CONFIG_I64, 0, 0, NULL, range, dflt, text}
#define F64(key, range, dflt, text)   {key, PIO_CONFIG_F64, 0, 0, NULL, range, dflt, text}
#define BOOL(key, dflt, text)         {key, PIO_CONFIG_BOOL, 0, 0, NULL, ANY_RANGE, dflt, text}
#define LIST(key, type, range, dflt, text) {key, type, 1, 0, NULL, range, dflt, text}
#define SECTION(key, text) {key, PIO_CONFIG_STR, 0, 1, NULL, ANY_RANGE, "(none)", text}
/* clang-format on */

static const pio_config_key_info schema[] = {
    STR("plugin", NULL, "chosen from config.json architectures",
        "name of the plugin to run (as `pio list` shows it)"),
    STR("plugins.dir", NULL, "(none)",
        "extra plugin folder, searched after --plugin-dir and PIO_PLUGIN_PATH"),

    STR("model.path", NULL, "(none)", "Hugging Face model folder (config.json, *.safetensors)"),
    STR("model.load_format", "auto|dummy", "auto",
        "auto reads safetensors; dummy fills the real shapes with seeded random weights"),
    STR("model.dtype", NULL, "auto", "weight dtype: auto keeps the file dtype (bf16)"),
    I64("model.seed", AT_LEAST(0), "0", "seed of the dummy weight generator"),

    STR("device.backend", "cpu|cuda|cuda:N", "cpu",
        "compute backend: cpu, or cuda on GPU N (cuda means cuda:0; needs a CUDA build)"),

    I64("kv_cache.block_size", BETWEEN(1, 4096), "16", "tokens per paged KV-cache block"),
    I64("kv_cache.max_tokens", AT_LEAST(1), "sized from kv_cache.memory_gb",
        "KV-cache capacity in tokens over all sequences"),
    F64("kv_cache.memory_gb", ABOVE(0), "what is left after weights and workspace",
        "KV-cache budget in GiB per device"),
    STR("kv_cache.dtype", NULL, "auto", "KV-cache dtype: auto (the activation dtype) or fp8_e4m3"),

    I64("generation.max_new_tokens", AT_LEAST(1), "256", "tokens generated per request at most"),
    F64("generation.temperature", AT_LEAST(0), "generation_config.json, else 1.0",
        "sampling temperature; 0 is greedy"),
    F64("generation.top_p", ABOVE_UP_TO(0, 1), "generation_config.json, else 1.0",
        "nucleus sampling mass"),
    I64("generation.top_k", AT_LEAST(0), "generation_config.json, else 0 (off)",
        "sample from the k most likely tokens"),
    F64("generation.min_p", BETWEEN(0, 1), "generation_config.json, else 0 (off)",
        "drop tokens below min_p times the top probability"),
    F64("generation.repetition_penalty", ABOVE(0), "generation_config.json, else 1.0 (off)",
        "multiplicative penalty on seen tokens (as Hugging Face)"),
    F64("generation.presence_penalty", BETWEEN(-2, 2), "0 (off)",
        "additive penalty on tokens already generated (as OpenAI)"),
    F64("generation.frequency_penalty", BETWEEN(-2, 2), "0 (off)",
        "additive penalty scaled by each token's count (as OpenAI)"),
    I64("generation.seed", AT_LEAST(0), "random per request", "sampling seed"),
    LIST("generation.stop", PIO_CONFIG_STR, ANY_RANGE, "[] (only the model's EOS tokens)",
         "strings that end generation"),

    I64("runtime.threads", AT_LEAST(0), "0 (one per online CPU)", "CPU backend threads"),
    BOOL("runtime.cuda_graphs", "true", "capture decode steps as CUDA graphs"),
    STR("runtime.cuda_gemv_tma", "auto|all|lm_head|off", "auto",
        "decode projections streamed by tensor-map copies: auto = all for a dense model below "
        "512 positions (4096 on GPUs with memory of 4 TB/s or more), else the lm_head"),
    I64("runtime.max_batch_size", AT_LEAST(1), "256", "sequences decoded together at most"),
    I64("runtime.max_context", AT_LEAST(1), "max_position_embeddings from config.json",
        "positions per sequence at most (prompt + generated)"),

    I64("parallel.tensor_parallel_size", BETWEEN(1, 64), "1", "GPUs one model is split over"),
    LIST("parallel.devices", PIO_CONFIG_I64, AT_LEAST(0),
         "[N, N+1, ... N+tensor_parallel_size-1] for device cuda:N (cuda: N = 0)",
         "CUDA ordinal of each tensor-parallel rank"),
    BOOL("parallel.force_ranks", "false",
         "run tensor_parallel_size 1 through the rank machinery too (a check of that path)"),

    STR("server.host", NULL, "127.0.0.1", "address `pio serve` listens on"),
    I64("server.port", BETWEEN(1, 65535), "8000", "TCP port `pio serve` listens on"),
    STR("server.api_key", NULL, "(none: no authentication)",
        "bearer token clients must send to `pio serve`"),

    I64("bench.prompt_tokens", AT_LEAST(0), "512",
        "prompt length of the prefill test (pp); 0 skips it"),
    I64("bench.gen_tokens", AT_LEAST(0), "128", "tokens of the decode test (tg); 0 skips it"),
    I64("bench.repetitions", AT_LEAST(1), "5", "runs of each test; mean and stddev are reported"),

    STR("logging.level", "error|warn|info|debug", "info", "least severe message printed"),

    SECTION("plugin_options", "free-form settings a plugin reads; never checked by the host"),
};

size_t pio_config_schema_count(void)
{
    return sizeof schema / sizeof schema[0];
}

const pio_config_key_info *pio_config_schema_at(size_t i)
{
    return i < pio_config_schema_count() ? &schema[i] : NULL;
}

static int lies_in_section(const char *key, const char *section)
{
    size_t n = strlen(section);
    return strncmp(key, section, n) == 0 && key[n] == '.' && key[n + 1] != '\0';
}

const pio_config_key_info *pio_config_schema_lookup(const char *key)
{
    if (key == NULL)
        return NULL;
    for (size_t i = 0; i < pio_config_schema_count(); i++) {
        const pio_config_key_info *info = &schema[i];
        if (info->free_form ? lies_in_section(key, info->key) : strcmp(key, info->key) == 0)
            return info;
    }
    return NULL;
}
