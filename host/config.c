/*
 * YAML configuration: libyaml events -> a sorted table of dotted keys -> typed getters.
 *
 * A load parses the whole document into a staging area first and merges it into the table
 * only when everything parsed, so a failed load leaves the table untouched. The walk over
 * libyaml events is recursive but bounded: a key may have at most PIO_CONFIG_MAX_DEPTH
 * segments, and every mapping level adds at least one.
 */
#include "host/config.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

/* ========================================================================================== */
/* The table                                                                                  */
/* ========================================================================================== */

typedef struct config_scalar {
    char *text;
    int quoted;   /* quoted or block scalar: a string whatever it looks like */
    char *origin; /* "file:line:column" of the value, or the override label */
} config_scalar;

typedef struct config_entry {
    char *key;
    char *key_origin;    /* where the key itself was written (unknown-key warnings) */
    config_scalar value; /* the scalar; for a list its display text and where it starts */
    int is_list;
    int is_unset; /* staged only: a null value, which removes the key */
    config_scalar *items;
    size_t item_count;
} config_entry;

struct pio_config {
    config_entry *entries; /* sorted by key (strcmp) */
    size_t count;
    size_t capacity;
};

static void free_scalar(config_scalar *scalar)
{
    free(scalar->text);
    free(scalar->origin);
}

static void free_entry(config_entry *entry)
{
    free(entry->key);
    free(entry->key_origin);
    free_scalar(&entry->value);
    for (size_t i = 0; i < entry->item_count; i++)
        free_scalar(&entry->items[i]);
    free(entry->items);
    memset(entry, 0, sizeof *entry);
}

/* Index of `key`, or where it would be inserted (and *found = 0). */
static size_t search_entries(const pio_config *cfg, const char *key, int *found)
{
    size_t lo = 0, hi = cfg->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int order = strcmp(cfg->entries[mid].key, key);
        if (order == 0) {
            *found = 1;
            return mid;
        }
        if (order < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = 0;
    return lo;
}

static const config_entry *find_entry(const pio_config *cfg, const char *key)
{
    int found;
    size_t index = search_entries(cfg, key, &found);
    return found ? &cfg->entries[index] : NULL;
}

pio_config *pio_config_new(void)
{
    return calloc(1, sizeof(pio_config));
}

void pio_config_free(pio_config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < cfg->count; i++)
        free_entry(&cfg->entries[i]);
    free(cfg->entries);
    free(cfg);
}

size_t pio_config_count(const pio_config *cfg)
{
    return cfg != NULL ? cfg->count : 0;
}

const char *pio_config_key_at(const pio_config *cfg, size_t i)
{
    return cfg != NULL && i < cfg->count ? cfg->entries[i].key : NULL;
}

const char *pio_config_value_at(const pio_config *cfg, size_t i)
{
    return cfg != NULL && i < cfg->count ? cfg->entries[i].value.text : NULL;
}

const char *pio_config_origin_at(const pio_config *cfg, size_t i)
{
    return cfg != NULL && i < cfg->count ? cfg->entries[i].value.origin : NULL;
}

/* ========================================================================================== */
/* Small text helpers                                                                         */
/* ========================================================================================== */

static char *alloc_printf(const char *format, ...) __attribute__((format(printf, 1, 2)));

static char *alloc_printf(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    int needed = vsnprintf(NULL, 0, format, args);
    va_end(args);
    if (needed < 0)
        return NULL;
    char *text = malloc((size_t)needed + 1);
    if (text == NULL)
        return NULL;
    va_start(args, format);
    vsnprintf(text, (size_t)needed + 1, format, args);
    va_end(args);
    return text;
}

static char *copy_text(const char *text, size_t len)
{
    char *copy = malloc(len + 1);
    if (copy != NULL) {
        memcpy(copy, text, len);
        copy[len] = '\0';
    }
    return copy;
}

/* A growable string; `failed` latches the first allocation failure. */
typedef struct text_buffer {
    char *data;
    size_t len;
    size_t capacity;
    int failed;
} text_buffer;

static void buffer_append(text_buffer *buffer, const char *text, size_t len)
{
    if (buffer->failed)
        return;
    if (buffer->len + len + 1 > buffer->capacity) {
        size_t capacity = buffer->capacity ? buffer->capacity : 32;
        while (capacity < buffer->len + len + 1)
            capacity *= 2;
        char *data = realloc(buffer->data, capacity);
        if (data == NULL) {
            buffer->failed = 1;
            return;
        }
        buffer->data = data;
        buffer->capacity = capacity;
    }
    memcpy(buffer->data + buffer->len, text, len);
    buffer->len += len;
    buffer->data[buffer->len] = '\0';
}

static void buffer_append_str(text_buffer *buffer, const char *text)
{
    buffer_append(buffer, text, strlen(text));
}

/* Appends `text` in double quotes with C-style escapes for quotes, backslashes and control
 * characters, so any value prints on one line. */
static void buffer_append_quoted(text_buffer *buffer, const char *text)
{
    buffer_append(buffer, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++) {
        char escaped[8];
        if (*p == '"' || *p == '\\')
            snprintf(escaped, sizeof escaped, "\\%c", *p);
        else if (*p == '\n')
            snprintf(escaped, sizeof escaped, "\\n");
        else if (*p == '\t')
            snprintf(escaped, sizeof escaped, "\\t");
        else if (*p < 0x20 || *p == 0x7f)
            snprintf(escaped, sizeof escaped, "\\x%02x", *p);
        else
            snprintf(escaped, sizeof escaped, "%c", *p);
        buffer_append_str(buffer, escaped);
    }
    buffer_append(buffer, "\"", 1);
}

/* A value shortened and escaped for an error message: at most ~60 bytes, one line. */
static void describe_text(const char *text, char *out, size_t capacity)
{
    const size_t shown_max = 60;
    size_t len = strlen(text), shown = len;
    if (shown > shown_max) {
        shown = shown_max;
        while (shown > 0 && ((unsigned char)text[shown] & 0xC0) == 0x80)
            shown--; /* do not cut a UTF-8 sequence */
    }
    size_t used = 0;
    for (size_t i = 0; i < shown && used + 5 < capacity; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c == 0x7f)
            used += (size_t)snprintf(out + used, capacity - used, "\\x%02x", c);
        else
            out[used++] = (char)c;
    }
    out[used] = '\0';
    if (shown < len && used + 4 < capacity)
        memcpy(out + used, "...", 4);
}

/* ========================================================================================== */
/* Keys                                                                                       */
/* ========================================================================================== */

static int is_key_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
}

static size_t count_segments(const char *key)
{
    size_t segments = 1;
    for (; *key != '\0'; key++)
        segments += *key == '.';
    return segments;
}

/* NULL when `key` (len bytes, not NUL-terminated) is a well-formed dotted key, else what is
 * wrong with it, written into `problem`. */
