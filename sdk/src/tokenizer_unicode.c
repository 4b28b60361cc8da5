/*
 * UTF-8 checking and repair, NFC, and the GPT-2 byte-level alphabet for the tokenizer.
 */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ------------------------------------------------------------------------------------------ */
/* Buffers                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static size_t grown_capacity(size_t current, size_t needed, size_t minimum)
{
    size_t cap = current > minimum ? current : minimum;
    while (cap < needed)
        cap = cap > SIZE_MAX / 2 ? needed : cap * 2;
    return cap;
}

bool tok_bytes_reserve(tok_bytes *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len)
        return false;
    if (b->len + extra <= b->cap)
        return true;
    size_t cap = grown_capacity(b->cap, b->len + extra, 64);
    uint8_t *data = realloc(b->data, cap);
    if (data == NULL)
        return false;
    b->data = data;
    b->cap = cap;
    return true;
}

bool tok_bytes_append(tok_bytes *b, const void *data, size_t n)
{
    if (!tok_bytes_reserve(b, n))
        return false;
    if (n > 0)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    return true;
}

void tok_bytes_free(tok_bytes *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

bool tok_u32s_reserve(tok_u32s *v, size_t extra)
{
    if (extra > SIZE_MAX / sizeof(uint32_t) - v->len)
        return false;
    if (v->len + extra <= v->cap)
        return true;
    size_t cap = grown_capacity(v->cap, v->len + extra, 64);
    uint32_t *data = realloc(v->data, cap * sizeof *data);
    if (data == NULL)
        return false;
    v->data = data;
    v->cap = cap;
    return true;
}

void tok_u32s_free(tok_u32s *v)
{
    free(v->data);
    v->data = NULL;
    v->len = v->cap = 0;
}

bool tok_ids_push(pio_token_ids *ids, int32_t id)
{
    if (ids->count == ids->capacity) {
        if (ids->capacity > SIZE_MAX / 2 / sizeof(int32_t))
            return false;
        size_t cap = ids->capacity ? ids->capacity * 2 : 64;
        int32_t *grown = realloc(ids->ids, cap * sizeof *grown);
        if (grown == NULL)
            return false;
        ids->ids = grown;
        ids->capacity = cap;
    }
    ids->ids[ids->count++] = id;
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* UTF-8                                                                                      */
/* ------------------------------------------------------------------------------------------ */

tok_utf8_kind tok_utf8_classify(const uint8_t *s, size_t n, size_t *length)
{
    uint8_t lead = s[0];
    if (lead < 0x80) {
        *length = 1;
        return TOK_UTF8_VALID;
    }
    /* Allowed range of the second byte depends on the lead byte (no overlong forms, no
     * surrogates, nothing above U+10FFFF); later bytes are always 80..BF. */
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
        need = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        need = 3;
        if (lead == 0xE0)
            lo = 0xA0;
        else if (lead == 0xED)
            hi = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        need = 4;
        if (lead == 0xF0)
            lo = 0x90;
        else if (lead == 0xF4)
            hi = 0x8F;
    } else {
        *length = 1;
        return TOK_UTF8_INVALID;
    }
    for (size_t k = 1; k < need; k++) {
        if (k >= n) {
            *length = k;
            return TOK_UTF8_INCOMPLETE;
        }
        if (s[k] < lo || s[k] > hi) {
            *length = k;
            return TOK_UTF8_INVALID;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    *length = need;
    return TOK_UTF8_VALID;
}

/* Length of the run of ASCII bytes at the start of s[0, n). */
static size_t ascii_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i + 8 <= n) {
        uint64_t word;
        memcpy(&word, s + i, 8);
        if (word & 0x8080808080808080ull)
            break;
        i += 8;
    }
    while (i < n && s[i] < 0x80)
        i++;
    return i;
}

size_t tok_utf8_first_invalid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        i += ascii_prefix(s + i, n - i);
        if (i == n)
            break;
        size_t length;
        if (tok_utf8_classify(s + i, n - i, &length) != TOK_UTF8_VALID)
            return i;
        i += length;
    }
    return n;
}

static const uint8_t replacement_char[3] = {0xEF, 0xBF, 0xBD};

int tok_utf8_append_lossy(const uint8_t *s, size_t n, bool final, tok_bytes *out)
{
    size_t i = 0;
    while (i < n) {
        size_t valid_end = i + tok_utf8_first_invalid(s + i, n - i);
        if (!tok_bytes_append(out, s + i, valid_end - i))
            return -1;
        i = valid_end;
        if (i == n)
            break;
        size_t length;
        tok_utf8_kind kind = tok_utf8_classify(s + i, n - i, &length);
        if (kind == TOK_UTF8_INCOMPLETE && !final)
            return (int)length;
        if (!tok_bytes_append(out, replacement_char, sizeof replacement_char))
            return -1;
        i += length;
    }
    return 0;
}

