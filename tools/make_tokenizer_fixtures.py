#!/usr/bin/env python3
"""Record reference token ids for tests/test_tokenizer.c.

Writes, under tests/fixtures/tokenizer/:
  glm_pattern_tokenizer.json   a small synthetic tokenizer.json with GLM-4's pre-tokenizer
                               pattern (\\p{N}{1,3}), built from the first merges of the Qwen3
                               tokenizer plus a few digit merges, GLM-like added tokens (some
                               with lstrip / rstrip / single_word / normalized) and a
                               TemplateProcessing post-processor
  qwen3_reference.json         ids for a varied set of strings on the real Qwen3 tokenizer
  glm_pattern_reference.json   the same for the synthetic tokenizer

Usage (from the repository root):
  python3 tools/make_tokenizer_fixtures.py [--shared ../shared]
      Needs the Hugging Face `tokenizers` package. The ids come from it; the pure-Python
      reference below is run on every case as well and any disagreement is reported.
  python3 tools/make_tokenizer_fixtures.py --pure-python
      Records the ids of the pure-Python reference instead (for machines without
      `tokenizers`); the fixture's "generator" field says so.
  python3 tools/make_tokenizer_fixtures.py --self-test
      Checks the pure-Python reference against the llama.cpp vectors in
      ../shared/models/qwen3_4b_instruct_2507/tokenizer_tests/ and exits.

The pure-Python reference is a direct, slow statement of the algorithm: added tokens split
first (leftmost-longest; single_word, lstrip, rstrip), NFC, a hand-written matcher for the
Qwen2 / GLM-4 pre-tokenizer regex, the GPT-2 byte-level alphabet, and BPE that repeatedly
merges the lowest-ranked adjacent pair (leftmost on ties). It uses the standard library only.
"""

import argparse
import json
import os
import sys
import unicodedata

QWEN_TOKENIZER = "models/qwen3_4b_instruct_2507/tokenizer.json"
GGML_TESTS = "models/qwen3_4b_instruct_2507/tokenizer_tests/ggml-vocab-qwen2.gguf"
FIXTURE_DIR = "tests/fixtures/tokenizer"
GLM_TOKENIZER = FIXTURE_DIR + "/glm_pattern_tokenizer.json"

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GLM_PATTERN = QWEN_PATTERN.replace(r"\p{N}|", r"\p{N}{1,3}|")

# ----------------------------------------------------------------------------------------------
# Pure-Python reference
# ----------------------------------------------------------------------------------------------

# Unicode White_Space: what \s means in Oniguruma (used by Hugging Face) and in Rust's regex.
WHITE_SPACE = frozenset(chr(c) for c in [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680,
                                         *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
                                         0x205F, 0x3000])


