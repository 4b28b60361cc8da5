/*
 * Loading and validating tokenizer.json (see pio/tokenizer.h for what is accepted).
 * Every refusal names the file and the JSON path of the offending value.
 */
#include "tokenizer_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A tokenizer.json above this size is refused before parsing (real ones are ~10 MB). */
#define TOK_MAX_FILE_BYTES (1024ull * 1024 * 1024)

typedef struct load_context {
    const char *path;
    pio_error *err;
    pio_tokenizer *t;
    bool has_template; /* a TemplateProcessing was read */
} load_context;

static pio_status fail(load_context *c, pio_status status, const char *json_path,
                       const char *format, ...) __attribute__((format(printf, 4, 5)));

static pio_status fail(load_context *c, pio_status status, const char *json_path,
                       const char *format, ...)
{
    char reason[PIO_ERROR_MESSAGE_MAX];
    va_list args;
    va_start(args, format);
    vsnprintf(reason, sizeof reason, format, args);
    va_end(args);
    return pio_error_set(c->err, status, "%s: %s: %s", c->path, json_path, reason);
}

static pio_status out_of_memory(load_context *c, const char *json_path)
{
    return fail(c, PIO_ERR_OUT_OF_MEMORY, json_path, "out of memory");
}

/* ------------------------------------------------------------------------------------------ */
/* Typed field access                                                                         */
/* ------------------------------------------------------------------------------------------ */