static const char *key_problem(const char *key, size_t len, char *problem, size_t capacity)
{
    if (len == 0)
        return "empty key";
    size_t segments = 1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        if (!is_key_char(c)) {
            snprintf(problem, capacity,
                     c >= 0x20 && c < 0x7f
                         ? "contains '%c'; keys use only letters, digits, '_', '-' and '.'"
                         : "contains byte 0x%02x; keys use only letters, digits, '_', '-' and '.'",
                     c);
            return problem;
        }
        int at_edge = i == 0 || i + 1 == len;
        if (c == '.' && (at_edge || key[i + 1] == '.'))
            return "has an empty segment (a leading, trailing or doubled '.')";
        segments += c == '.';
    }
    if (len > PIO_CONFIG_MAX_KEY_BYTES) {
        snprintf(problem, capacity, "is longer than %d bytes", PIO_CONFIG_MAX_KEY_BYTES);
        return problem;
    }
    if (segments > PIO_CONFIG_MAX_DEPTH) {
        snprintf(problem, capacity, "is nested deeper than %d levels", PIO_CONFIG_MAX_DEPTH);
        return problem;
    }
    return NULL;
}

/* ========================================================================================== */
/* Staging: what one load produces before it is merged                                        */
/* ========================================================================================== */

typedef struct seen_key {
    char *path;   /* a leaf key or the path of a mapping */
    char *origin; /* where it was written */
} seen_key;

typedef struct staging {
    config_entry *entries;
    size_t count;
    size_t capacity;
    seen_key *seen; /* every key path written in this document, to catch duplicates */
    size_t seen_count;
    size_t seen_capacity;
} staging;

static void staging_free(staging *stage)
{
    for (size_t i = 0; i < stage->count; i++)
        free_entry(&stage->entries[i]);
    free(stage->entries);
    for (size_t i = 0; i < stage->seen_count; i++) {
        free(stage->seen[i].path);
        free(stage->seen[i].origin);
    }
    free(stage->seen);
    memset(stage, 0, sizeof *stage);
}

/* Makes room for `needed` elements in the array *array_ptr points to (any element type: the
 * pointer is copied in and out with memcpy, so no pointer type is accessed as another). */
static int grow_array(void *array_ptr, size_t *capacity, size_t needed, size_t element_size)
{
    if (needed <= *capacity)
        return 1;
    size_t new_capacity = *capacity ? *capacity * 2 : 16;
    while (new_capacity < needed)
        new_capacity *= 2;
    void *array;
    memcpy(&array, array_ptr, sizeof array);
    void *grown = realloc(array, new_capacity * element_size);
    if (grown == NULL)
        return 0;
    memcpy(array_ptr, &grown, sizeof grown);
    *capacity = new_capacity;
    return 1;
}

/* A new zeroed entry at the end of the staging area; NULL when out of memory. The pointer is
 * valid until the next call. */
static config_entry *staging_add(staging *stage)
{
    if (!grow_array(&stage->entries, &stage->capacity, stage->count + 1, sizeof(config_entry)))
        return NULL;
    config_entry *entry = &stage->entries[stage->count++];
    memset(entry, 0, sizeof *entry);
    return entry;
}

static const seen_key *staging_find_seen(const staging *stage, const char *path)
{
    for (size_t i = 0; i < stage->seen_count; i++) {
        if (strcmp(stage->seen[i].path, path) == 0)
            return &stage->seen[i];
    }
    return NULL;
}

/* Puts one staged entry into the table (room for it was reserved), taking its contents. */
static void merge_entry(pio_config *cfg, config_entry *staged)
{
    int found;
    size_t at = search_entries(cfg, staged->key, &found);
    if (found)
        free_entry(&cfg->entries[at]);
    if (staged->is_unset) {
        if (found) {
            memmove(&cfg->entries[at], &cfg->entries[at + 1],
                    (cfg->count - at - 1) * sizeof(config_entry));
            cfg->count--;
        }
        free_entry(staged);
        return;
    }
    if (!found) {
        memmove(&cfg->entries[at + 1], &cfg->entries[at], (cfg->count - at) * sizeof(config_entry));
        cfg->count++;
    }
    cfg->entries[at] = *staged;
    memset(staged, 0, sizeof *staged);
}

/* Moves the staged entries into the table: replaces, inserts or (for nulls) removes.
 * source names the load in the one error that can happen here. */
static pio_status commit_staging(pio_config *cfg, staging *stage, const char *source,
                                 pio_error *err)
{
    size_t added = 0;
    for (size_t i = 0; i < stage->count; i++) {
        if (!stage->entries[i].is_unset && find_entry(cfg, stage->entries[i].key) == NULL)
            added++;
    }
    if (cfg->count + added > PIO_CONFIG_MAX_KEYS)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: the configuration would hold more than %d keys", source,
                             PIO_CONFIG_MAX_KEYS);
    /* Reserve first so that nothing below can fail half-way through the merge. */
    if (!grow_array(&cfg->entries, &cfg->capacity, cfg->count + added, sizeof(config_entry)))
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", source);
    for (size_t i = 0; i < stage->count; i++)
        merge_entry(cfg, &stage->entries[i]);
    stage->count = 0;
    return PIO_OK;
}

/* ========================================================================================== */
/* The YAML walk                                                                              */
/* ========================================================================================== */

typedef struct loader {
    yaml_parser_t parser;
    int parser_ready;
    yaml_event_t event; /* the current event, owned until the next one is read */
    int has_event;
    const char *display_name; /* file name used in origins and messages */
    const char *assignment;   /* --set: the whole "key=value" (positions are in the value) */
    size_t value_offset;      /* --set: bytes before the value in the assignment */
    const char *origin_label; /* --set: the origin every value gets */
    const char *text;
    size_t len;
    staging stage;
    pio_error *err;
} loader;

static pio_status loader_start(loader *ld, const char *text, size_t len, pio_error *err)
{
    /* Skip a UTF-8 byte order mark ourselves: libyaml would count it as column 1. */
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3;
        len -= 3;
    }
    ld->text = text;
    ld->len = len;
    ld->err = err;
    if (!yaml_parser_initialize(&ld->parser))
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory");
    ld->parser_ready = 1;
    yaml_parser_set_input_string(&ld->parser, (const unsigned char *)text, len);
    /* Config files are UTF-8; without this a BOM would switch libyaml to UTF-16. */
    yaml_parser_set_encoding(&ld->parser, YAML_UTF8_ENCODING);
    return PIO_OK;
}

static void loader_finish(loader *ld)
{
    if (ld->has_event)
        yaml_event_delete(&ld->event);
    ld->has_event = 0;
    if (ld->parser_ready)
        yaml_parser_delete(&ld->parser);
    ld->parser_ready = 0;
    staging_free(&ld->stage);
}

/* "file:3:5", or for an override the assignment and the column inside it. line and column
 * are 1-based. */