def byte_level_alphabet():
    """GPT-2's bytes -> characters table."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
                 + list(range(0xAE, 0xFF + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = byte_level_alphabet()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def is_letter(c):
    return unicodedata.category(c).startswith("L")


def is_number(c):
    return unicodedata.category(c).startswith("N")


def is_space(c):
    return c in WHITE_SPACE


def is_other(c):
    return not is_space(c) and not is_letter(c) and not is_number(c)


def is_word_char(c):
    """Rust regex \\w, as approximated by the C code: letters, marks, Nd, Nl, Pc, joiners."""
    cat = unicodedata.category(c)
    return cat[0] in "LM" or cat in ("Nd", "Nl", "Pc") or c in "\u200c\u200d"


CONTRACTIONS = ["s", "t", "re", "ve", "m", "ll", "d"]


def match_contraction(s, i):
    if s[i] != "'":
        return None
    for suffix in CONTRACTIONS:
        j = i + 1
        for ch in suffix:
            # (?i) compares by simple case folding: 'S' and U+017F (long s) match 's'.
            if j < len(s) and s[j].casefold() == ch:
                j += 1
            else:
                break
        else:
            return j
    return None


def match_at(s, i, digit_group):
    """End of the regex match that starts at s[i] (the pattern matches at every position)."""
    n = len(s)
    c = s[i]
    end = match_contraction(s, i)
    if end is not None:
        return end
    # [^\r\n\p{L}\p{N}]?\p{L}+
    start = i + 1 if (c not in "\r\n" and not is_letter(c) and not is_number(c)) else i
    for first in (start, i):
        if first < n and is_letter(s[first]):
            j = first
            while j < n and is_letter(s[j]):
                j += 1
            return j
    # \p{N} or \p{N}{1,3}
    if is_number(c):
        j = i
        while j < n and j - i < digit_group and is_number(s[j]):
            j += 1
        return j
    # ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    for first in ((i + 1, i) if c == " " else (i,)):
        if first < n and is_other(s[first]):
            j = first
            while j < n and is_other(s[j]):
                j += 1
            while j < n and s[j] in "\r\n":
                j += 1
            return j
    # \s*[\r\n]+ | \s+(?!\S) | \s+
    j = i
    while j < n and is_space(s[j]):
        j += 1
    line_breaks = [p for p in range(i, j) if s[p] in "\r\n"]
    if line_breaks:
        return line_breaks[-1] + 1
    if j == n or j - 1 == i:
        return j
    return j - 1


def pre_tokenize(s, digit_group):
    pieces, i = [], 0
    while i < len(s):
        end = match_at(s, i, digit_group)
        pieces.append(s[i:end])
        i = end
    return pieces


class Reference:
    """Encodes and decodes like Hugging Face `tokenizers` for the supported tokenizer.json."""

    def __init__(self, data):
        pattern = data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
        if pattern == QWEN_PATTERN:
            self.digit_group = 1
        elif pattern == GLM_PATTERN:
            self.digit_group = 3
        else:
            raise ValueError("the pure-Python reference knows only the Qwen2 and GLM-4 patterns")
        self.nfc = (data.get("normalizer") or {}).get("type") == "NFC"
        model = data["model"]
        self.vocab = model["vocab"]
        self.ranks = {}
        for rank, merge in enumerate(model["merges"]):
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            self.ranks[(left, right)] = rank
        self.added = data["added_tokens"]
        self.id_to_text = {i: t for t, i in self.vocab.items()}
        for token in self.added:
            self.id_to_text[token["id"]] = token["content"]
        self.special_ids = {t["id"] for t in self.added if t["special"]}
        self.added_ids = {t["id"] for t in self.added}
        self.prefix, self.suffix = [], []
        post = data.get("post_processor") or {}
        processors = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
        for processor in processors:
            if processor.get("type") == "TemplateProcessing":
                target = self.prefix
                for item in processor["single"]:
                    if "Sequence" in item:
                        target = self.suffix
                    else:
                        name = item["SpecialToken"]["id"]
                        target.extend(processor["special_tokens"][name]["ids"])

    def normalize(self, text):
        return unicodedata.normalize("NFC", text) if self.nfc else text

    def split_added(self, text, tokens, skip_special):
        """[(text, None) | (content, id)] with Hugging Face's AddedVocabulary rules."""
        out, text_start, search = [], 0, 0
        while True:
            best = None
            for at in range(search, len(text)):
                for token in tokens:
                    content = token["content"]
                    if text.startswith(content, at) and (best is None or
                                                         len(content) > best[1] - best[0]):
                        best = (at, at + len(content), token)
                if best is not None:
                    break
            if best is None:
                break
            start, end, token = best
            search = end
            if skip_special and token["special"]:
                continue
            if token.get("single_word"):
                if (start > 0 and is_word_char(text[start - 1])) or \
                        (end < len(text) and is_word_char(text[end])):
                    continue
            if start < text_start:
                continue
            if token.get("lstrip"):
                while start > text_start and is_space(text[start - 1]):
                    start -= 1
            if token.get("rstrip"):
                while end < len(text) and is_space(text[end]):
                    end += 1
            if start > text_start:
                out.append((text[text_start:start], None))
            out.append((text[start:end], token["id"]))
            text_start = end
        if text_start < len(text):
            out.append((text[text_start:], None))
        return out

    def bpe(self, piece):
        symbols = [BYTE_TO_CHAR[b] for b in piece.encode("utf-8")]
        while len(symbols) > 1:
            best = None
            for k in range(len(symbols) - 1):
                rank = self.ranks.get((symbols[k], symbols[k + 1]))
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, k)
            if best is None:
                break
            k = best[1]
            symbols[k:k + 2] = [symbols[k] + symbols[k + 1]]
        return [self.vocab[s] for s in symbols]

    def encode_plain(self, text):
        ids = []
        for piece in pre_tokenize(text, self.digit_group):
            ids.extend(self.bpe(piece))
        return ids

    def encode(self, text, add_special_tokens=False, split_special_tokens=False):
        raw = [t for t in self.added if not t.get("normalized", True)]
        normalized = [t for t in self.added if t.get("normalized", True)]
        if self.nfc:
            normalized = [dict(t, content=self.normalize(t["content"])) for t in normalized]
        ids = list(self.prefix) if add_special_tokens else []
        for segment, token_id in self.split_added(text, raw, split_special_tokens):
            if token_id is not None:
                ids.append(token_id)
                continue
            for part, part_id in self.split_added(self.normalize(segment), normalized,
                                                  split_special_tokens):
                ids.extend([part_id] if part_id is not None else self.encode_plain(part))
        if add_special_tokens:
            ids.extend(self.suffix)
        return ids

    def decode(self, ids, skip_special_tokens=False):
        data = bytearray()
        for i in ids:
            if skip_special_tokens and i in self.special_ids:
                continue
            text = self.id_to_text[i]
            if i in self.added_ids or any(c not in CHAR_TO_BYTE for c in text):
                data += text.encode("utf-8")
            else:
                data += bytes(CHAR_TO_BYTE[c] for c in text)
        return data.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# The synthetic GLM-pattern tokenizer