static const char *type_name(const json_t *value)
{
    switch (json_typeof(value)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static bool is_absent(const json_t *value)
{
    return value == NULL || json_is_null(value);
}

/* Reads an optional boolean member; absent or null gives default_value. */
static pio_status get_bool(load_context *c, const json_t *object, const char *key,
                           const char *object_path, bool default_value, bool *out)
{
    const json_t *value = json_object_get(object, key);
    *out = default_value;
    if (is_absent(value))
        return PIO_OK;
    if (!json_is_boolean(value)) {
        char where[256];
        snprintf(where, sizeof where, "%s%s%s", object_path, *object_path ? "." : "", key);
        return fail(c, PIO_ERR_FORMAT, where, "expected a boolean, found %s", type_name(value));
    }
    *out = json_is_true(value);
    return PIO_OK;
}

/* The "type" member of a component (an object). */
static pio_status component_type(load_context *c, const json_t *component, const char *path,
                                 const char **type)
{
    if (!json_is_object(component))
        return fail(c, PIO_ERR_FORMAT, path, "expected an object, found %s",
                    component == NULL ? "nothing" : type_name(component));
    const json_t *value = json_object_get(component, "type");
    if (!json_is_string(value)) {
        char where[256];
        snprintf(where, sizeof where, "%s.type", path);
        return fail(c, PIO_ERR_FORMAT, where, "expected a string naming the component type");
    }
    *type = json_string_value(value);
    return PIO_OK;
}

/* Requires an optional boolean member to have one value (absent means default_value). */
static pio_status require_bool(load_context *c, const json_t *object, const char *key,
                               const char *object_path, bool default_value, bool required)
{
    bool value;
    pio_status status = get_bool(c, object, key, object_path, default_value, &value);
    if (status != PIO_OK || value == required)
        return status;
    char where[256];
    snprintf(where, sizeof where, "%s.%s", object_path, key);
    return fail(c, PIO_ERR_UNSUPPORTED, where, "only %s is supported",
                required ? "true" : "false");
}

/* ------------------------------------------------------------------------------------------ */
/* File                                                                                       */
/* ------------------------------------------------------------------------------------------ */

static pio_status json_failure(load_context *c, const json_error_t *error)
{
    pio_status status = json_error_code(error) == json_error_out_of_memory ? PIO_ERR_OUT_OF_MEMORY
                                                                         : PIO_ERR_FORMAT;
    return pio_error_set(c->err, status, "%s: invalid JSON at line %d, column %d: %s", c->path,
                         error->line, error->column, error->text);
}

static pio_status check_size(load_context *c, unsigned long long size)
{
    if (size <= TOK_MAX_FILE_BYTES)
        return PIO_OK;
    return pio_error_set(c->err, PIO_ERR_FORMAT, "%s: %llu bytes is more than the %llu a "
                         "tokenizer.json may have", c->path, size, TOK_MAX_FILE_BYTES);
}

static pio_status check_root(load_context *c, const json_t *root)
{
    if (json_is_object(root))
        return PIO_OK;
    return fail(c, PIO_ERR_FORMAT, "(root)", "expected an object, found %s", type_name(root));
}

static pio_status read_json_buffer(load_context *c, const void *data, size_t size,
                                   json_t **root)
{
    pio_status status = check_size(c, size);
    if (status != PIO_OK)
        return status;
    json_error_t error;
    *root = json_loadb(data, size, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &error);
    return *root == NULL ? json_failure(c, &error) : check_root(c, *root);
}

/* Reads the whole file and parses it from memory (jansson's own file reader goes through getc,
 * which costs more than the parse). */
static pio_status read_json_file(load_context *c, json_t **root)
{
    FILE *f = fopen(c->path, "rb");
    struct stat st;
    if (f == NULL || fstat(fileno(f), &st) != 0) {
        pio_status status = pio_error_set(c->err, PIO_ERR_IO, "%s: cannot open: %s", c->path,
                                          strerror(errno));
        if (f != NULL)
            fclose(f);
        return status;
    }
    pio_status status = check_size(c, (unsigned long long)st.st_size);
    char *data = status == PIO_OK ? malloc((size_t)st.st_size + 1) : NULL;
    if (status == PIO_OK && data == NULL)
        status = pio_error_set(c->err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", c->path);
    if (status == PIO_OK && fread(data, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
        status = pio_error_set(c->err, PIO_ERR_IO, "%s: cannot read: %s", c->path,
                               ferror(f) ? strerror(errno) : "the file got shorter");
    fclose(f);
    if (status == PIO_OK)
        status = read_json_buffer(c, data, (size_t)st.st_size, root);
    free(data);
    return status;
}

static pio_status check_header(load_context *c, const json_t *root)
{
    const json_t *version = json_object_get(root, "version");
    if (version != NULL && !(json_is_string(version) &&
                             strcmp(json_string_value(version), "1.0") == 0))
        return fail(c, PIO_ERR_UNSUPPORTED, "version", "only \"1.0\" is supported");
    if (!is_absent(json_object_get(root, "truncation")))
        return fail(c, PIO_ERR_UNSUPPORTED, "truncation", "must be null");
    if (!is_absent(json_object_get(root, "padding")))
        return fail(c, PIO_ERR_UNSUPPORTED, "padding", "must be null");
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* model                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static pio_status check_empty_or_null_string(load_context *c, const json_t *model,
                                             const char *key)
{
    const json_t *value = json_object_get(model, key);
    if (is_absent(value) || (json_is_string(value) && json_string_length(value) == 0))
        return PIO_OK;
    char where[64];
    snprintf(where, sizeof where, "model.%s", key);
    return fail(c, PIO_ERR_UNSUPPORTED, where, "only null or \"\" is supported");
}

static pio_status check_model_options(load_context *c, const json_t *model)
{
    const json_t *type = json_object_get(model, "type");
    if (type != NULL && !(json_is_string(type) && strcmp(json_string_value(type), "BPE") == 0))
        return fail(c, PIO_ERR_UNSUPPORTED, "model.type", "only \"BPE\" is supported");
    const json_t *dropout = json_object_get(model, "dropout");
    if (!is_absent(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0.0))
        return fail(c, PIO_ERR_UNSUPPORTED, "model.dropout", "only null is supported");
    const json_t *unk = json_object_get(model, "unk_token");
    if (!is_absent(unk) && !json_is_string(unk))
        return fail(c, PIO_ERR_FORMAT, "model.unk_token", "expected a string or null");
    pio_status status = check_empty_or_null_string(c, model, "continuing_subword_prefix");
    if (status == PIO_OK)
        status = check_empty_or_null_string(c, model, "end_of_word_suffix");
    if (status == PIO_OK)
        status = require_bool(c, model, "byte_fallback", "model", false, false);
    bool fuse_unk;
    if (status == PIO_OK)
        status = get_bool(c, model, "fuse_unk", "model", false, &fuse_unk);
    if (status == PIO_OK)
        status = get_bool(c, model, "ignore_merges", "model", false, &c->t->ignore_merges);
    return status;
}

/* Largest id in model.vocab and added_tokens, validating each id on the way. */
static pio_status scan_ids(load_context *c, const json_t *vocab, const json_t *added,
                           size_t *id_count)
{
    int64_t largest = -1;
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)vocab, key, value) {
        if (!json_is_integer(value) || json_integer_value(value) < 0 ||
            json_integer_value(value) >= (json_int_t)TOK_MAX_ID_COUNT)
            return fail(c, PIO_ERR_FORMAT, "model.vocab", "\"%s\": the id must be an integer "
                        "in [0, %u)", key, TOK_MAX_ID_COUNT);
        if (json_integer_value(value) > largest)
            largest = json_integer_value(value);
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        const json_t *id = json_object_get(json_array_get(added, i), "id");
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu].id", i);
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (json_int_t)TOK_MAX_ID_COUNT)
            return fail(c, PIO_ERR_FORMAT, where, "expected an integer in [0, %u)",
                        TOK_MAX_ID_COUNT);
        if (json_integer_value(id) > largest)
            largest = json_integer_value(id);
    }
    *id_count = (size_t)(largest + 1);
    return PIO_OK;
}

static pio_status allocate_id_tables(load_context *c, size_t id_count)
{
    pio_tokenizer *t = c->t;
    t->id_count = id_count;
    t->id_kind = calloc(id_count ? id_count : 1, 1);
    if (t->id_kind == NULL || !tok_strings_init(&t->token_text, id_count) ||
        !tok_strings_init(&t->token_bytes, id_count) ||
        !tok_id_map_init(&t->text_to_id, id_count))
        return out_of_memory(c, "model.vocab");
    return PIO_OK;
}

static pio_status load_vocab(load_context *c, const json_t *vocab)
{
    pio_tokenizer *t = c->t;
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)vocab, key, value) {
        uint32_t id = (uint32_t)json_integer_value(value);
        if (t->id_kind[id] != 0) {
            const uint8_t *other = tok_strings_get(&t->token_text, (int32_t)id, NULL);
            return fail(c, PIO_ERR_FORMAT, "model.vocab", "id %u is given to both \"%s\" and "
                        "\"%s\"", id, (const char *)other, key);
        }
        if (!tok_strings_set(&t->token_text, id, key, strlen(key)) ||
            !tok_id_map_insert(&t->text_to_id, &t->token_text, id))
            return out_of_memory(c, "model.vocab");
        t->id_kind[id] = TOK_ID_VOCAB;
    }
    return PIO_OK;
}