static void describe_place(const loader *ld, size_t line, size_t column, char *out, size_t capacity)
{
    if (ld->assignment == NULL) {
        snprintf(out, capacity, "%s:%zu:%zu", ld->display_name, line, column);
        return;
    }
    char shown[256];
    describe_text(ld->assignment, shown, sizeof shown);
    /* Errors at the end of the stream point past the value (libyaml even adds a line). */
    size_t value_lines = 1, last_line_chars = 0;
    for (size_t i = 0; i < ld->len; i++) {
        unsigned char c = (unsigned char)ld->text[i];
        value_lines += c == '\n';
        last_line_chars = c == '\n' ? 0 : last_line_chars + ((c & 0xC0) != 0x80);
    }
    if (line > value_lines || (line == value_lines && column > last_line_chars))
        snprintf(out, capacity, "--set '%s' (at the end of the value)", shown);
    else if (line == 1)
        snprintf(out, capacity, "--set '%s' (column %zu)", shown, ld->value_offset + column);
    else
        snprintf(out, capacity, "--set '%s' (line %zu, column %zu of the value)", shown, line,
                 column);
}

static pio_status fail_at(loader *ld, size_t line, size_t column, pio_status status,
                          const char *format, ...) __attribute__((format(printf, 5, 6)));

static pio_status fail_at(loader *ld, size_t line, size_t column, pio_status status,
                          const char *format, ...)
{
    char place[512], message[PIO_ERROR_MESSAGE_MAX];
    describe_place(ld, line, column, place, sizeof place);
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    return pio_error_set(ld->err, status, "%s: %s", place, message);
}

#define FAIL_AT_MARK(ld, mark, ...)                                                                \
    fail_at((ld), (mark).line + 1, (mark).column + 1, PIO_ERR_FORMAT, __VA_ARGS__)

static pio_status out_of_memory(loader *ld)
{
    return pio_error_set(ld->err, PIO_ERR_OUT_OF_MEMORY, "out of memory");
}

/* Line and column (1-based, columns in characters) of a byte offset, for reader errors,
 * which libyaml reports as an offset only. */
static void place_of_offset(const char *text, size_t len, size_t offset, size_t *line,
                            size_t *column)
{
    *line = 1;
    *column = 1;
    for (size_t i = 0; i < offset && i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '\n') {
            (*line)++;
            *column = 1;
        } else if ((c & 0xC0) != 0x80) {
            (*column)++;
        }
    }
}

/* The byte at a libyaml mark (0-based line, column in characters); '\0' past the end. */
static char byte_at_place(const char *text, size_t len, yaml_mark_t mark)
{
    size_t i = 0;
    for (size_t line = 0; line < mark.line && i < len; i++)
        line += text[i] == '\n';
    for (size_t column = 0; i < len; i++) {
        if (((unsigned char)text[i] & 0xC0) == 0x80)
            continue; /* continuation bytes belong to the character before */
        if (column++ == mark.column)
            return text[i];
    }
    return '\0';
}

static pio_status fail_from_parser(loader *ld)
{
    const yaml_parser_t *parser = &ld->parser;
    const char *problem = parser->problem ? parser->problem : "malformed YAML";
    if (parser->error == YAML_MEMORY_ERROR)
        return out_of_memory(ld);
    if (parser->error == YAML_READER_ERROR) {
        size_t line, column;
        place_of_offset(ld->text, ld->len, parser->problem_offset, &line, &column);
        if (parser->problem_value != -1)
            return fail_at(ld, line, column, PIO_ERR_FORMAT, "%s (byte 0x%02X)", problem,
                           (unsigned)parser->problem_value);
        return fail_at(ld, line, column, PIO_ERR_FORMAT, "%s", problem);
    }
    int at_tab = byte_at_place(ld->text, ld->len, parser->problem_mark) == '\t';
    const char *hint = at_tab && strstr(problem, "tab") == NULL
                           ? "; YAML does not allow tabs for indentation"
                           : "";
    if (parser->context != NULL)
        return FAIL_AT_MARK(ld, parser->problem_mark, "%s (%s at line %zu, column %zu)%s", problem,
                            parser->context, parser->context_mark.line + 1,
                            parser->context_mark.column + 1, hint);
    return FAIL_AT_MARK(ld, parser->problem_mark, "%s%s", problem, hint);
}

/* Features this config format leaves out: they would make the origin of a value ambiguous
 * (anchors, aliases) or give values types the getters do not know (tags). */
static pio_status reject_unsupported(loader *ld)
{
    const yaml_event_t *event = &ld->event;
    const yaml_char_t *anchor = NULL, *tag = NULL;
    switch (event->type) {
    case YAML_ALIAS_EVENT:
        return FAIL_AT_MARK(ld, event->start_mark, "aliases (*%s) are not supported",
                            (const char *)event->data.alias.anchor);
    case YAML_SCALAR_EVENT:
        anchor = event->data.scalar.anchor;
        tag = event->data.scalar.tag;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = event->data.sequence_start.anchor;
        tag = event->data.sequence_start.tag;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = event->data.mapping_start.anchor;
        tag = event->data.mapping_start.tag;
        break;
    default: return PIO_OK;
    }
    if (anchor != NULL)
        return FAIL_AT_MARK(ld, event->start_mark, "anchors (&%s) are not supported",
                            (const char *)anchor);
    if (tag != NULL) {
        /* libyaml expands "!!str" to "tag:yaml.org,2002:str"; show it as it was written. */
        const char *shown = (const char *)tag, *standard = "tag:yaml.org,2002:";
        int is_standard = strncmp(shown, standard, strlen(standard)) == 0;
        return FAIL_AT_MARK(ld, event->start_mark,
                            "tags (%s%s) are not supported; quote a value to make it a string",
                            is_standard ? "!!" : "",
                            is_standard ? shown + strlen(standard) : shown);
    }
    return PIO_OK;
}

static pio_status next_event(loader *ld)
{
    if (ld->has_event)
        yaml_event_delete(&ld->event);
    ld->has_event = 0;
    if (!yaml_parser_parse(&ld->parser, &ld->event))
        return fail_from_parser(ld);
    ld->has_event = 1;
    return reject_unsupported(ld);
}

static char *origin_of(const loader *ld, yaml_mark_t mark)
{
    if (ld->origin_label != NULL)
        return alloc_printf("%s", ld->origin_label);
    return alloc_printf("%s:%zu:%zu", ld->display_name, mark.line + 1, mark.column + 1);
}