# ----------------------------------------------------------------------------------------------

GLM_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
                "<|user|>", "<|assistant|>", "<|observation|>"]


def build_glm_tokenizer(qwen, n_merges=1500):
    merges, tokens = [], {BYTE_TO_CHAR[b] for b in range(256)}
    for merge in qwen["model"]["merges"][:n_merges]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        if left in tokens and right in tokens:
            merges.append((left, right))
            tokens.add(left + right)
    # Digit merges, so that \p{N}{1,3} groups show up in the ids.
    for a in "0123456789":
        for b in "0123456789":
            merges.append((a, b))
            tokens.add(a + b)
    for triple in ["123", "000", "999", "202", "456", "314"]:
        merges.append((triple[:2], triple[2]))
        tokens.add(triple)
    qwen_vocab = qwen["model"]["vocab"]
    ordered = sorted(tokens, key=lambda t: (qwen_vocab.get(t, 1 << 30), t))
    vocab = {t: i for i, t in enumerate(ordered)}
    added, next_id = [], len(vocab)

    def add(content, special, **flags):
        nonlocal next_id
        entry = {"id": next_id, "content": content, "single_word": False, "lstrip": False,
                 "rstrip": False, "normalized": False, "special": special}
        entry.update(flags)
        added.append(entry)
        next_id += 1

    for content in GLM_SPECIALS:
        add(content, True)
    add("<think>", False)
    add("</think>", False)
    add("<mask>", True, lstrip=True)
    add("<sep>", True, rstrip=True)
    add("<word>", False, single_word=True)
    add("caf\u00e9", False, normalized=True)
    ids = {a["content"]: a["id"] for a in added}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GLM_PATTERN}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "[gMASK]", "type_id": 0}},
                        {"SpecialToken": {"id": "<sop>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "[gMASK]", "type_id": 0}},
                      {"SpecialToken": {"id": "<sop>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {name: {"id": name, "ids": [ids[name]], "tokens": [name]}
                                for name in ("[gMASK]", "<sop>")}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [left + " " + right for left, right in merges]},
    }


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

CHATML = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
          "What is 2+2?<|im_end|>\n<|im_start|>assistant\n")