/* Every byte's single-character token must exist: BPE starts from them. */
static pio_status find_byte_tokens(load_context *c)
{
    pio_tokenizer *t = c->t;
    for (int b = 0; b < 256; b++) {
        uint8_t text[4];
        size_t len = tok_utf8_encode(tok_byte_to_code_point((uint8_t)b), text);
        int32_t id = tok_id_map_find(&t->text_to_id, &t->token_text, text, len);
        if (id < 0 || !(t->id_kind[id] & TOK_ID_VOCAB))
            return fail(c, PIO_ERR_FORMAT, "model.vocab", "no token for byte 0x%02X (\"%.*s\" in "
                        "the byte-level alphabet)", b, (int)len, (const char *)text);
        t->byte_ids[b] = id;
    }
    return PIO_OK;
}

typedef struct merge_text {
    const char *left;
    size_t left_len;
    const char *right;
    size_t right_len;
} merge_text;

/* The two halves of a merge: "a b" (split at its one space) or ["a", "b"]. */
static pio_status merge_halves(load_context *c, const json_t *merge, const char *where,
                               merge_text *halves)
{
    if (json_is_string(merge)) {
        const char *text = json_string_value(merge);
        size_t len = json_string_length(merge);
        const char *space = memchr(text, ' ', len);
        if (space == NULL || memchr(space + 1, ' ', len - (size_t)(space + 1 - text)) != NULL)
            return fail(c, PIO_ERR_FORMAT, where, "expected \"left right\" with one space");
        *halves = (merge_text){text, (size_t)(space - text), space + 1,
                               len - (size_t)(space - text) - 1};
        return PIO_OK;
    }
    const json_t *left = json_array_get(merge, 0), *right = json_array_get(merge, 1);
    if (json_is_array(merge) && json_array_size(merge) == 2 && json_is_string(left) &&
        json_is_string(right)) {
        *halves = (merge_text){json_string_value(left), json_string_length(left),
                               json_string_value(right), json_string_length(right)};
        return PIO_OK;
    }
    return fail(c, PIO_ERR_FORMAT, where, "expected a string \"left right\" or an array of two "
                "strings");
}

static int32_t vocab_id(const pio_tokenizer *t, const void *text, size_t len)
{
    int32_t id = tok_id_map_find(&t->text_to_id, &t->token_text, text, len);
    return id >= 0 && (t->id_kind[id] & TOK_ID_VOCAB) ? id : -1;
}

static pio_status not_in_vocab(load_context *c, const char *where, const void *text, size_t len)
{
    return fail(c, PIO_ERR_FORMAT, where, "\"%.*s\" is not in model.vocab", (int)len,
                (const char *)text);
}