static int is_null_scalar(const yaml_event_t *event)
{
    if (event->type != YAML_SCALAR_EVENT || event->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    const char *text = (const char *)event->data.scalar.value;
    return event->data.scalar.length == 0 || strcmp(text, "~") == 0 || strcmp(text, "null") == 0 ||
           strcmp(text, "Null") == 0 || strcmp(text, "NULL") == 0;
}

static const char *node_kind(yaml_event_type_t type)
{
    switch (type) {
    case YAML_MAPPING_START_EVENT: return "a mapping";
    case YAML_SEQUENCE_START_EVENT: return "a list";
    default: return "a scalar";
    }
}

/* Notes that `path` was written at `mark`; a second write in the same document is an error. */
static pio_status record_key(loader *ld, const char *path, yaml_mark_t mark)
{
    const seen_key *earlier = staging_find_seen(&ld->stage, path);
    if (earlier != NULL)
        return FAIL_AT_MARK(ld, mark, "duplicate key '%s' (first set at %s)", path,
                            earlier->origin);
    if (ld->stage.seen_count >= PIO_CONFIG_MAX_KEYS)
        return FAIL_AT_MARK(ld, mark, "more than %d keys in one document", PIO_CONFIG_MAX_KEYS);
    if (!grow_array(&ld->stage.seen, &ld->stage.seen_capacity, ld->stage.seen_count + 1,
                    sizeof(seen_key)))
        return out_of_memory(ld);
    seen_key *seen = &ld->stage.seen[ld->stage.seen_count];
    seen->path = alloc_printf("%s", path);
    seen->origin = origin_of(ld, mark);
    ld->stage.seen_count++; /* counted even when a copy failed, so that both get freed */
    if (seen->path == NULL || seen->origin == NULL)
        return out_of_memory(ld);
    return PIO_OK;
}

/* Writes prefix + "." + the key scalar of the current event into `path`. */
static pio_status join_key(loader *ld, const char *prefix, char path[PIO_CONFIG_MAX_KEY_BYTES + 1])
{
    const yaml_event_t *event = &ld->event;
    const char *key = (const char *)event->data.scalar.value;
    size_t key_len = event->data.scalar.length;
    char problem[160], shown[128];
    const char *wrong = key_problem(key, key_len, problem, sizeof problem);
    if (wrong != NULL) {
        describe_text(key, shown, sizeof shown);
        return FAIL_AT_MARK(ld, event->start_mark, "key '%s' %s", shown, wrong);
    }
    size_t prefix_len = strlen(prefix);
    size_t total = prefix_len + (prefix_len ? 1 : 0) + key_len;
    if (total > PIO_CONFIG_MAX_KEY_BYTES)
        return FAIL_AT_MARK(ld, event->start_mark, "key '%s.%s' is longer than %d bytes", prefix,
                            key, PIO_CONFIG_MAX_KEY_BYTES);
    snprintf(path, PIO_CONFIG_MAX_KEY_BYTES + 1, "%s%s%s", prefix, prefix_len ? "." : "", key);
    if (count_segments(path) > PIO_CONFIG_MAX_DEPTH)
        return FAIL_AT_MARK(ld, event->start_mark, "key '%s' is nested deeper than %d levels", path,
                            PIO_CONFIG_MAX_DEPTH);
    return PIO_OK;
}

/* Copies the current scalar event into *scalar after checking its size and content. */
static pio_status take_scalar(loader *ld, const char *path, config_scalar *scalar)
{
    const yaml_event_t *event = &ld->event;
    const char *text = (const char *)event->data.scalar.value;
    size_t len = event->data.scalar.length;
    if (len > PIO_CONFIG_MAX_SCALAR_BYTES)
        return FAIL_AT_MARK(ld, event->start_mark, "value of '%s' is %zu bytes; the limit is %u",
                            path, len, PIO_CONFIG_MAX_SCALAR_BYTES);
    if (memchr(text, '\0', len) != NULL)
        return FAIL_AT_MARK(ld, event->start_mark, "value of '%s' contains a NUL character", path);
    scalar->text = copy_text(text, len);
    scalar->quoted = event->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
    scalar->origin = origin_of(ld, event->start_mark);
    if (scalar->text == NULL || scalar->origin == NULL)
        return out_of_memory(ld);
    return PIO_OK;
}

/* A new staged entry for `path`, written at key_mark. */
static pio_status stage_entry(loader *ld, const char *path, yaml_mark_t key_mark, size_t *index)
{
    config_entry *entry = staging_add(&ld->stage);
    if (entry == NULL)
        return out_of_memory(ld);
    *index = ld->stage.count - 1;
    entry->key = alloc_printf("%s", path);
    entry->key_origin = origin_of(ld, key_mark);
    if (entry->key == NULL || entry->key_origin == NULL)
        return out_of_memory(ld);
    return PIO_OK;
}

/* "[0, 1]" / "[\"</s>\"]": how a list prints in the effective config. */
static char *list_display_text(const config_entry *entry)
{
    text_buffer buffer = {0};
    buffer_append(&buffer, "[", 1);
    for (size_t i = 0; i < entry->item_count; i++) {
        if (i > 0)
            buffer_append(&buffer, ", ", 2);
        if (entry->items[i].quoted)
            buffer_append_quoted(&buffer, entry->items[i].text);
        else
            buffer_append_str(&buffer, entry->items[i].text);
    }
    buffer_append(&buffer, "]", 1);
    if (buffer.failed) {
        free(buffer.data);
        return NULL;
    }
    return buffer.data;
}

static pio_status add_list_item(loader *ld, const char *path, size_t entry_index, size_t *capacity)
{
    config_entry *entry = &ld->stage.entries[entry_index];
    const yaml_event_t *event = &ld->event;
    if (event->type != YAML_SCALAR_EVENT)
        return FAIL_AT_MARK(ld, event->start_mark, "items of list '%s' must be scalars, not %s",
                            path, node_kind(event->type));
    if (is_null_scalar(event))
        return FAIL_AT_MARK(ld, event->start_mark,
                            "empty item in list '%s' (write \"\" for an empty string)", path);
    if (entry->item_count >= PIO_CONFIG_MAX_LIST_ITEMS)
        return FAIL_AT_MARK(ld, event->start_mark, "list '%s' has more than %d items", path,
                            PIO_CONFIG_MAX_LIST_ITEMS);
    if (!grow_array(&entry->items, capacity, entry->item_count + 1, sizeof(config_scalar)))
        return out_of_memory(ld);
    config_scalar *item = &entry->items[entry->item_count++];
    memset(item, 0, sizeof *item);
    return take_scalar(ld, path, item);
}

/* The current event starts a sequence: a list of scalars. */
static pio_status parse_list(loader *ld, const char *path, yaml_mark_t key_mark)
{
    size_t index, capacity = 0;
    yaml_mark_t list_mark = ld->event.start_mark;
    pio_status status = stage_entry(ld, path, key_mark, &index);
    if (status != PIO_OK)
        return status;
    ld->stage.entries[index].is_list = 1;
    for (;;) {
        if ((status = next_event(ld)) != PIO_OK)
            return status;
        if (ld->event.type == YAML_SEQUENCE_END_EVENT)
            break;
        if ((status = add_list_item(ld, path, index, &capacity)) != PIO_OK)
            return status;
    }
    config_entry *entry = &ld->stage.entries[index];
    entry->value.text = list_display_text(entry);
    entry->value.origin = origin_of(ld, list_mark);
    if (entry->value.text == NULL || entry->value.origin == NULL)
        return out_of_memory(ld);
    return PIO_OK;
}

static pio_status parse_mapping(loader *ld, const char *prefix);

/* The current event is the value of `path`: a scalar, a list or a nested mapping. */
static pio_status parse_value(loader *ld, const char *path, yaml_mark_t key_mark)
{
    size_t index;
    pio_status status;
    switch (ld->event.type) {
    case YAML_MAPPING_START_EVENT: return parse_mapping(ld, path);
    case YAML_SEQUENCE_START_EVENT: return parse_list(ld, path, key_mark);
    case YAML_SCALAR_EVENT:
        if ((status = stage_entry(ld, path, key_mark, &index)) != PIO_OK)
            return status;
        if (is_null_scalar(&ld->event)) {
            ld->stage.entries[index].is_unset = 1;
            return PIO_OK;
        }
        return take_scalar(ld, path, &ld->stage.entries[index].value);
    default: return FAIL_AT_MARK(ld, ld->event.start_mark, "unexpected YAML event for '%s'", path);
    }
}

/* The current event starts a mapping whose keys extend `prefix` ("" at the top level). */
static pio_status parse_mapping(loader *ld, const char *prefix)
{
    char path[PIO_CONFIG_MAX_KEY_BYTES + 1];
    pio_status status;
    for (;;) {
        if ((status = next_event(ld)) != PIO_OK)
            return status;
        if (ld->event.type == YAML_MAPPING_END_EVENT)
            return PIO_OK;
        yaml_mark_t key_mark = ld->event.start_mark;
        if (ld->event.type != YAML_SCALAR_EVENT)
            return FAIL_AT_MARK(ld, key_mark, "a key must be a name, not %s",
                                node_kind(ld->event.type));
        if ((status = join_key(ld, prefix, path)) != PIO_OK ||
            (status = record_key(ld, path, key_mark)) != PIO_OK ||
            (status = next_event(ld)) != PIO_OK ||
            (status = parse_value(ld, path, key_mark)) != PIO_OK)
            return status;
    }
}

/* The top-level node of a file: a mapping, or nothing at all. */
static pio_status parse_file_root(loader *ld)
{
    if (ld->event.type == YAML_MAPPING_START_EVENT)
        return parse_mapping(ld, "");
    if (is_null_scalar(&ld->event))
        return PIO_OK;
    return FAIL_AT_MARK(ld, ld->event.start_mark,
                        "the top level must be a mapping of keys (key: value), not %s",
                        node_kind(ld->event.type));
}

/* The value of an override: any node, keyed by the override's key. */
static pio_status parse_override_root(loader *ld, const char *key)
{
    yaml_mark_t start = ld->event.start_mark;
    pio_status status = record_key(ld, key, start);
    return status != PIO_OK ? status : parse_value(ld, key, start);
}

/* Walks a whole stream of at most one document. override_key: NULL for a file. */
static pio_status parse_stream(loader *ld, const char *override_key)
{
    pio_status status;
    if ((status = next_event(ld)) != PIO_OK || /* stream start */
        (status = next_event(ld)) != PIO_OK)
        return status;
    if (ld->event.type == YAML_STREAM_END_EVENT) {
        if (override_key == NULL)
            return PIO_OK; /* empty file or only comments */
        size_t index;      /* an empty override value removes the key */
        status = stage_entry(ld, override_key, ld->event.start_mark, &index);
        if (status == PIO_OK)
            ld->stage.entries[index].is_unset = 1;
        return status;
    }
    if ((status = next_event(ld)) != PIO_OK) /* document start -> root node */
        return status;
    status = override_key ? parse_override_root(ld, override_key) : parse_file_root(ld);
    if (status != PIO_OK || (status = next_event(ld)) != PIO_OK || /* document end */
        (status = next_event(ld)) != PIO_OK)
        return status;
    if (ld->event.type != YAML_STREAM_END_EVENT)
        return FAIL_AT_MARK(ld, ld->event.start_mark,
                            "only one YAML document is allowed ('---' starts a second one)");
    return PIO_OK;
}

/* ========================================================================================== */
/* Loading                                                                                    */
/* ========================================================================================== */

pio_status pio_config_load_string(pio_config *cfg, const char *display_name, const char *text,
                                  size_t len, pio_error *err)
{
    if (display_name == NULL)
        display_name = "<string>";
    if (cfg == NULL || (text == NULL && len > 0))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: pio_config_load_string needs a config and text", display_name);
    if (len > PIO_CONFIG_MAX_TEXT_BYTES)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: %zu bytes is over the %u-byte limit for a config file",
                             display_name, len, PIO_CONFIG_MAX_TEXT_BYTES);
    loader ld = {0};
    ld.display_name = display_name;
    pio_status status = loader_start(&ld, text ? text : "", len, err);
    if (status == PIO_OK)
        status = parse_stream(&ld, NULL);
    if (status == PIO_OK)
        status = commit_staging(cfg, &ld.stage, display_name, err);
    loader_finish(&ld);
    return status;
}