COMMON_CASES = [
    ("empty", ""),
    ("hello", "Hello world"),
    ("code python", "def fib(n):\n    if n < 2:\n        return n\n    return fib(n-1) + fib(n-2)\n"),
    ("code c tabs", "int main(void)\n{\n\tprintf(\"%d\\n\", x->y[3]);\n\treturn 0;\n}\n"),
    ("json", '{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2, 3]}}'),
    ("html", "<div class=\"a\"><p>Hi &amp; bye</p></div>"),
    ("chinese", "今天天气很好，我们去公园散步吧。人工智能正在改变世界！"),
    ("japanese", "こんにちは、世界。カタカナとひらがなと漢字。"),
    ("korean", "안녕하세요 세계"),
    ("mixed scripts", "Hello мир 世界 عالم שלום Γειά σου"),
    ("emoji", "🙂 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✅"),
    ("emoji run", "🙂" * 40),
    ("nfc e acute", "cafe\u0301 re\u0301sume\u0301"),
    ("nfc angstrom sign", "\u212b \u2126 \u212a"),
    ("nfc hangul jamo", "\u1112\u1161\u11ab\u1100\u1173\u11af"),
    ("nfc compat ideograph", "\uf900\uf901 \ufa10"),
    ("nfc reorder", "q\u0307\u0323 a\u0301\u0316\u0300"),
    ("nfc vietnamese decomposed", "Tie\u0302\u0301ng Vie\u0323\u0302t"),
    ("combining run", "a" + "\u0301\u0316" * 30),
    ("numbers", "12345678901234567890 3.14159 1,000,000 -42 0x1F"),
    ("unicode numbers", "\u0663\u0664\u0665 \u00bd \u00b2 \u216b \u2460"),
    ("spaces", "   "),
    ("spaces between", "a  b   c    d"),
    ("trailing spaces", "hello   "),
    ("leading spaces", "   hello"),
    ("tabs", "\t\ta\t b \t"),
    ("newlines", "\n\n\n"),
    ("spaces and newlines", "a   \n  b \n\n   c"),
    ("crlf", "line1\r\nline2\r\n\r\nline3"),
    ("cr alone", "a\rb\r\r\nc"),
    ("unicode spaces", "a\u00a0b\u3000c\u2003d\u2028e\u0085f"),
    ("mongolian vowel separator", "a\u180e!b \u180e\u180e."),
    # Unicode whitespace must count as \s: these split differently if it did not.
    ("ideographic spaces", "\u3000\u3000\u3000x \u3000!"),
    ("nbsp before punctuation", "\u00a0! a\u00a0\u00a0\u00a0b \u2003\u2003."),
    ("next line and separators", "a\u0085\u0085b x\u2028\u2028y\u2029!"),
    ("zero width", "a\u200bb\u200dc\ufeffd"),
    ("very long word", "supercalifragilisticexpialidocious" * 30),
    ("long letter run", "a" * 1000),
    ("long digit run", "7" * 500),
    ("long space run", " " * 300 + "x"),
    ("long punctuation", "=" * 200 + "\n" + "-" * 77),
    ("contractions", "I'm you're he's they've we'll I'd don't it's"),
    ("contractions upper", "I'M YOU'RE HE'S THEY'VE WE'LL I'D DON'T"),
    ("contraction long s", "it'\u017f"),
    ("apostrophe words", "'hello' 'twas rock'n'roll"),
    ("punctuation", "!!!???... ,;: ()[]{} --- ``` \"quoted\""),
    ("url email", "https://example.com/a/b?c=1&d=2#x user@example.org"),
    ("nul and controls", "a\u0000b\u0001\u0002\u007f c"),
    ("math", "\u2200x\u2208\u211d: x\u00b2 \u2265 0, \u222b f(x) dx"),
]