/* Adds merges[index] with rank index; both halves and their concatenation must be tokens. */
static pio_status load_merge(load_context *c, const json_t *merge, size_t index,
                             tok_bytes *joined)
{
    pio_tokenizer *t = c->t;
    char where[64];
    snprintf(where, sizeof where, "model.merges[%zu]", index);
    merge_text halves = {0};
    pio_status status = merge_halves(c, merge, where, &halves);
    if (status != PIO_OK)
        return status;
    int32_t left = vocab_id(t, halves.left, halves.left_len);
    if (left < 0)
        return not_in_vocab(c, where, halves.left, halves.left_len);
    int32_t right = vocab_id(t, halves.right, halves.right_len);
    if (right < 0)
        return not_in_vocab(c, where, halves.right, halves.right_len);
    joined->len = 0;
    if (!tok_bytes_append(joined, halves.left, halves.left_len) ||
        !tok_bytes_append(joined, halves.right, halves.right_len))
        return out_of_memory(c, where);
    int32_t merged = vocab_id(t, joined->data, joined->len);
    if (merged < 0)
        return not_in_vocab(c, where, joined->data, joined->len);
    tok_merge_map_put(&t->merges, left, right, (tok_merge){.rank = (uint32_t)index,
                                                           .merged = merged});
    return PIO_OK;
}

static pio_status load_merges(load_context *c, const json_t *merges)
{
    size_t n = json_array_size(merges);
    if (n >= UINT32_MAX || !tok_merge_map_init(&c->t->merges, n))
        return out_of_memory(c, "model.merges");
    tok_bytes joined = {0};
    pio_status status = PIO_OK;
    for (size_t i = 0; i < n && status == PIO_OK; i++)
        status = load_merge(c, json_array_get(merges, i), i, &joined);
    tok_bytes_free(&joined);
    return status;
}

static pio_status load_model(load_context *c, const json_t *root, size_t *id_count)
{
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return fail(c, PIO_ERR_FORMAT, "model", "expected an object");
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    const json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab))
        return fail(c, PIO_ERR_FORMAT, "model.vocab", "expected an object {token: id}");
    if (!json_is_array(merges))
        return fail(c, PIO_ERR_FORMAT, "model.merges", "expected an array");
    if (!is_absent(added) && !json_is_array(added))
        return fail(c, PIO_ERR_FORMAT, "added_tokens", "expected an array");
    pio_status status = check_model_options(c, model);
    if (status == PIO_OK)
        status = scan_ids(c, vocab, added, id_count);
    if (status == PIO_OK)
        status = allocate_id_tables(c, *id_count);
    if (status == PIO_OK)
        status = load_vocab(c, vocab);
    if (status == PIO_OK)
        status = find_byte_tokens(c);
    if (status == PIO_OK)
        status = load_merges(c, merges);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* added_tokens                                                                               */
/* ------------------------------------------------------------------------------------------ */

typedef struct added_entry {
    const char *content;
    size_t len;
    bool normalized;
    tok_added_token token;
} added_entry;

static pio_status read_added_entry(load_context *c, const json_t *item, size_t index,
                                   added_entry *e)
{
    char where[64];
    snprintf(where, sizeof where, "added_tokens[%zu]", index);
    if (!json_is_object(item))
        return fail(c, PIO_ERR_FORMAT, where, "expected an object");
    const json_t *content = json_object_get(item, "content");
    if (!json_is_string(content) || json_string_length(content) == 0) {
        snprintf(where, sizeof where, "added_tokens[%zu].content", index);
        return fail(c, PIO_ERR_FORMAT, where, "expected a non-empty string");
    }
    e->content = json_string_value(content);
    e->len = json_string_length(content);
    e->token.id = (int32_t)json_integer_value(json_object_get(item, "id"));
    pio_status status = get_bool(c, item, "single_word", where, false, &e->token.single_word);
    if (status == PIO_OK)
        status = get_bool(c, item, "lstrip", where, false, &e->token.lstrip);
    if (status == PIO_OK)
        status = get_bool(c, item, "rstrip", where, false, &e->token.rstrip);
    if (status == PIO_OK)
        status = get_bool(c, item, "normalized", where, true, &e->normalized);
    if (status == PIO_OK)
        status = get_bool(c, item, "special", where, false, &e->token.special);
    return status;
}