uint32_t tok_utf8_decode(const uint8_t *s, size_t *length)
{
    uint8_t lead = s[0];
    if (lead < 0x80) {
        *length = 1;
        return lead;
    }
    if (lead < 0xE0) {
        *length = 2;
        return ((uint32_t)(lead & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (lead < 0xF0) {
        *length = 3;
        return ((uint32_t)(lead & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *length = 4;
    return ((uint32_t)(lead & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
           ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

size_t tok_utf8_encode(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* ------------------------------------------------------------------------------------------ */
/* Character classes                                                                          */
/* ------------------------------------------------------------------------------------------ */

bool tok_is_white_space(uint32_t cp)
{
    if (cp <= 0x20)
        return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85)
        return false;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool tok_is_word_char(uint32_t cp)
{
    if (cp == 0x200C || cp == 0x200D)
        return true;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* NFC                                                                                        */
/* ------------------------------------------------------------------------------------------ */

#define TOK_CODE_POINTS 0x110000u
#define NFC_OPTIONS (UTF8PROC_STABLE | UTF8PROC_COMPOSE)

/* Bit set: code points that NFC might change or that might combine with what precedes them:
 * a non-zero combining class, a canonical decomposition, or the last code point of some
 * canonical decomposition of two or more code points (the only ones that can be the second
 * half of a composition), plus
 * the Hangul vowel and trailing jamo. Every other code point is a safe place to cut the text:
 * NFC(a + b) == NFC(a) + NFC(b) when b starts with one. */
static uint8_t nfc_unsafe[TOK_CODE_POINTS / 8];
static pthread_once_t nfc_tables_once = PTHREAD_ONCE_INIT;

static void mark_unsafe(uint32_t cp)
{
    nfc_unsafe[cp >> 3] |= (uint8_t)(1u << (cp & 7));
}

static bool is_nfc_unsafe(uint32_t cp)
{
    return (nfc_unsafe[cp >> 3] >> (cp & 7)) & 1u;
}

static void build_nfc_tables(void)
{
    for (uint32_t cp = 0; cp < TOK_CODE_POINTS; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
        if (p->combining_class != 0)
            mark_unsafe(cp);
        if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) {
            utf8proc_int32_t parts[16];
            int boundclass = 0;
            utf8proc_ssize_t n = utf8proc_decompose_char((utf8proc_int32_t)cp, parts, 16,
                                                         NFC_OPTIONS, &boundclass);
            mark_unsafe(cp);
            /* A singleton decomposition (U+037E -> ';') composes with nothing. */
            if (n >= 2 && n <= 16)
                mark_unsafe((uint32_t)parts[n - 1]);
        }
    }
    for (uint32_t cp = 0x1161; cp <= 0x1175; cp++)
        mark_unsafe(cp);
    for (uint32_t cp = 0x11A8; cp <= 0x11C2; cp++)
        mark_unsafe(cp);
}

static uint8_t combining_class(uint32_t cp)
{
    return (uint8_t)utf8proc_get_property((utf8proc_int32_t)cp)->combining_class;
}

/* Stable sort of a run of non-starters by combining class (canonical ordering). Runs are
 * almost always one or two marks; a long run (hostile input) is counting-sorted so that the
 * total stays linear. */
static bool sort_marks(uint32_t *run, size_t n, tok_u32s *scratch)
{
    if (n <= 32) {
        for (size_t i = 1; i < n; i++) {
            uint32_t cp = run[i];
            uint8_t ccc = combining_class(cp);
            size_t j = i;
            while (j > 0 && combining_class(run[j - 1]) > ccc) {
                run[j] = run[j - 1];
                j--;
            }
            run[j] = cp;
        }
        return true;
    }
    size_t start[257] = {0};
    for (size_t i = 0; i < n; i++)
        start[combining_class(run[i]) + 1]++;
    for (size_t c = 1; c <= 256; c++)
        start[c] += start[c - 1];
    scratch->len = 0;
    if (!tok_u32s_reserve(scratch, n))
        return false;
    for (size_t i = 0; i < n; i++)
        scratch->data[start[combining_class(run[i])]++] = run[i];
    memcpy(run, scratch->data, n * sizeof *run);
    return true;
}

static bool canonical_order(uint32_t *cps, size_t n, tok_u32s *scratch)
{
    size_t i = 0;
    while (i < n) {
        if (combining_class(cps[i]) == 0) {
            i++;
            continue;
        }
        size_t end = i + 1;
        while (end < n && combining_class(cps[end]) != 0)
            end++;
        if (!sort_marks(cps + i, end - i, scratch))
            return false;
        i = end;
    }
    return true;
}

/* NFC of one region (valid UTF-8) appended to out: full canonical decomposition, canonical
 * ordering, then utf8proc's composition pass (which does no reordering of its own). */
static bool nfc_region(const uint8_t *s, size_t n, tok_u32s *cps, tok_bytes *out)
{
    tok_u32s sort_scratch = {0};
    bool ok = false;
    cps->len = 0;
    int boundclass = 0;
    for (size_t i = 0; i < n;) {
        size_t length;
        uint32_t cp = tok_utf8_decode(s + i, &length);
        i += length;
        if (!tok_u32s_reserve(cps, 16))
            goto done;
        utf8proc_ssize_t k = utf8proc_decompose_char((utf8proc_int32_t)cp,
                                                     (utf8proc_int32_t *)cps->data + cps->len,
                                                     16, NFC_OPTIONS, &boundclass);
        if (k < 0 || k > 16)
            goto done;
        cps->len += (size_t)k;
    }
    if (!canonical_order(cps->data, cps->len, &sort_scratch))
        goto done;
    utf8proc_ssize_t composed = utf8proc_normalize_utf32((utf8proc_int32_t *)cps->data,
                                                         (utf8proc_ssize_t)cps->len, NFC_OPTIONS);
    if (composed < 0 || !tok_bytes_reserve(out, (size_t)composed * 4))
        goto done;
    for (utf8proc_ssize_t j = 0; j < composed; j++)
        out->len += tok_utf8_encode(cps->data[j], out->data + out->len);
    ok = true;
done:
    tok_u32s_free(&sort_scratch);
    return ok;
}

/* End of the run of unsafe code points that starts at s[from]. */
static size_t unsafe_run_end(const uint8_t *s, size_t n, size_t from)
{
    size_t end = from;
    while (end < n) {
        size_t length;
        if (!is_nfc_unsafe(tok_utf8_decode(s + end, &length)))
            break;
        end += length;
    }
    return end;
}

bool tok_nfc(const uint8_t *s, size_t n, tok_bytes *scratch, tok_u32s *code_points,
             const uint8_t **out, size_t *out_len)
{
    pthread_once(&nfc_tables_once, build_nfc_tables);
    size_t i = 0, copied = 0, safe = 0; /* safe: start of the last safe code point */
    bool changed = false;
    while (i < n) {
        size_t ascii = ascii_prefix(s + i, n - i);
        if (ascii > 0) {
            /* No ASCII code point is unsafe, so each is a safe cut. */
            i += ascii;
            safe = i - 1;
            continue;
        }
        size_t length;
        if (!is_nfc_unsafe(tok_utf8_decode(s + i, &length))) {
            safe = i;
            i += length;
            continue;
        }
        /* Normalize from the last safe code point (it may compose with what follows) to the
         * next safe one; the text around is left as it is. */
        size_t end = unsafe_run_end(s, n, i);
        if (!changed)
            scratch->len = 0;
        changed = true;
        if (!tok_bytes_append(scratch, s + copied, safe - copied) ||
            !nfc_region(s + safe, end - safe, code_points, scratch))
            return false;
        copied = safe = i = end;
    }
    if (changed && !tok_bytes_append(scratch, s + copied, n - copied))
        return false;
    *out = changed ? scratch->data : s;
    *out_len = changed ? scratch->len : n;
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Byte-level alphabet                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* GPT-2's mapping: the printable bytes 33..126, 161..172 and 174..255 stand for themselves; the
 * other 68 bytes (0..32, 127..160, 173), in increasing order, take U+0100..U+0143. */
uint32_t tok_byte_to_code_point(uint8_t byte)
{
    if (byte <= 32)
        return 256u + byte;
    if (byte >= 127 && byte <= 160)
        return 256u + 33u + (byte - 127u);
    if (byte == 173)
        return 256u + 67u;
    return byte;
}

int tok_code_point_to_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return (int)cp;
    if (cp >= 256 && cp <= 256 + 32)
        return (int)(cp - 256);
    if (cp >= 256 + 33 && cp <= 256 + 66)
        return (int)(cp - 256 - 33 + 127);
    if (cp == 256 + 67)
        return 173;
    return -1;
}