pio_status pio_config_load_file(pio_config *cfg, const char *path, pio_error *err)
{
    if (cfg == NULL || path == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "pio_config_load_file needs a config and a path");
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return pio_error_set(err, PIO_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    /* One byte more than the limit tells "exactly at the limit" from "over it". */
    char *text = malloc(PIO_CONFIG_MAX_TEXT_BYTES + 1);
    if (text == NULL) {
        fclose(file);
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    size_t len = fread(text, 1, PIO_CONFIG_MAX_TEXT_BYTES + 1, file);
    int read_error = ferror(file) ? errno : 0;
    fclose(file);
    pio_status status;
    if (read_error != 0)
        status = pio_error_set(err, PIO_ERR_IO, "%s: cannot read: %s", path, strerror(read_error));
    else if (len > PIO_CONFIG_MAX_TEXT_BYTES)
        status = pio_error_set(err, PIO_ERR_FORMAT,
                               "%s: larger than the %u-byte limit for a config file", path,
                               PIO_CONFIG_MAX_TEXT_BYTES);
    else
        status = pio_config_load_string(cfg, path, text, len, err);
    free(text);
    return status;
}

/* Override failures are the user's command line, not a malformed file: PIO_ERR_CONFIG. */
static pio_status as_override_status(pio_status status, pio_error *err)
{
    if (status == PIO_OK || status == PIO_ERR_OUT_OF_MEMORY)
        return status;
    if (err != NULL)
        err->status = PIO_ERR_CONFIG;
    return PIO_ERR_CONFIG;
}

pio_status pio_config_apply_override(pio_config *cfg, const char *assignment, pio_error *err)
{
    if (cfg == NULL || assignment == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "pio_config_apply_override needs a config and an assignment");
    char shown[256], problem[160], key[PIO_CONFIG_MAX_KEY_BYTES + 1];
    describe_text(assignment, shown, sizeof shown);
    const char *equals = strchr(assignment, '=');
    if (equals == NULL)
        return pio_error_set(err, PIO_ERR_CONFIG, "--set '%s': expected key=value", shown);
    size_t key_len = (size_t)(equals - assignment);
    const char *wrong = key_problem(assignment, key_len, problem, sizeof problem);
    if (wrong != NULL)
        return pio_error_set(err, PIO_ERR_CONFIG, "--set '%s': the key %s", shown, wrong);
    memcpy(key, assignment, key_len);
    key[key_len] = '\0';
    const char *value = equals + 1;
    size_t value_len = strlen(value);
    if (value_len > PIO_CONFIG_MAX_TEXT_BYTES)
        return pio_error_set(err, PIO_ERR_CONFIG, "--set '%s': the value is over %u bytes", shown,
                             PIO_CONFIG_MAX_TEXT_BYTES);
    loader ld = {0};
    ld.display_name = PIO_CONFIG_ORIGIN_OVERRIDE;
    ld.assignment = assignment;
    ld.value_offset = key_len + 1;
    ld.origin_label = PIO_CONFIG_ORIGIN_OVERRIDE;
    pio_status status = loader_start(&ld, value, value_len, err);
    if (status == PIO_OK)
        status = parse_stream(&ld, key);
    if (status == PIO_OK)
        status = commit_staging(cfg, &ld.stage, "--set", err);
    loader_finish(&ld);
    return as_override_status(status, err);
}

/* Stages key = the literal string value (NULL: unset); 0 when out of memory. */
static int stage_literal(staging *stage, const char *key, const char *value, const char *origin)
{
    config_entry *entry = staging_add(stage);
    if (entry == NULL)
        return 0;
    entry->key = alloc_printf("%s", key);
    entry->key_origin = alloc_printf("%s", origin);
    entry->value.origin = alloc_printf("%s", origin);
    entry->value.quoted = 1;
    entry->is_unset = value == NULL;
    entry->value.text = value ? alloc_printf("%s", value) : NULL;
    return entry->key != NULL && entry->key_origin != NULL && entry->value.origin != NULL &&
           (value == NULL || entry->value.text != NULL);
}

pio_status pio_config_set_str(pio_config *cfg, const char *key, const char *value,
                              const char *origin, pio_error *err)
{
    if (cfg == NULL || key == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "pio_config_set_str needs a config and a key");
    char problem[160], shown[128];
    const char *wrong = key_problem(key, strlen(key), problem, sizeof problem);
    if (wrong != NULL) {
        describe_text(key, shown, sizeof shown);
        return pio_error_set(err, PIO_ERR_CONFIG, "key '%s' %s", shown, wrong);
    }
    if (value != NULL && strlen(value) > PIO_CONFIG_MAX_SCALAR_BYTES)
        return pio_error_set(err, PIO_ERR_CONFIG, "value of '%s' is over %u bytes", key,
                             PIO_CONFIG_MAX_SCALAR_BYTES);
    staging stage = {0};
    pio_status status = PIO_OK;
    if (!stage_literal(&stage, key, value, origin ? origin : PIO_CONFIG_ORIGIN_OVERRIDE))
        status = pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory");
    else
        status = commit_staging(cfg, &stage, key, err);
    staging_free(&stage);
    return status;
}

/* ========================================================================================== */
/* Typing                                                                                     */
/* ========================================================================================== */

static const char *const true_words[] = {"true", "True", "TRUE", "yes", "Yes",
                                         "YES",  "on",   "On",   "ON"};
static const char *const false_words[] = {"false", "False", "FALSE", "no", "No",
                                          "NO",    "off",   "Off",   "OFF"};

static const char *expected_text(pio_config_type type)
{
    switch (type) {
    case PIO_CONFIG_I64: return "an integer";
    case PIO_CONFIG_F64: return "a number";
    case PIO_CONFIG_BOOL: return "a boolean (true/false, yes/no, on/off)";
    default: return "a string";
    }
}

static pio_status type_error(const config_scalar *scalar, const char *key, const char *expected,
                             pio_error *err)
{
    char shown[128];
    describe_text(scalar->text, shown, sizeof shown);
    if (scalar->quoted)
        return pio_error_set(err, PIO_ERR_CONFIG,
                             "%s: key '%s': expected %s, got the quoted string \"%s\" "
                             "(quoted values are strings; remove the quotes)",
                             scalar->origin, key, expected, shown);
    return pio_error_set(err, PIO_ERR_CONFIG, "%s: key '%s': expected %s, got '%s'", scalar->origin,
                         key, expected, shown);
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Decimal only: an optional sign, then "0" or digits without a leading zero (YAML 1.1 would
 * read "012" as octal, so it is refused rather than silently read as 12). */
static pio_status scalar_to_i64(const config_scalar *scalar, const char *key, int64_t *value,
                                pio_error *err)
{
    const char *text = scalar->text;
    const char *digits = text + (*text == '+' || *text == '-');
    int well_formed =
        !scalar->quoted && is_digit(digits[0]) && !(digits[0] == '0' && digits[1] != '\0');
    for (const char *p = digits; well_formed && *p != '\0'; p++)
        well_formed = is_digit(*p);
    if (!well_formed)
        return type_error(scalar, key, expected_text(PIO_CONFIG_I64), err);
    errno = 0;
    long long parsed = strtoll(text, NULL, 10);
    if (errno == ERANGE)
        return type_error(scalar, key, "an integer that fits in 64 bits", err);
    *value = (int64_t)parsed;
    return PIO_OK;
}

/* [+-] (digits [. digits] | . digits) [(e|E) [+-] digits]: no hex, inf, nan or "1_000". */
static int is_decimal_number(const char *text)
{
    const char *p = text + (*text == '+' || *text == '-');
    size_t mantissa_digits = 0;
    for (; is_digit(*p); p++)
        mantissa_digits++;
    if (*p == '.')
        for (p++; is_digit(*p); p++)
            mantissa_digits++;
    if (mantissa_digits == 0)
        return 0;
    if (*p == 'e' || *p == 'E') {
        p++;
        p += *p == '+' || *p == '-';
        if (!is_digit(*p))
            return 0;
        while (is_digit(*p))
            p++;
    }
    return *p == '\0';
}

/* strtod in the C locale, whatever locale the process runs in. */
static double parse_decimal(const char *text)
{
    locale_t c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (c_locale == (locale_t)0)
        return strtod(text, NULL);
    double value = strtod_l(text, NULL, c_locale);
    freelocale(c_locale);
    return value;
}

static pio_status scalar_to_f64(const config_scalar *scalar, const char *key, double *value,
                                pio_error *err)
{
    if (scalar->quoted || !is_decimal_number(scalar->text))
        return type_error(scalar, key, expected_text(PIO_CONFIG_F64), err);
    double parsed = parse_decimal(scalar->text);
    if (!isfinite(parsed))
        return type_error(scalar, key, "a finite number", err);
    *value = parsed;
    return PIO_OK;
}

static int in_word_list(const char *text, const char *const *words, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(text, words[i]) == 0)
            return 1;
    }
    return 0;
}

static pio_status scalar_to_bool(const config_scalar *scalar, const char *key, int *value,
                                 pio_error *err)
{
    size_t n_true = sizeof true_words / sizeof true_words[0];
    size_t n_false = sizeof false_words / sizeof false_words[0];
    if (!scalar->quoted && in_word_list(scalar->text, true_words, n_true)) {
        *value = 1;
        return PIO_OK;
    }
    if (!scalar->quoted && in_word_list(scalar->text, false_words, n_false)) {
        *value = 0;
        return PIO_OK;
    }
    return type_error(scalar, key, expected_text(PIO_CONFIG_BOOL), err);
}

/* ========================================================================================== */
/* Getters                                                                                    */
/* ========================================================================================== */

static pio_status find_for_get(const pio_config *cfg, const char *key, const config_entry **entry,
                               pio_error *err)
{
    if (cfg == NULL || key == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "config getter needs a config and a key");
    *entry = find_entry(cfg, key);
    return *entry != NULL ? PIO_OK : PIO_SOFT_ABSENT;
}

static pio_status find_scalar(const pio_config *cfg, const char *key, const config_scalar **scalar,
                              pio_error *err)
{
    const config_entry *entry = NULL;
    pio_status status = find_for_get(cfg, key, &entry, err);
    if (status != PIO_OK)
        return status;
    if (entry->is_list)
        return pio_error_set(err, PIO_ERR_CONFIG,
                             "%s: key '%s': expected a single value, got a list",
                             entry->value.origin, key);
    *scalar = &entry->value;
    return PIO_OK;
}

pio_status pio_config_get_str(const pio_config *cfg, const char *key, const char **value,
                              pio_error *err)
{
    const config_scalar *scalar = NULL;
    pio_status status = find_scalar(cfg, key, &scalar, err);
    if (status == PIO_OK)
        *value = scalar->text;
    return status;
}

pio_status pio_config_get_i64(const pio_config *cfg, const char *key, int64_t *value,
                              pio_error *err)
{
    const config_scalar *scalar = NULL;
    pio_status status = find_scalar(cfg, key, &scalar, err);
    return status == PIO_OK ? scalar_to_i64(scalar, key, value, err) : status;
}

pio_status pio_config_get_f64(const pio_config *cfg, const char *key, double *value, pio_error *err)
{
    const config_scalar *scalar = NULL;
    pio_status status = find_scalar(cfg, key, &scalar, err);
    return status == PIO_OK ? scalar_to_f64(scalar, key, value, err) : status;
}

pio_status pio_config_get_bool(const pio_config *cfg, const char *key, int *value, pio_error *err)
{
    const config_scalar *scalar = NULL;
    pio_status status = find_scalar(cfg, key, &scalar, err);
    return status == PIO_OK ? scalar_to_bool(scalar, key, value, err) : status;
}

/* The items of a list entry; a scalar entry is a list of itself. */
static const config_scalar *list_items(const config_entry *entry, size_t *count)
{
    *count = entry->is_list ? entry->item_count : 1;
    return entry->is_list ? entry->items : &entry->value;
}

pio_status pio_config_get_list_count(const pio_config *cfg, const char *key, size_t *count,
                                     pio_error *err)
{
    const config_entry *entry = NULL;
    pio_status status = find_for_get(cfg, key, &entry, err);
    if (status == PIO_OK)
        list_items(entry, count);
    return status;
}

/* Item `index` of list `key`; *item_key gets "key[index]" for messages. */
static pio_status find_item(const pio_config *cfg, const char *key, size_t index,
                            const config_scalar **item, char *item_key, size_t capacity,
                            pio_error *err)
{
    const config_entry *entry = NULL;
    pio_status status = find_for_get(cfg, key, &entry, err);
    if (status != PIO_OK)
        return status;
    size_t count;
    const config_scalar *items = list_items(entry, &count);
    if (index >= count)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: key '%s': item %zu asked for, the list has %zu",
                             entry->value.origin, key, index, count);
    *item = &items[index];
    snprintf(item_key, capacity, "%s[%zu]", key, index);
    return PIO_OK;
}