/* An added token may reuse a vocab id only with the same text; ids and contents are unique. */
static pio_status register_added_id(load_context *c, const added_entry *e, size_t index)
{
    pio_tokenizer *t = c->t;
    uint32_t id = (uint32_t)e->token.id;
    char where[64];
    snprintf(where, sizeof where, "added_tokens[%zu]", index);
    if (t->id_kind[id] & TOK_ID_ADDED)
        return fail(c, PIO_ERR_FORMAT, where, "id %u is used by an earlier added token", id);
    int32_t owner = tok_id_map_find(&t->text_to_id, &t->token_text, e->content, e->len);
    if (owner >= 0 && (uint32_t)owner != id)
        return fail(c, PIO_ERR_FORMAT, where, "content \"%s\" already has id %d", e->content,
                    owner);
    if (t->id_kind[id] & TOK_ID_VOCAB) {
        if (owner < 0)
            return fail(c, PIO_ERR_FORMAT, where, "id %u belongs to the vocab token \"%s\"", id,
                        (const char *)tok_strings_get(&t->token_text, (int32_t)id, NULL));
    } else if (!tok_strings_set(&t->token_text, id, e->content, e->len) ||
               !tok_id_map_insert(&t->text_to_id, &t->token_text, id)) {
        return out_of_memory(c, where);
    }
    t->id_kind[id] |= TOK_ID_ADDED | (e->token.special ? TOK_ID_SPECIAL : 0);
    return PIO_OK;
}

/* Tokens marked normalized are matched against normalized text, so their content is
 * normalized the same way. */
static pio_status add_to_matcher(load_context *c, const added_entry *e, size_t index)
{
    pio_tokenizer *t = c->t;
    char where[64];
    snprintf(where, sizeof where, "added_tokens[%zu]", index);
    if (!e->normalized)
        return tok_added_add(&t->raw_added, (const uint8_t *)e->content, e->len, e->token)
                   ? PIO_OK : out_of_memory(c, where);
    const uint8_t *content = (const uint8_t *)e->content;
    size_t len = e->len;
    tok_bytes scratch = {0};
    tok_u32s code_points = {0};
    bool ok = !t->normalize_nfc ||
              tok_nfc(content, len, &scratch, &code_points, &content, &len);
    ok = ok && tok_added_add(&t->normalized_added, content, len, e->token);
    tok_bytes_free(&scratch);
    tok_u32s_free(&code_points);
    return ok ? PIO_OK : out_of_memory(c, where);
}

static pio_status load_added_tokens(load_context *c, const json_t *root)
{
    const json_t *added = json_object_get(root, "added_tokens");
    for (size_t i = 0; i < json_array_size(added); i++) {
        added_entry e;
        pio_status status = read_added_entry(c, json_array_get(added, i), i, &e);
        if (status == PIO_OK)
            status = register_added_id(c, &e, i);
        if (status == PIO_OK)
            status = add_to_matcher(c, &e, i);
        if (status != PIO_OK)
            return status;
    }
    return PIO_OK;
}

/* Maps a vocab token's byte-level characters back to bytes into out (which has room for len
 * bytes); false when a character is outside the alphabet. */
static bool byte_level_to_bytes(const uint8_t *text, size_t len, tok_bytes *out)
{
    out->len = 0;
    for (size_t i = 0; i < len;) {
        size_t cp_len;
        int byte = tok_code_point_to_byte(tok_utf8_decode(text + i, &cp_len));
        if (byte < 0)
            return false;
        out->data[out->len++] = (uint8_t)byte;
        i += cp_len;
    }
    return true;
}

/* What each id decodes to: added tokens their content, vocab tokens their byte-level characters
 * mapped back to bytes. A vocab token with a character outside the alphabet decodes to its own
 * UTF-8 text (as Hugging Face's ByteLevel decoder does). */
