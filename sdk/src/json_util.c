#include "pio/json_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct pio_json_doc {
    json_t *root;
    char *name;
};

/* Longest label ("key[index]") and value excerpt that messages carry. */
#define LABEL_MAX 256
#define EXCERPT_MAX 40

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                    */
/* ------------------------------------------------------------------------------------------ */

pio_status pio_json_load_buffer(const char *name, const char *text, size_t length,
                                pio_json_doc **out, pio_error *err)
{
    if (out == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pio_json_load_buffer: out is NULL");
    *out = NULL;
    if (name == NULL || (text == NULL && length > 0))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "pio_json_load_buffer: name or text is NULL");
    json_error_t jerr;
    json_t *root = json_loadb(text != NULL ? text : "", length, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: line %d, column %d: %s", name, jerr.line,
                             jerr.column, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: the top level must be a JSON object, got an array", name);
    }
    pio_json_doc *doc = calloc(1, sizeof *doc);
    char *name_copy = strdup(name);
    if (doc == NULL || name_copy == NULL) {
        free(doc);
        free(name_copy);
        json_decref(root);
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", name);
    }
    doc->root = root;
    doc->name = name_copy;
    *out = doc;
    return PIO_OK;
}

static pio_status read_whole_file(const char *path, char **text, size_t *length, pio_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pio_error_set(err, errno == ENOENT ? PIO_ERR_NOT_FOUND : PIO_ERR_IO,
                             "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    pio_status status = PIO_OK;
    char *buffer = NULL;
    if (fstat(fd, &st) != 0) {
        status = pio_error_set(err, PIO_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        status = pio_error_set(err, PIO_ERR_IO, "%s: not a regular file", path);
    } else if ((uint64_t)st.st_size > PIO_JSON_MAX_FILE_BYTES) {
        status = pio_error_set(err, PIO_ERR_FORMAT,
                               "%s: %lld bytes is more than the %zu-byte limit", path,
                               (long long)st.st_size, PIO_JSON_MAX_FILE_BYTES);
    } else if ((buffer = malloc((size_t)st.st_size + 1)) == NULL) {
        status = pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    size_t done = 0;
    while (status == PIO_OK && done < (size_t)st.st_size) {
        ssize_t got = read(fd, buffer + done, (size_t)st.st_size - done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            status = pio_error_set(err, PIO_ERR_IO, "%s: read failed at byte %zu: %s", path, done,
                                   got < 0 ? strerror(errno) : "file shrank while reading");
        else
            done += (size_t)got;
    }
    close(fd);
    if (status != PIO_OK) {
        free(buffer);
        return status;
    }
    *text = buffer;
    *length = done;
    return PIO_OK;
}

pio_status pio_json_load_file(const char *path, pio_json_doc **out, pio_error *err)
{
    if (out == NULL || path == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pio_json_load_file: NULL argument");
    *out = NULL;
    char *text = NULL;
    size_t length = 0;
    pio_status status = read_whole_file(path, &text, &length, err);
    if (status != PIO_OK)
        return status;
    status = pio_json_load_buffer(path, text, length, out, err);
    free(text);
    return status;
}

void pio_json_free(pio_json_doc *doc)
{
    if (doc == NULL)
        return;
    json_decref(doc->root);
    free(doc->name);
    free(doc);
}

const char *pio_json_name(const pio_json_doc *doc)
{
    return doc != NULL ? doc->name : "";
}

const json_t *pio_json_root(const pio_json_doc *doc)
{
    return doc != NULL ? doc->root : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Messages                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Copies at most EXCERPT_MAX bytes of s, not cutting a UTF-8 sequence, control bytes as '?'. */
static void excerpt_string(const char *s, char *out, size_t cap)
{
    size_t n = strlen(s);
    size_t keep = n;
    if (keep > EXCERPT_MAX) {
        keep = EXCERPT_MAX;
        while (keep > 0 && ((unsigned char)s[keep] & 0xC0) == 0x80)
            keep--;
    }
    if (keep > cap - 4)
        keep = cap - 4;
    for (size_t i = 0; i < keep; i++)
        out[i] = ((unsigned char)s[i] < 0x20 || s[i] == '"') ? '?' : s[i];
    if (keep < n) {
        memcpy(out + keep, "...", 4);
    } else {
        out[keep] = '\0';
    }
}

/* "string \"abc\"", "integer 5", "number 1.5", "boolean true", "array", "object", "null". */
static void describe_value(const json_t *v, char *out, size_t cap)
{
    char excerpt[EXCERPT_MAX + 8];
    switch (json_typeof(v)) {
    case JSON_STRING:
        excerpt_string(json_string_value(v), excerpt, sizeof excerpt);
        snprintf(out, cap, "string \"%s\"", excerpt);
        break;
    case JSON_INTEGER:
        snprintf(out, cap, "integer %lld", (long long)json_integer_value(v));
        break;
    case JSON_REAL:
        snprintf(out, cap, "number %g", json_real_value(v));
        break;
    case JSON_TRUE:
        snprintf(out, cap, "boolean true");
        break;
    case JSON_FALSE:
        snprintf(out, cap, "boolean false");
        break;
    case JSON_ARRAY:
        snprintf(out, cap, "array");
        break;
    case JSON_OBJECT:
        snprintf(out, cap, "object");
        break;
    default:
        snprintf(out, cap, "null");
        break;
    }
}

static pio_status type_error(const pio_json_doc *doc, const char *label, const char *expected,
                             const json_t *got, pio_error *err)
{
    char description[EXCERPT_MAX + 32];
    describe_value(got, description, sizeof description);
    return pio_error_set(err, PIO_ERR_CONFIG, "%s: \"%s\" must be %s, got %s", doc->name, label,
                         expected, description);
}

/* ------------------------------------------------------------------------------------------ */
/* Lookup by dotted key                                                                       */
/* ------------------------------------------------------------------------------------------ */

static bool key_is_well_formed(const char *key)
{
    if (key == NULL || key[0] == '\0' || key[0] == '.')
        return false;
    size_t n = strlen(key);
    return key[n - 1] != '.' && strstr(key, "..") == NULL;
}

/*
 * Follows key through nested objects. PIO_OK with *value set (possibly a JSON null) when the
 * last step exists; PIO_SOFT_ABSENT when a step is missing or an object on the way is null;
 * PIO_ERR_CONFIG when a value on the way is not an object.
 */
static pio_status walk_key(const pio_json_doc *doc, const char *key, const json_t **value,
                           pio_error *err)
{
    const json_t *node = doc->root;
    const char *segment = key;
    for (;;) {
        const char *dot = strchr(segment, '.');
        size_t length = dot != NULL ? (size_t)(dot - key) : strlen(key);
        size_t segment_length = dot != NULL ? (size_t)(dot - segment) : strlen(segment);
        const json_t *child = json_object_getn(node, segment, segment_length);
        if (child == NULL)
            return PIO_SOFT_ABSENT;
        if (dot == NULL) {
            *value = child;
            return PIO_OK;
        }
        if (json_is_null(child))
            return PIO_SOFT_ABSENT;
        if (!json_is_object(child)) {
            char description[EXCERPT_MAX + 32];
            describe_value(child, description, sizeof description);
            return pio_error_set(err, PIO_ERR_CONFIG, "%s: \"%.*s\" must be an object, got %s",
                                 doc->name, (int)length, key, description);
        }
        node = child;
        segment = dot + 1;
    }
}

/* Finds a present, non-null value, applying `need` when there is none. */
static pio_status find_value(const pio_json_doc *doc, const char *key, pio_json_need need,
                             const json_t **value, pio_error *err)
{
    if (doc == NULL || !key_is_well_formed(key))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: invalid key \"%s\"",
                             doc != NULL ? doc->name : "(no document)",
                             key != NULL ? key : "(null)");
    const json_t *found = NULL;
    pio_status status = walk_key(doc, key, &found, err);
    if (PIO_IS_ERROR(status))
        return status;
    if (status == PIO_OK && !json_is_null(found)) {
        *value = found;
        return PIO_OK;
    }
    if (need == PIO_JSON_REQUIRED)
        return pio_error_set(err, PIO_ERR_NOT_FOUND, "%s: required key \"%s\" is %s", doc->name,
                             key, status == PIO_OK ? "null" : "missing");
    return PIO_SOFT_ABSENT;
}

bool pio_json_has(const pio_json_doc *doc, const char *key)
{
    const json_t *value;
    return find_value(doc, key, PIO_JSON_OPTIONAL, &value, NULL) == PIO_OK;
}

pio_status pio_json_get_value(const pio_json_doc *doc, const char *key, pio_json_need need,
                              const json_t **value, pio_error *err)
{
    return find_value(doc, key, need, value, err);
}

pio_status pio_json_get_object(const pio_json_doc *doc, const char *key, pio_json_need need,
                               const json_t **value, pio_error *err)
{
    const json_t *v = NULL;
    pio_status status = find_value(doc, key, need, &v, err);
    if (status != PIO_OK)
        return status;
    if (!json_is_object(v))
        return type_error(doc, key, "an object", v, err);
    *value = v;
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Checks of one value, shared by the scalar and array getters                                */
/* ------------------------------------------------------------------------------------------ */

static pio_status check_int(const pio_json_doc *doc, const char *label, const json_t *v,
                            int64_t min, int64_t max, int64_t *out, pio_error *err)
{
    if (!json_is_integer(v))
        return type_error(doc, label, "an integer", v, err);
    int64_t value = json_integer_value(v);
    if (value < min || value > max) {
        if (min == INT64_MIN)
            return pio_error_set(err, PIO_ERR_CONFIG, "%s: \"%s\" must be at most %lld, got %lld",
                                 doc->name, label, (long long)max, (long long)value);
        if (max == INT64_MAX)
            return pio_error_set(err, PIO_ERR_CONFIG, "%s: \"%s\" must be at least %lld, got %lld",
                                 doc->name, label, (long long)min, (long long)value);
        return pio_error_set(err, PIO_ERR_CONFIG,
                             "%s: \"%s\" must be between %lld and %lld, got %lld", doc->name,
                             label, (long long)min, (long long)max, (long long)value);
    }
    *out = value;
    return PIO_OK;
}

static pio_status check_double(const pio_json_doc *doc, const char *label, const json_t *v,
                               double min, double max, double *out, pio_error *err)
{
    if (!json_is_number(v))
        return type_error(doc, label, "a number", v, err);
    double value = json_number_value(v);
    if (!(value >= min && value <= max)) {
        if (isinf(min) && min < 0)
            return pio_error_set(err, PIO_ERR_CONFIG, "%s: \"%s\" must be at most %g, got %g",
                                 doc->name, label, max, value);
        if (isinf(max) && max > 0)
            return pio_error_set(err, PIO_ERR_CONFIG, "%s: \"%s\" must be at least %g, got %g",
                                 doc->name, label, min, value);
        return pio_error_set(err, PIO_ERR_CONFIG, "%s: \"%s\" must be between %g and %g, got %g",
                             doc->name, label, min, max, value);
    }
    *out = value;
    return PIO_OK;
}

static pio_status check_string(const pio_json_doc *doc, const char *label, const json_t *v,
                               const char **out, pio_error *err)
{
    if (!json_is_string(v))
        return type_error(doc, label, "a string", v, err);
    *out = json_string_value(v);
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Scalar getters                                                                             */
/* ------------------------------------------------------------------------------------------ */

pio_status pio_json_get_int(const pio_json_doc *doc, const char *key, pio_json_need need,
                            int64_t min, int64_t max, int64_t *value, pio_error *err)
{
    const json_t *v = NULL;
    pio_status status = find_value(doc, key, need, &v, err);
    return status == PIO_OK ? check_int(doc, key, v, min, max, value, err) : status;
}

pio_status pio_json_get_double(const pio_json_doc *doc, const char *key, pio_json_need need,
                               double min, double max, double *value, pio_error *err)
{
    const json_t *v = NULL;
    pio_status status = find_value(doc, key, need, &v, err);
    return status == PIO_OK ? check_double(doc, key, v, min, max, value, err) : status;
}

pio_status pio_json_get_bool(const pio_json_doc *doc, const char *key, pio_json_need need,
                             bool *value, pio_error *err)
{
    const json_t *v = NULL;
    pio_status status = find_value(doc, key, need, &v, err);
    if (status != PIO_OK)
        return status;
    if (!json_is_boolean(v))
        return type_error(doc, key, "true or false", v, err);
    *value = json_is_true(v);
    return PIO_OK;
}

pio_status pio_json_get_string(const pio_json_doc *doc, const char *key, pio_json_need need,
                               const char **value, pio_error *err)
{
    const json_t *v = NULL;
    pio_status status = find_value(doc, key, need, &v, err);
    return status == PIO_OK ? check_string(doc, key, v, value, err) : status;
}

pio_status pio_json_get_token_text(const pio_json_doc *doc, const char *key, pio_json_need need,
                                   const char **value, pio_error *err)
{
    const json_t *v = NULL;
    pio_status status = find_value(doc, key, need, &v, err);
    if (status != PIO_OK)
        return status;
    if (json_is_string(v)) {
        *value = json_string_value(v);
        return PIO_OK;
    }
    const json_t *content = json_is_object(v) ? json_object_get(v, "content") : NULL;
    if (content == NULL)
        return type_error(doc, key, "a string or an object with \"content\"", v, err);
    char label[LABEL_MAX];
    snprintf(label, sizeof label, "%s.content", key);
    return check_string(doc, label, content, value, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Array getters: validate every element first, then write, so failures leave outputs alone.  */
/* ------------------------------------------------------------------------------------------ */

typedef enum element_kind { ELEMENT_INT, ELEMENT_DOUBLE, ELEMENT_STRING } element_kind;

typedef struct element_spec {
    element_kind kind;
    int64_t int_min, int_max;
    double real_min, real_max;
    void *values; /* int64_t[], double[] or const char *[] */
} element_spec;

static pio_status check_element(const pio_json_doc *doc, const char *label, const json_t *v,
                                const element_spec *spec, size_t index, bool store,
                                pio_error *err)
{
    int64_t int_value = 0;
    double real_value = 0.0;
    const char *string_value = NULL;
    pio_status status;
    switch (spec->kind) {
    case ELEMENT_INT:
        status = check_int(doc, label, v, spec->int_min, spec->int_max, &int_value, err);
        if (status == PIO_OK && store)
            ((int64_t *)spec->values)[index] = int_value;
        return status;
    case ELEMENT_DOUBLE:
        status = check_double(doc, label, v, spec->real_min, spec->real_max, &real_value, err);
        if (status == PIO_OK && store)
            ((double *)spec->values)[index] = real_value;
        return status;
    default:
        status = check_string(doc, label, v, &string_value, err);
        if (status == PIO_OK && store)
            ((const char **)spec->values)[index] = string_value;
        return status;
    }
}

static pio_status read_array(const pio_json_doc *doc, const char *key, const json_t *array,
                             const element_spec *spec, size_t capacity, size_t *count,
                             pio_error *err)
{
    size_t n = json_array_size(array);
    if (n > capacity)
        return pio_error_set(err, PIO_ERR_CONFIG,
                             "%s: \"%s\" has %zu entries, at most %zu are supported", doc->name,
                             key, n, capacity);
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            char label[LABEL_MAX];
            snprintf(label, sizeof label, "%s[%zu]", key, i);
            pio_status status =
                check_element(doc, label, json_array_get(array, i), spec, i, pass == 1, err);
            if (status != PIO_OK)
                return status;
        }
    }
    *count = n;
    return PIO_OK;
}

static pio_status get_array(const pio_json_doc *doc, const char *key, pio_json_need need,
                            const element_spec *spec, const char *expected, size_t capacity,
                            size_t *count, pio_error *err)
{
    if (count == NULL || (spec->values == NULL && capacity > 0))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: \"%s\": NULL output array",
                             pio_json_name(doc), key != NULL ? key : "(null)");
    const json_t *v = NULL;
    pio_status status = find_value(doc, key, need, &v, err);
    if (status != PIO_OK)
        return status;
    if (!json_is_array(v))
        return type_error(doc, key, expected, v, err);
    return read_array(doc, key, v, spec, capacity, count, err);
}

pio_status pio_json_get_int_array(const pio_json_doc *doc, const char *key, pio_json_need need,
                                  int64_t min, int64_t max, int64_t *values, size_t capacity,
                                  size_t *count, pio_error *err)
{
    element_spec spec = {ELEMENT_INT, min, max, 0.0, 0.0, values};
    return get_array(doc, key, need, &spec, "an array of integers", capacity, count, err);
}

pio_status pio_json_get_double_array(const pio_json_doc *doc, const char *key,
                                     pio_json_need need, double min, double max, double *values,
                                     size_t capacity, size_t *count, pio_error *err)
{
    element_spec spec = {ELEMENT_DOUBLE, 0, 0, min, max, values};
    return get_array(doc, key, need, &spec, "an array of numbers", capacity, count, err);
}

pio_status pio_json_get_string_array(const pio_json_doc *doc, const char *key,
                                     pio_json_need need, const char **values, size_t capacity,
                                     size_t *count, pio_error *err)
{
    element_spec spec = {ELEMENT_STRING, 0, 0, 0.0, 0.0, (void *)values};
    return get_array(doc, key, need, &spec, "an array of strings", capacity, count, err);
}

pio_status pio_json_get_int_or_array(const pio_json_doc *doc, const char *key,
                                     pio_json_need need, int64_t min, int64_t max,
                                     int64_t *values, size_t capacity, size_t *count,
                                     pio_error *err)
{
    if (count == NULL || (values == NULL && capacity > 0))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: \"%s\": NULL output array",
                             pio_json_name(doc), key != NULL ? key : "(null)");
    const json_t *v = NULL;
    pio_status status = find_value(doc, key, need, &v, err);
    if (status != PIO_OK)
        return status;
    if (json_is_integer(v)) {
        int64_t single = 0;
        if (capacity < 1)
            return pio_error_set(err, PIO_ERR_CONFIG,
                                 "%s: \"%s\" has 1 entry, at most 0 are supported", doc->name,
                                 key);
        status = check_int(doc, key, v, min, max, &single, err);
        if (status != PIO_OK)
            return status;
        values[0] = single;
        *count = 1;
        return PIO_OK;
    }
    element_spec spec = {ELEMENT_INT, min, max, 0.0, 0.0, values};
    return get_array(doc, key, need, &spec, "an integer or an array of integers", capacity, count,
                     err);
}

/* ------------------------------------------------------------------------------------------ */
/* Table-driven fields                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* A double bound rounded inwards (ceil for a lower bound) and clamped to [type_min, type_max]. */
static int64_t integer_bound(double bound, bool lower, int64_t type_min, int64_t type_max)
{
    if (isnan(bound))
        return lower ? type_min : type_max;
    double rounded = lower ? ceil(bound) : floor(bound);
    if (rounded <= (double)type_min)
        return type_min;
    if (rounded >= (double)type_max) /* (double)INT64_MAX rounds up to 2^63 */
        return type_max;
    return (int64_t)rounded;
}

static pio_status read_int_field(const pio_json_doc *doc, const pio_json_field *field,
                                 int64_t type_min, int64_t type_max, int64_t *value,
                                 pio_error *err)
{
    int64_t min = integer_bound(field->min, true, type_min, type_max);
    int64_t max = integer_bound(field->max, false, type_min, type_max);
    return pio_json_get_int(doc, field->key, field->need, min, max, value, err);
}

static pio_status read_field(const pio_json_doc *doc, const pio_json_field *field, char *dest,
                             pio_error *err)
{
    int64_t i64 = 0;
    double f64 = 0.0;
    bool flag = false;
    const char *text = NULL;
    pio_status status;
    switch (field->kind) {
    case PIO_JSON_FIELD_INT:
        status = read_int_field(doc, field, INT_MIN, INT_MAX, &i64, err);
        if (status == PIO_OK)
            *(int *)(dest + field->offset) = (int)i64;
        return status;
    case PIO_JSON_FIELD_LONG:
        status = read_int_field(doc, field, LONG_MIN, LONG_MAX, &i64, err);
        if (status == PIO_OK)
            *(long *)(dest + field->offset) = (long)i64;
        return status;
    case PIO_JSON_FIELD_LLONG:
        status = read_int_field(doc, field, LLONG_MIN, LLONG_MAX, &i64, err);
        if (status == PIO_OK)
            *(long long *)(dest + field->offset) = (long long)i64;
        return status;
    case PIO_JSON_FIELD_DOUBLE:
    case PIO_JSON_FIELD_FLOAT:
        status = pio_json_get_double(doc, field->key, field->need, field->min, field->max, &f64,
                                     err);
        if (status == PIO_OK && field->kind == PIO_JSON_FIELD_DOUBLE)
            *(double *)(dest + field->offset) = f64;
        else if (status == PIO_OK)
            *(float *)(dest + field->offset) = (float)f64;
        return status;
    case PIO_JSON_FIELD_BOOL:
        status = pio_json_get_bool(doc, field->key, field->need, &flag, err);
        if (status == PIO_OK)
            *(bool *)(dest + field->offset) = flag;
        return status;
    case PIO_JSON_FIELD_STRING:
        status = pio_json_get_string(doc, field->key, field->need, &text, err);
        if (status == PIO_OK)
            *(const char **)(dest + field->offset) = text;
        return status;
    }
    return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: \"%s\": unknown field kind %d",
                         pio_json_name(doc), field->key, (int)field->kind);
}

pio_status pio_json_read_fields(const pio_json_doc *doc, const pio_json_field *fields,
                                size_t n_fields, void *dest, pio_error *err)
{
    if (doc == NULL || dest == NULL || (fields == NULL && n_fields > 0))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pio_json_read_fields: NULL argument");
    for (size_t i = 0; i < n_fields; i++) {
        pio_status status = read_field(doc, &fields[i], dest, err);
        if (PIO_IS_ERROR(status))
            return status;
    }
    return PIO_OK;
}
