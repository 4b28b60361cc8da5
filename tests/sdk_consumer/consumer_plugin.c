/*
 * A third-party plugin, built out of tree against the installed SDK only
 * (pkg-config pio-sdk): it proves the headers, the static support libraries and the
 * version script are installed and usable. It serves "ConsumerForCausalLM" and answers
 * every prompt with "42".
 */
#include <kernels/sampler.h>
#include <pio/dtype.h>
#include <pio/error.h>
#include <pio/plugin.h>
#include <stdlib.h>
#include <string.h>

struct pio_instance {
    const pio_host_services *services;
    void *host;
};

static pio_status consumer_initialize(const pio_init_params *params, pio_instance **out)
{
    pio_instance *inst = calloc(1, sizeof *inst);
    if (inst == NULL)
        return PIO_ERR_OUT_OF_MEMORY;
    inst->services = params->services;
    inst->host = params->host;
    *out = inst;
    return PIO_OK;
}

static pio_status consumer_load_model(pio_instance *inst, const pio_load_params *params)
{
    (void)params;
    pio_error err;
    /* Uses both installed libraries: the SDK's dtype table and the kernels' random numbers. */
    pk_rng rng;
    pk_rng_seed(&rng, 7);
    if (pio_dtype_size(pio_dtype_from_name("BF16")) != 2 || pk_rng_uniform(&rng) >= 1.0)
        return pio_error_set(&err, PIO_ERR_INTERNAL, "installed SDK libraries misbehave");
    inst->services->log(inst->host, PIO_LOG_DEBUG, "consumer loaded");
    return PIO_OK;
}

static pio_status consumer_info(pio_instance *inst, pio_model_info *info)
{
    (void)inst;
    info->architecture = "ConsumerForCausalLM";
    info->vocab_size = 1;
    return PIO_OK;
}

static pio_status consumer_infer(pio_instance *inst, const pio_infer_request *req,
                                 pio_infer_result *res)
{
    (void)inst;
    (void)req;
    res->n_rows = 0;
    res->vocab_size = 1;
    return PIO_ERR_UNSUPPORTED;
}

static void consumer_cleanup(pio_instance *inst) { free(inst); }

static pio_status consumer_tokenize(pio_instance *inst, const char *text, size_t len, int special,
                                    int32_t *ids, size_t capacity, size_t *n)
{
    (void)inst, (void)text, (void)special, (void)ids, (void)capacity;
    *n = len;
    return PIO_ERR_UNSUPPORTED;
}

static pio_status consumer_detokenize(pio_instance *inst, const int32_t *ids, size_t n, int skip,
                                      char *text, size_t capacity, size_t *len)
{
    (void)inst, (void)ids, (void)n, (void)skip, (void)text, (void)capacity;
    *len = 0;
    return PIO_ERR_UNSUPPORTED;
}

static pio_status consumer_answer(pio_generate_response *resp)
{
    resp->text = malloc(3);
    if (resp->text == NULL)
        return PIO_ERR_OUT_OF_MEMORY;
    memcpy(resp->text, "42", 3);
    resp->text_len = 2;
    resp->finish_reason = PIO_FINISH_STOP;
    return PIO_OK;
}

static pio_status consumer_generate(pio_instance *inst, const pio_generate_request *req,
                                    pio_generate_response *resp)
{
    (void)inst, (void)req;
    return consumer_answer(resp);
}

static pio_status consumer_chat(pio_instance *inst, const pio_chat_request *req,
                                pio_generate_response *resp)
{
    (void)inst;
    pio_status status = consumer_answer(resp);
    if (status == PIO_OK && req->on_token != NULL)
        req->on_token(req->user_data, 0, resp->text, resp->text_len);
    return status;
}

static void consumer_free_response(pio_instance *inst, pio_generate_response *resp)
{
    (void)inst;
    free(resp->text);
    resp->text = NULL;
}

static const pio_plugin_vtable consumer_vtable = {
    .struct_size = sizeof(pio_plugin_vtable),
    .initialize = consumer_initialize,
    .load_model = consumer_load_model,
    .get_model_info = consumer_info,
    .infer = consumer_infer,
    .cleanup = consumer_cleanup,
    .tokenize = consumer_tokenize,
    .detokenize = consumer_detokenize,
    .generate_text = consumer_generate,
    .chat_completion = consumer_chat,
    .free_response = consumer_free_response,
};

static const char *const consumer_architectures[] = {"ConsumerForCausalLM", NULL};

PIO_PLUGIN_DEFINE("consumer", "0.1.0", consumer_architectures, PIO_CAP_CPU | PIO_CAP_CHAT,
                  consumer_vtable)