static pio_status build_token_bytes(load_context *c)
{
    pio_tokenizer *t = c->t;
    tok_bytes bytes = {0};
    pio_status status = PIO_OK;
    for (size_t id = 0; id < t->id_count && status == PIO_OK; id++) {
        size_t len;
        const uint8_t *text = tok_strings_get(&t->token_text, (int32_t)id, &len);
        if (text == NULL)
            continue;
        bytes.len = 0;
        if (!tok_bytes_reserve(&bytes, len + 1)) {
            status = out_of_memory(c, "model.vocab");
            break;
        }
        bool mapped = !(t->id_kind[id] & TOK_ID_ADDED) && byte_level_to_bytes(text, len, &bytes);
        bool stored = mapped ? tok_strings_set(&t->token_bytes, (uint32_t)id, bytes.data, bytes.len)
                             : tok_strings_set(&t->token_bytes, (uint32_t)id, text, len);
        if (!stored)
            status = out_of_memory(c, "model.vocab");
    }
    tok_bytes_free(&bytes);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* normalizer, pre_tokenizer, post_processor, decoder                                         */
/* ------------------------------------------------------------------------------------------ */

static pio_status load_normalizer_item(load_context *c, const json_t *item, const char *path)
{
    const char *type = NULL;
    pio_status type_status = component_type(c, item, path, &type);
    if (type_status != PIO_OK)
        return type_status;
    if (strcmp(type, "NFC") != 0)
        return fail(c, PIO_ERR_UNSUPPORTED, path, "normalizer \"%s\" is not supported (only NFC)",
                    type);
    c->t->normalize_nfc = true;
    return PIO_OK;
}

static pio_status load_normalizer(load_context *c, const json_t *root)
{
    const json_t *normalizer = json_object_get(root, "normalizer");
    if (is_absent(normalizer))
        return PIO_OK;
    const char *type = NULL;
    pio_status type_status = component_type(c, normalizer, "normalizer", &type);
    if (type_status != PIO_OK)
        return type_status;
    if (strcmp(type, "Sequence") != 0)
        return load_normalizer_item(c, normalizer, "normalizer");
    const json_t *items = json_object_get(normalizer, "normalizers");
    if (!json_is_array(items))
        return fail(c, PIO_ERR_FORMAT, "normalizer.normalizers", "expected an array");
    for (size_t i = 0; i < json_array_size(items); i++) {
        char where[64];
        snprintf(where, sizeof where, "normalizer.normalizers[%zu]", i);
        pio_status status = load_normalizer_item(c, json_array_get(items, i), where);
        if (status != PIO_OK)
            return status;
    }
    return PIO_OK;
}

static pio_status load_split(load_context *c, const json_t *split, const char *path)
{
    char where[256];
    const json_t *behavior = json_object_get(split, "behavior");
    if (!json_is_string(behavior) || strcmp(json_string_value(behavior), "Isolated") != 0) {
        snprintf(where, sizeof where, "%s.behavior", path);
        return fail(c, PIO_ERR_UNSUPPORTED, where, "only \"Isolated\" is supported");
    }
    pio_status status = require_bool(c, split, "invert", path, false, false);
    if (status != PIO_OK)
        return status;
    const json_t *pattern = json_object_get(split, "pattern");
    const json_t *regex = json_object_get(pattern, "Regex");
    const json_t *literal = json_object_get(pattern, "String");
    const json_t *text = regex != NULL ? regex : literal;
    snprintf(where, sizeof where, "%s.pattern%s", path,
             regex != NULL ? ".Regex" : literal != NULL ? ".String" : "");
    if (!json_is_object(pattern) || !json_is_string(text) || json_object_size(pattern) != 1)
        return fail(c, PIO_ERR_FORMAT, where, "expected {\"Regex\": pattern} or "
                    "{\"String\": text}");
    char why[512];
    if (!tok_regex_compile(&c->t->split, json_string_value(text), json_string_length(text),
                           regex == NULL, why, sizeof why))
        return fail(c, PIO_ERR_UNSUPPORTED, where, "%s", why);
    return PIO_OK;
}

static pio_status check_byte_level_pre_tokenizer(load_context *c, const json_t *item,
                                                 const char *path)
{
    char where[256];
    snprintf(where, sizeof where, "%s.add_prefix_space", path);
    const json_t *prefix = json_object_get(item, "add_prefix_space");
    if (!json_is_false(prefix))
        return fail(c, PIO_ERR_UNSUPPORTED, where, "only false is supported");
    /* Hugging Face's default for a missing use_regex is true. */
    return require_bool(c, item, "use_regex", path, true, false);
}

static pio_status load_pre_tokenizer(load_context *c, const json_t *root)
{
    const json_t *pre = json_object_get(root, "pre_tokenizer");
    const char *type = NULL;
    pio_status type_status = component_type(c, pre, "pre_tokenizer", &type);
    if (type_status != PIO_OK)
        return type_status;
    const json_t *items = json_object_get(pre, "pretokenizers");
    if (strcmp(type, "Sequence") != 0 || !json_is_array(items) || json_array_size(items) != 2)
        return fail(c, PIO_ERR_UNSUPPORTED, "pre_tokenizer", "only Sequence[Split, ByteLevel] "
                    "is supported");
    const char *first = NULL;
    pio_status first_status = component_type(c, json_array_get(items, 0),
                                             "pre_tokenizer.pretokenizers[0]", &first);
    if (first_status != PIO_OK)
        return first_status;
    if (strcmp(first, "Split") != 0)
        return fail(c, PIO_ERR_UNSUPPORTED, "pre_tokenizer.pretokenizers[0].type",
                    "\"%s\" is not supported here (expected Split)", first);
    const char *second = NULL;
    pio_status second_status = component_type(c, json_array_get(items, 1),
                                              "pre_tokenizer.pretokenizers[1]", &second);
    if (second_status != PIO_OK)
        return second_status;
    if (strcmp(second, "ByteLevel") != 0)
        return fail(c, PIO_ERR_UNSUPPORTED, "pre_tokenizer.pretokenizers[1].type",
                    "\"%s\" is not supported here (expected ByteLevel)", second);
    pio_status status = check_byte_level_pre_tokenizer(c, json_array_get(items, 1),
                                                       "pre_tokenizer.pretokenizers[1]");
    if (status == PIO_OK)
        status = load_split(c, json_array_get(items, 0), "pre_tokenizer.pretokenizers[0]");
    return status;
}

static pio_status load_decoder(load_context *c, const json_t *root)
{
    const json_t *decoder = json_object_get(root, "decoder");
    const char *type = NULL;
    pio_status type_status = component_type(c, decoder, "decoder", &type);
    if (type_status != PIO_OK)
        return type_status;
    if (strcmp(type, "ByteLevel") != 0)
        return fail(c, PIO_ERR_UNSUPPORTED, "decoder.type", "\"%s\" is not supported (only "
                    "ByteLevel)", type);
    return PIO_OK;
}

/* Appends the ids of special_tokens[name] to *ids. */
static pio_status template_token_ids(load_context *c, const json_t *template_processing,
                                     const char *name, const char *where, int32_t **ids,
                                     size_t *n)
{
    const json_t *entry = json_object_get(json_object_get(template_processing, "special_tokens"),
                                          name);
    const json_t *list = json_object_get(entry, "ids");
    if (!json_is_array(list))
        return fail(c, PIO_ERR_FORMAT, where, "\"%s\" has no ids in special_tokens", name);
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *id = json_array_get(list, i);
        json_int_t value = json_is_integer(id) ? json_integer_value(id) : -1;
        if (value < 0 || (size_t)value >= c->t->id_count || c->t->id_kind[value] == 0)
            return fail(c, PIO_ERR_FORMAT, where, "special_tokens[\"%s\"].ids[%zu] is not a "
                        "token id", name, i);
        int32_t *grown = realloc(*ids, (*n + 1) * sizeof *grown);
        if (grown == NULL)
            return out_of_memory(c, where);
        *ids = grown;
        (*ids)[(*n)++] = (int32_t)value;
    }
    return PIO_OK;
}