QWEN_CASES = COMMON_CASES + [
    ("chatml", CHATML),
    ("chatml generation", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("tool call", "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"),
    ("tool response", "<tool_response>\n42\n</tool_response>"),
    ("think", "<think>\nLet me think.\n</think>\n\nThe answer is 4."),
    ("adjacent specials", "<|im_end|><|im_start|><|im_start|>"),
    ("partial specials", "<|im_start <|im_end |> <|IM_END|> <|im_start|"),
    ("special inside word", "abc<|endoftext|>def"),
    ("fim", "<|fim_prefix|>def f():\n    <|fim_suffix|>\n<|fim_middle|>"),
    ("vision", "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>Describe."),
]

GLM_CASES = COMMON_CASES + [
    ("glm digits", "1234567 12 345 6789 0000 999999 3141592"),
    ("glm digits in words", "abc123def 2024-01-02 v1.2.3"),
    ("glm chat", "[gMASK]<sop><|system|>\nYou are GLM.<|user|>\nhi<|assistant|>\n<think></think>"),
    ("glm observation", "<|observation|>\n{\"ok\": true}<|assistant|>"),
    ("lstrip token", "hello   <mask> world"),
    ("lstrip at start", "  <mask>x"),
    ("rstrip token", "a<sep>   b<sep>\n\nc"),
    ("single word ok", "use <word> here"),
    ("single word rejected", "x<word> <word>y a<word>b"),
    ("normalized token", "caf\u00e9 cafe\u0301 CAF\u00c9"),
    ("mask then sep", "a <mask><sep> b"),
]

SPLIT_SPECIAL_CASES = {
    "qwen3": [("split special chatml", CHATML),
              ("split special keeps non-special", "<|im_start|>x<think>y</think>")],
    "glm": [("split special glm", "[gMASK]<sop><|user|>hi<think>x</think>")],
}

ADD_SPECIAL_CASES = {
    "qwen3": [("add special qwen", "Hello")],
    "glm": [("add special glm", "Hello world"), ("add special empty", "")],
}

INVALID_UTF8 = [
    ("invalid lone ff", b"abc\xffdef"),
    ("invalid truncated", b"\xe4\xb8"),
    ("invalid truncated middle", b"ok\xe4\xb8 ok"),
    ("invalid surrogate", b"a\xed\xa0\x80b"),
    ("invalid overlong", b"\xc0\xaf\xe0\x80\xaf"),
    ("invalid above max", b"\xf4\x90\x80\x80"),
    ("invalid continuation run", b"\x80\x81\x82 x"),
    ("invalid mixed", b"\xe4\xb8\xad\xe6\x96\x87\xff\xe6\x96"),
]


def decode_cases(ref):
    """Id sequences whose decoding pins down added tokens and broken UTF-8."""
    v = ref.vocab
    byte_id = {b: v[BYTE_TO_CHAR[b]] for b in range(256)}
    text_ids = ref.encode("Hi 世界")
    specials = sorted(ref.special_ids)[:2]
    plain_added = sorted(ref.added_ids - ref.special_ids)[:1]
    return [
        ("decode text", text_ids),
        ("decode specials", specials + text_ids + plain_added + specials[:1]),
        ("decode split character", [byte_id[0xE4], byte_id[0xB8], byte_id[0xAD]]),
        ("decode truncated character", [byte_id[0x61], byte_id[0xE4], byte_id[0xB8]]),
        ("decode lone continuation", [byte_id[0x80], byte_id[0x61]]),
        ("decode partial before added", [byte_id[0xE4], byte_id[0xB8]] + plain_added),
        ("decode partial around skipped special", [byte_id[0xE4], byte_id[0xB8]] + specials[:1]
         + [byte_id[0xAD]]),
    ]


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def load_hf(path):
    try:
        from tokenizers import Tokenizer
        import tokenizers
    except ImportError:
        return None, None
    return Tokenizer.from_file(path), "huggingface tokenizers " + tokenizers.__version__


def hf_encode(tok, text, add_special, split_special):
    if split_special:
        if not hasattr(tok, "encode_special_tokens"):
            return None
        tok.encode_special_tokens = True
    try:
        return tok.encode(text, add_special_tokens=add_special).ids
    finally:
        if split_special:
            tok.encode_special_tokens = False


def record(ref, hf, name, text, add_special=False, split_special=False, disagreements=None):
    ours = ref.encode(text, add_special, split_special)
    if hf is None:
        return ours
    theirs = hf_encode(hf, text, add_special, split_special)
    if theirs is not None and theirs != ours and disagreements is not None:
        disagreements.append(name)
    return theirs


def build_fixture(ref, hf, generator, tokenizer_path, key, cases, disagreements):
    out = {"generator": generator, "tokenizer": tokenizer_path, "cases": [], "decode_cases": []}
    for name, text in cases:
        out["cases"].append({"name": name, "text": text,
                             "ids": record(ref, hf, name, text, disagreements=disagreements)})
    for name, text in ADD_SPECIAL_CASES[key]:
        out["cases"].append({"name": name, "text": text, "add_special_tokens": True,
                             "ids": record(ref, hf, name, text, add_special=True,
                                           disagreements=disagreements)})
    for name, text in SPLIT_SPECIAL_CASES[key]:
        ids = record(ref, hf, name, text, split_special=True, disagreements=disagreements)
        if ids is not None:
            out["cases"].append({"name": name, "text": text, "split_special_tokens": True,
                                 "ids": ids})
    for name, raw in INVALID_UTF8:
        text = raw.decode("utf-8", errors="replace")
        out["cases"].append({"name": name, "bytes_hex": raw.hex(), "replace_invalid_utf8": True,
                             "ids": record(ref, hf, name, text, disagreements=disagreements)})
    for name, ids in decode_cases(ref):
        for skip in (False, True):
            ours = ref.decode(ids, skip)
            text = hf.decode(ids, skip_special_tokens=skip) if hf is not None else ours
            if text != ours:
                disagreements.append(name + (" (skip special)" if skip else ""))
            out["decode_cases"].append({"name": name, "ids": ids, "skip_special_tokens": skip,
                                        "text": text})
    return out


def write_json(path, data):
    """ASCII JSON; each element of a top-level list on one line, so diffs stay readable."""
    lines = ["{"]
    for k, (key, value) in enumerate(data.items()):
        comma = "," if k + 1 < len(data) else ""
        if isinstance(value, list):
            items = [json.dumps(item, ensure_ascii=True) for item in value]
            body = ",\n".join("  " + item for item in items)
            lines.append(f" {json.dumps(key)}: [\n{body}\n ]{comma}" if items
                         else f" {json.dumps(key)}: []{comma}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=True)}{comma}")
    lines.append("}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def self_test(shared):
    ref = Reference(json.load(open(os.path.join(shared, QWEN_TOKENIZER), encoding="utf-8")))
    texts = open(os.path.join(shared, GGML_TESTS + ".inp"), encoding="utf-8").read()
    texts = texts.split("\n__ggml_vocab_test__\n")[:-1]
    expected = open(os.path.join(shared, GGML_TESTS + ".out"), encoding="utf-8").read()
    expected = expected.split("\n")[:len(texts)]
    bad = 0
    for text, line in zip(texts, expected):
        ids = [int(x) for x in line.split()]
        if ref.encode(text) != ids:
            bad += 1
            print("MISMATCH", repr(text))
    print(f"{len(texts) - bad}/{len(texts)} llama.cpp vectors match")
    return 1 if bad else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default="../shared", help="the shared folder (has models/)")
    parser.add_argument("--pure-python", action="store_true",
                        help="record the pure-Python reference's ids (no `tokenizers` needed)")
    parser.add_argument("--self-test", action="store_true",
                        help="check the pure-Python reference against the llama.cpp vectors")
    args = parser.parse_args()
    if args.self_test:
        return self_test(args.shared)

    qwen_path = os.path.join(args.shared, QWEN_TOKENIZER)
    qwen = json.load(open(qwen_path, encoding="utf-8"))
    os.makedirs(FIXTURE_DIR, exist_ok=True)
    with open(GLM_TOKENIZER, "w", encoding="utf-8") as f:
        json.dump(build_glm_tokenizer(qwen), f, indent=1, ensure_ascii=True)
        f.write("\n")

    disagreements = []
    jobs = [("qwen3", qwen_path, QWEN_TOKENIZER, QWEN_CASES, "qwen3_reference.json"),
            ("glm", GLM_TOKENIZER, "repo:" + GLM_TOKENIZER, GLM_CASES,
             "glm_pattern_reference.json")]
    for key, path, recorded_path, cases, output in jobs:
        ref = Reference(json.load(open(path, encoding="utf-8")))
        hf, generator = (None, None) if args.pure_python else load_hf(path)
        if hf is None:
            if not args.pure_python:
                sys.exit("the `tokenizers` package is not installed; pass --pure-python to "
                         "record the pure-Python reference instead")
            generator = "pure-python reference (tools/make_tokenizer_fixtures.py)"
        fixture = build_fixture(ref, hf, generator, recorded_path, key, cases, disagreements)
        write_json(os.path.join(FIXTURE_DIR, output), fixture)
        print(f"wrote {FIXTURE_DIR}/{output}: {len(fixture['cases'])} cases, "
              f"{len(fixture['decode_cases'])} decode cases ({generator})")
    if disagreements:
        print("the pure-Python reference disagrees with `tokenizers` on:", file=sys.stderr)
        for name in disagreements:
            print("  " + name, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