pio_status pio_config_get_list_str(const pio_config *cfg, const char *key, size_t index,
                                   const char **value, pio_error *err)
{
    const config_scalar *item = NULL;
    char item_key[PIO_CONFIG_MAX_KEY_BYTES + 32];
    pio_status status = find_item(cfg, key, index, &item, item_key, sizeof item_key, err);
    if (status == PIO_OK)
        *value = item->text;
    return status;
}

pio_status pio_config_get_list_i64(const pio_config *cfg, const char *key, size_t index,
                                   int64_t *value, pio_error *err)
{
    const config_scalar *item = NULL;
    char item_key[PIO_CONFIG_MAX_KEY_BYTES + 32];
    pio_status status = find_item(cfg, key, index, &item, item_key, sizeof item_key, err);
    return status == PIO_OK ? scalar_to_i64(item, item_key, value, err) : status;
}

pio_status pio_config_get_list_f64(const pio_config *cfg, const char *key, size_t index,
                                   double *value, pio_error *err)
{
    const config_scalar *item = NULL;
    char item_key[PIO_CONFIG_MAX_KEY_BYTES + 32];
    pio_status status = find_item(cfg, key, index, &item, item_key, sizeof item_key, err);
    return status == PIO_OK ? scalar_to_f64(item, item_key, value, err) : status;
}