/* The "single" template: special tokens before the sequence go in front, the rest after. */
static pio_status load_template(load_context *c, const json_t *processing, const char *path)
{
    pio_tokenizer *t = c->t;
    char where[256];
    snprintf(where, sizeof where, "%s.single", path);
    const json_t *single = json_object_get(processing, "single");
    if (!json_is_array(single))
        return fail(c, PIO_ERR_FORMAT, where, "expected an array");
    if (c->has_template)
        return fail(c, PIO_ERR_UNSUPPORTED, where, "only one TemplateProcessing is supported");
    c->has_template = true;
    bool seen_sequence = false;
    for (size_t i = 0; i < json_array_size(single); i++) {
        snprintf(where, sizeof where, "%s.single[%zu]", path, i);
        const json_t *item = json_array_get(single, i);
        const json_t *special = json_object_get(json_object_get(item, "SpecialToken"), "id");
        const json_t *sequence = json_object_get(json_object_get(item, "Sequence"), "id");
        pio_status status = PIO_OK;
        if (json_is_string(special)) {
            status = seen_sequence
                         ? template_token_ids(c, processing, json_string_value(special), where,
                                              &t->suffix_ids, &t->n_suffix)
                         : template_token_ids(c, processing, json_string_value(special), where,
                                              &t->prefix_ids, &t->n_prefix);
        } else if (json_is_string(sequence) && strcmp(json_string_value(sequence), "A") == 0 &&
                   !seen_sequence) {
            seen_sequence = true;
        } else {
            status = fail(c, PIO_ERR_UNSUPPORTED, where, "expected {\"SpecialToken\": {\"id\": "
                          "...}} or one {\"Sequence\": {\"id\": \"A\"}}");
        }
        if (status != PIO_OK)
            return status;
    }
    if (!seen_sequence)
        return fail(c, PIO_ERR_FORMAT, where,
                    "the template has no {\"Sequence\": {\"id\": \"A\"}}");
    return PIO_OK;
}

