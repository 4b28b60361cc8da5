/*
 * The embedded demo model (models/demo/, trained by tools/train_demo_model.py) under our engine:
 * every held-out question of models/demo/heldout.jsonl is asked through the plugin's
 * chat_completion, greedy, and the accuracy must be at least what transformers scored on the
 * same questions (recorded in the file). The prompt tokens must equal transformers' and the
 * replies must agree with transformers' token for token on nearly every question.
 */
#include <jansson.h>

#define PLUGIN_SO PIO_TEST_BUILD_DIR "/plugins/qwen3_4b_instruct_2507.so"
#include "plugin_session.h"

#define HELDOUT "models/demo/heldout.jsonl"
#define ENDOFTEXT 2045 /* the demo tokenizer's <|endoftext|> and <|im_end|> */
#define IM_END 2047
/* fp32 math on both sides (a float32 KV cache here, float32 compute there); replies may still
 * split where two logits are within rounding of each other. Measured: 0 differences. */
#define MAX_DIFFERENT_REPLIES 2

typedef struct tally {
    int questions, ours_correct, reference_correct, same_reply, prompts_checked;
} tally;

/* Leading and trailing ASCII white space removed, in place. */
static char *strip(char *text)
{
    while (*text == ' ' || *text == '\n' || *text == '\t' || *text == '\r')
        text++;
    size_t len = strlen(text);
    while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\n' || text[len - 1] == '\t' ||
                       text[len - 1] == '\r'))
        text[--len] = '\0';
    return text;
}

static int same_ids(const json_t *expected, const int32_t *ids, size_t n)
{
    if (json_array_size(expected) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (json_integer_value(json_array_get(expected, i)) != ids[i])
            return 0;
    return 1;
}

/* The prompt our chat format + tokenizer build equals transformers' apply_chat_template ids. */
static void check_prompt(session *s, const char *question, const json_t *expected, tally *t)
{
    char prompt[1024];
    snprintf(prompt, sizeof prompt, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n",
             question);
    int32_t ids[256];
    size_t n = 0;
    assert_int_equal(s->vt->tokenize(s->inst, prompt, strlen(prompt), 0, ids, 256, &n), PIO_OK);
    assert_true(same_ids(expected, ids, n));
    t->prompts_checked++;
}

static void ask(session *s, const json_t *item, tally *t)
{
    const char *question = json_string_value(json_object_get(item, "question"));
    pio_chat_message user = {.struct_size = sizeof user, .role = "user", .content = question};
    const pio_chat_message *messages[] = {&user};
    pio_sampling_params greedy = {.struct_size = sizeof greedy,
                                  .fields_set = PIO_SAMPLING_TEMPERATURE, .temperature = 0.0f};
    pio_chat_request request = {.struct_size = sizeof request, .messages = messages,
                                .n_messages = 1, .add_generation_prompt = 1,
                                .enable_thinking = -1, .max_new_tokens = 24, .sampling = &greedy};
    pio_generate_response response = {.struct_size = sizeof response};
    pio_status status = s->vt->chat_completion(s->inst, &request, &response);
    if (status != PIO_OK)
        fail_msg("question %d: %s: %s", t->questions, pio_status_str(status), s->state.last_error);
    char answer[256];
    snprintf(answer, sizeof answer, "%s", json_string_value(json_object_get(item, "answer")));
    t->ours_correct += strcmp(strip(response.text), strip(answer)) == 0;
    t->reference_correct += json_is_true(json_object_get(item, "transformers_correct"));
    /* The reference left out the end-of-turn token; our response keeps it. */
    size_t n_reply = response.n_tokens;
    if (n_reply > 0 && (response.token_ids[n_reply - 1] == IM_END ||
                        response.token_ids[n_reply - 1] == ENDOFTEXT))
        n_reply--;
    t->same_reply += same_ids(json_object_get(item, "transformers_reply_ids"),
                              response.token_ids, n_reply);
    s->vt->free_response(s->inst, &response);
    if (t->questions % 20 == 0)
        check_prompt(s, question, json_object_get(item, "prompt_ids"), t);
    t->questions++;
}

static void demo_model_is_as_accurate_as_under_transformers(void **state)
{
    (void)state;
    session s;
    open_ok(&s, "kv_cache:\n  dtype: f32\n", "models/demo", "auto");
    FILE *file = fopen(HELDOUT, "r");
    assert_non_null(file);
    tally t = {0};
    char *line = NULL;
    size_t capacity = 0;
    while (getline(&line, &capacity, file) > 0) {
        json_error_t error;
        json_t *item = json_loads(line, 0, &error);
        if (item == NULL)
            fail_msg("%s:%d: %s", HELDOUT, t.questions + 1, error.text);
        ask(&s, item, &t);
        json_decref(item);
    }
    free(line);
    fclose(file);
    close_session(&s);
    print_message("demo held-out accuracy: ours %d/%d, transformers %d/%d, identical replies "
                  "%d/%d\n",
                  t.ours_correct, t.questions, t.reference_correct, t.questions, t.same_reply,
                  t.questions);
    assert_int_equal(t.questions, 200);
    assert_int_equal(t.prompts_checked, 10);
    assert_true(t.ours_correct >= t.reference_correct);
    assert_true(t.questions - t.same_reply <= MAX_DIFFERENT_REPLIES);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(demo_model_is_as_accurate_as_under_transformers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