pio_status pio_config_get_list_bool(const pio_config *cfg, const char *key, size_t index,
                                    int *value, pio_error *err)
{
    const config_scalar *item = NULL;
    char item_key[PIO_CONFIG_MAX_KEY_BYTES + 32];
    pio_status status = find_item(cfg, key, index, &item, item_key, sizeof item_key, err);
    return status == PIO_OK ? scalar_to_bool(item, item_key, value, err) : status;
}

/* ========================================================================================== */
/* Validation against the schema                                                              */
/* ========================================================================================== */

/* "cpu|cuda|cuda:N": exact alternatives; one ending in ":N" takes ':' and decimal digits. */
static int matches_choice(const char *text, const char *choice, size_t choice_len)
{
    if (choice_len >= 2 && choice[choice_len - 2] == ':' && choice[choice_len - 1] == 'N') {
        size_t prefix_len = choice_len - 1; /* up to and including ':' */
        if (strncmp(text, choice, prefix_len) != 0 || text[prefix_len] == '\0')
            return 0;
        for (const char *p = text + prefix_len; *p != '\0'; p++) {
            if (!is_digit(*p))
                return 0;
        }
        return 1;
    }
    return strlen(text) == choice_len && strncmp(text, choice, choice_len) == 0;
}

static int is_one_of(const char *text, const char *choices)
{
    while (*choices != '\0') {
        const char *bar = strchr(choices, '|');
        size_t len = bar ? (size_t)(bar - choices) : strlen(choices);
        if (matches_choice(text, choices, len))
            return 1;
        choices += len + (bar != NULL);
    }
    return 0;
}

static int within_range(double value, const pio_config_range *range)
{
    if (range->has_min && (range->min_exclusive ? value <= range->min : value < range->min))
        return 0;
    return !(range->has_max && value > range->max);
}