static pio_status load_post_processor_item(load_context *c, const json_t *item, const char *path)
{
    const char *type = NULL;
    pio_status type_status = component_type(c, item, path, &type);
    if (type_status != PIO_OK)
        return type_status;
    if (strcmp(type, "ByteLevel") == 0)
        return PIO_OK; /* it only adjusts offsets */
    if (strcmp(type, "TemplateProcessing") == 0)
        return load_template(c, item, path);
    return fail(c, PIO_ERR_UNSUPPORTED, path, "post_processor \"%s\" is not supported", type);
}

static pio_status load_post_processor(load_context *c, const json_t *root)
{
    const json_t *post = json_object_get(root, "post_processor");
    if (is_absent(post))
        return PIO_OK;
    const char *type = NULL;
    pio_status type_status = component_type(c, post, "post_processor", &type);
    if (type_status != PIO_OK)
        return type_status;
    if (strcmp(type, "Sequence") != 0)
        return load_post_processor_item(c, post, "post_processor");
    const json_t *items = json_object_get(post, "processors");
    if (!json_is_array(items))
        return fail(c, PIO_ERR_FORMAT, "post_processor.processors", "expected an array");
    for (size_t i = 0; i < json_array_size(items); i++) {
        char where[64];
        snprintf(where, sizeof where, "post_processor.processors[%zu]", i);
        pio_status status = load_post_processor_item(c, json_array_get(items, i), where);
        if (status != PIO_OK)
            return status;
    }
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Entry points                                                                               */
/* ------------------------------------------------------------------------------------------ */

static pio_status create_cache(load_context *c)
{
    tok_piece_cache *cache = &c->t->cache;
    cache->entries = calloc(TOK_CACHE_SLOTS, sizeof *cache->entries);
    if (cache->entries == NULL)
        return out_of_memory(c, "(cache)");
    if (pthread_mutex_init(&cache->lock, NULL) != 0) {
        free(cache->entries);
        cache->entries = NULL;
        return out_of_memory(c, "(cache)");
    }
    return PIO_OK;
}

static pio_status load_root(load_context *c, const json_t *root)
{
    size_t id_count = 0;
    /* The normalizer comes first: normalized added tokens are stored normalized. */
    pio_status status = check_header(c, root);
    if (status == PIO_OK)
        status = load_normalizer(c, root);
    if (status == PIO_OK)
        status = load_pre_tokenizer(c, root);
    if (status == PIO_OK)
        status = load_decoder(c, root);
    if (status == PIO_OK)
        status = load_model(c, root, &id_count);
    if (status == PIO_OK)
        status = load_added_tokens(c, root);
    if (status == PIO_OK)
        status = build_token_bytes(c);
    if (status == PIO_OK)
        status = load_post_processor(c, root);
    if (status == PIO_OK)
        status = create_cache(c);
    return status;
}

/* Loads from the file at `path`, or from data[0, size) when data is not NULL. */
static pio_status load(const char *path, const void *data, size_t size, pio_tokenizer **out,
                       pio_error *err)
{
    if (out == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pio_tokenizer_load: out is NULL");
    *out = NULL;
    if (path == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pio_tokenizer_load: path is NULL");
    load_context c = {.path = path, .err = err, .t = calloc(1, sizeof(pio_tokenizer))};
    if (c.t == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    json_t *root = NULL;
    pio_status status = data != NULL ? read_json_buffer(&c, data, size, &root)
                                     : read_json_file(&c, &root);
    if (status == PIO_OK)
        status = load_root(&c, root);
    json_decref(root);
    if (status != PIO_OK) {
        pio_tokenizer_free(c.t);
        return status;
    }
    *out = c.t;
    return PIO_OK;
}

pio_status pio_tokenizer_load(const char *path, pio_tokenizer **out, pio_error *err)
{
    return load(path, NULL, 0, out, err);
}

pio_status pio_tokenizer_load_buffer(const char *name, const void *data, size_t size,
                                     pio_tokenizer **out, pio_error *err)
{
    if (data == NULL && out != NULL) {
        *out = NULL;
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pio_tokenizer_load_buffer: data is "
                             "NULL");
    }
    return load(name, data, size, out, err);
}

void pio_tokenizer_free(pio_tokenizer *t)
{
    if (t == NULL)
        return;
    if (t->cache.entries != NULL) {
        pthread_mutex_destroy(&t->cache.lock);
        free(t->cache.entries);
    }
    free(t->id_kind);
    tok_strings_free(&t->token_text);
    tok_strings_free(&t->token_bytes);
    tok_id_map_free(&t->text_to_id);
    tok_merge_map_free(&t->merges);
    tok_added_free(&t->raw_added);
    tok_added_free(&t->normalized_added);
    tok_regex_free(&t->split);
    free(t->prefix_ids);
    free(t->suffix_ids);
    free(t);
}