static void describe_range(const pio_config_range *range, char *out, size_t capacity)
{
    const char *lower = range->min_exclusive ? "greater than" : "at least";
    if (range->has_min && range->has_max)
        snprintf(out, capacity, "%s %g and at most %g", lower, range->min, range->max);
    else if (range->has_min)
        snprintf(out, capacity, "%s %g", lower, range->min);
    else
        snprintf(out, capacity, "at most %g", range->max);
}

static pio_status check_number(const config_scalar *scalar, const char *key,
                               const pio_config_key_info *info, pio_error *err)
{
    double number;
    int64_t integer;
    pio_status status;
    if (info->type == PIO_CONFIG_I64) {
        status = scalar_to_i64(scalar, key, &integer, err);
        number = (double)integer;
    } else {
        status = scalar_to_f64(scalar, key, &number, err);
    }
    if (status != PIO_OK || within_range(number, &info->range))
        return status;
    char expected[96];
    describe_range(&info->range, expected, sizeof expected);
    return pio_error_set(err, PIO_ERR_CONFIG, "%s: key '%s': %s is out of range (expected %s)",
                         scalar->origin, key, scalar->text, expected);
}

static pio_status check_scalar(const config_scalar *scalar, const char *key,
                               const pio_config_key_info *info, pio_error *err)
{
    int flag;
    switch (info->type) {
    case PIO_CONFIG_I64:
    case PIO_CONFIG_F64: return check_number(scalar, key, info, err);
    case PIO_CONFIG_BOOL: return scalar_to_bool(scalar, key, &flag, err);
    case PIO_CONFIG_STR: break;
    }
    if (info->choices != NULL && !is_one_of(scalar->text, info->choices)) {
        char shown[128];
        describe_text(scalar->text, shown, sizeof shown);
        return pio_error_set(err, PIO_ERR_CONFIG, "%s: key '%s': expected one of %s, got '%s'",
                             scalar->origin, key, info->choices, shown);
    }
    return PIO_OK;
}

static pio_status check_entry(const config_entry *entry, const pio_config_key_info *info,
                              pio_error *err)
{
    if (!info->is_list) {
        if (entry->is_list)
            return pio_error_set(err, PIO_ERR_CONFIG, "%s: key '%s': expected %s, got a list",
                                 entry->value.origin, entry->key, expected_text(info->type));
        return check_scalar(&entry->value, entry->key, info, err);
    }
    size_t count;
    const config_scalar *items = list_items(entry, &count);
    for (size_t i = 0; i < count; i++) {
        char item_key[PIO_CONFIG_MAX_KEY_BYTES + 32];
        snprintf(item_key, sizeof item_key, "%s[%zu]", entry->key, i);
        pio_status status =
            check_scalar(&items[i], entry->is_list ? item_key : entry->key, info, err);
        if (status != PIO_OK)
            return status;
    }
    return PIO_OK;
}

/* Levenshtein distance; keys are at most PIO_CONFIG_MAX_KEY_BYTES long. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t len_a = strlen(a), len_b = strlen(b);
    if (len_a > PIO_CONFIG_MAX_KEY_BYTES || len_b > PIO_CONFIG_MAX_KEY_BYTES)
        return (size_t)-1;
    size_t row[PIO_CONFIG_MAX_KEY_BYTES + 1];
    for (size_t j = 0; j <= len_b; j++)
        row[j] = j;
    for (size_t i = 1; i <= len_a; i++) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= len_b; j++) {
            size_t above = row[j];
            size_t substitute = diagonal + (a[i - 1] != b[j - 1]);
            size_t best = above + 1 < row[j - 1] + 1 ? above + 1 : row[j - 1] + 1;
            row[j] = substitute < best ? substitute : best;
            diagonal = above;
        }
    }
    return row[len_b];
}

static const char *last_segment(const char *key)
{
    const char *dot = strrchr(key, '.');
    return dot ? dot + 1 : key;
}

/* The one known key closest to `key` by spelling, else the one whose last segment is
 * (nearly) the same ("block_size" -> "kv_cache.block_size"); NULL when none or several. */
static const char *suggest_key(const char *key)
{
    size_t limit = strlen(key) <= 12 ? 2 : 3;
    const char *best = NULL, *by_segment = NULL;
    size_t best_distance = (size_t)-1, best_count = 0, segment_count = 0;
    for (size_t i = 0; i < pio_config_schema_count(); i++) {
        const pio_config_key_info *info = pio_config_schema_at(i);
        if (info->free_form)
            continue;
        size_t distance = edit_distance(key, info->key);
        if (distance < best_distance) {
            best = info->key;
            best_distance = distance;
            best_count = 1;
        } else if (distance == best_distance) {
            best_count++;
        }
        if (edit_distance(last_segment(key), last_segment(info->key)) <= 1) {
            by_segment = info->key;
            segment_count++;
        }
    }
    if (best_distance <= limit && best_count == 1)
        return best;
    return segment_count == 1 ? by_segment : NULL;
}

/* A known key below `key` when `key` names a section ("kv_cache"), else NULL. */
static const char *key_inside_section(const char *key)
{
    size_t len = strlen(key);
    for (size_t i = 0; i < pio_config_schema_count(); i++) {
        const char *known = pio_config_schema_at(i)->key;
        if (strncmp(known, key, len) == 0 && known[len] == '.')
            return known;
    }
    return NULL;
}

static void warn_unknown(const config_entry *entry, void (*warn)(void *, const char *), void *ud)
{
    if (warn == NULL)
        return;
    char message[PIO_ERROR_MESSAGE_MAX];
    const char *suggestion = suggest_key(entry->key);
    const char *inside = suggestion ? NULL : key_inside_section(entry->key);
    if (suggestion != NULL)
        snprintf(message, sizeof message, "%s: unknown key '%s' (did you mean '%s'?)",
                 entry->key_origin, entry->key, suggestion);
    else if (inside != NULL)
        snprintf(message, sizeof message,
                 "%s: unknown key '%s' (it is a section; set its keys, such as '%s')",
                 entry->key_origin, entry->key, inside);
    else
        snprintf(message, sizeof message, "%s: unknown key '%s'", entry->key_origin, entry->key);
    warn(ud, message);
}

pio_status pio_config_validate(const pio_config *cfg, void (*warn)(void *ud, const char *message),
                               void *ud, pio_error *err)
{
    if (cfg == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pio_config_validate needs a config");
    pio_status first = PIO_OK;
    for (size_t i = 0; i < cfg->count; i++) {
        const config_entry *entry = &cfg->entries[i];
        const pio_config_key_info *info = pio_config_schema_lookup(entry->key);
        if (info == NULL) {
            warn_unknown(entry, warn, ud);
            continue;
        }
        if (info->free_form || first != PIO_OK)
            continue; /* only the first error is reported; warnings keep coming */
        first = check_entry(entry, info, err);
    }
    return first;
}
