#!/usr/bin/env python3
"""Writes deterministic benchmark text for the tokenizer benchmark (benchmarks/bench_tokenizer.c,
tools/bench_tokenizer_hf.py). Standard library only; the same seed and size give the same bytes
on any machine and Python 3 version (random.Random's integer and choice methods are stable).

Kinds:
  mixed    (default) blocks of English prose-like text, C code, Python code, Chinese, Japanese
           and Korean text, emoji (with skin tones, ZWJ sequences and flags), numbers, dates and
           hex, whitespace runs (spaces, tabs, blank lines), Markdown/JSON, accented Latin and a
           few chat special tokens (<|im_start|> ...), in random order
  digits   one run of decimal digits (no separators): the hostile input for a per-digit split
  letter   one run of the letter 'a': one pre-token of SIZE bytes, the hostile input for BPE
  spaces   one run of spaces with a single word at the end: the hostile input for \\s+(?!\\S)

Usage:
  python3 tools/make_bench_text.py OUT_FILE [--kind mixed] [--size-mb 4] [--seed 20251126]
The file is exactly --size-mb * 2**20 bytes for the single-run kinds; for mixed it is the
whole blocks that reach that size (a few hundred bytes more at most), always valid UTF-8.
"""
import argparse
import random
import sys

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "more can said what some up about into out them time only other new could than then these "
    "two may first any like now my such make over our even most me state after also made many "
    "did must before back see through way where get much go well your know should down work year "
    "because come people just say each those take day good how long little use very great world "
    "model token inference engine kernel memory cache attention layer tensor weight matrix batch "
    "throughput latency gradient vector sequence prompt decoder encoder sampling temperature "
    "probability distribution language benchmark performance hardware parallel thread process "
    "question answer however although therefore meanwhile nevertheless furthermore consequently "
    "internationalization misunderstanding characteristically straightforward counterintuitive "
    "don't it's we're they've I'm you'll she'd isn't can't won't shouldn't").split()

NAMES = "Alice Bob Carol Dave Eve Mallory Trent Peggy Victor Walter Tokyo Paris Berlin Nairobi " \
        "Lima Oslo Qwen Linux CUDA Python GitHub Monday January NVIDIA PyTorch".split()

ACCENTED = ("café naïve résumé coöperate façade São Paulo Zürich Ångström Dvořák Łódź "
            "piñata jalapeño Ærøskøbing smörgåsbord crème brûlée Straße Ελληνικά Русский язык "
            "українська мова עברית العربية हिन्दी ภาษาไทย Tiếng Việt").split()

CHINESE = ("我们 今天 天气 很好 模型 推理 引擎 的 了 是 在 有 和 人 这 中 大 为 上 个 国 我 以 要 他 时 来 "
           "用 们 生 到 作 地 于 出 就 分 对 成 会 可 主 发 年 动 同 工 也 能 下 过 子 说 产 种 面 而 方 "
           "后 多 定 行 学 法 所 民 得 经 十 三 之 进 着 等 部 度 家 电 力 里 如 水 化 高 自 二 理 起 小 "
           "物 现 实 加 量 都 两 体 制 机 当 使 点 从 业 本 去 把 性 好 应 开 它 合 还 因 由 其 些 然 前 "
           "外 天 政 四 日 那 社 义 事 平 形 相 全 表 间 样 与 关 各 重 新 线 内 数 正 心 反 你 明 看 原 "
           "又 么 利 比 或 但 质 气 第 向 道 命 此 变 条 只 没 结 解 问 意 建 月 公 无 系 军 很 情 者 最 "
           "计算机 人工智能 深度学习 自然语言处理 分词器 吞吐量 延迟 显卡 内存 缓存").split()
CJK_PUNCT = "，。、；：？！“”（）《》【】"
JAPANESE = ("これは 日本語の 文章 です。 トークナイザー の ベンチマーク を 行います。 東京 大阪 "
            "ひらがな カタカナ 漢字 ありがとう ございます すみません よろしく お願いします 今日は "
            "いい天気ですね 機械学習 モデル 推論 エンジン").split()
KOREAN = ("안녕하세요 한국어 문장 입니다 토크나이저 벤치마크 를 실행합니다 서울 부산 감사합니다 "
          "인공지능 모델 추론 엔진 메모리 캐시 오늘 날씨가 좋네요").split()

EMOJI = ["😀", "😂", "🥲", "😍", "🤔", "🙈", "🚀", "🔥", "✨", "🎉", "👍", "👍🏽", "👋🏿", "❤️",
         "🧑‍💻", "👩‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸", "🇩🇪", "🐍", "🦀", "☕", "🍣", "⚡", "✅", "❌",
         "⭐", "🌍", "🤖", "💡", "📈"]

C_TYPES = ["int", "size_t", "float", "double", "uint8_t", "int32_t", "char *", "const char *",
           "void *", "struct node *", "pio_status", "bool"]
IDENTS = ["buf", "len", "count", "ids", "tokenizer", "ctx", "node", "next", "value", "key",
          "hidden", "n_heads", "head_dim", "scale", "offset", "stride", "out", "err", "i", "j"]


def prose(rng):
    sentences = []
    for _ in range(rng.randint(3, 9)):
        words = []
        for k in range(rng.randint(5, 22)):
            r = rng.random()
            if r < 0.06:
                words.append(rng.choice(NAMES))
            elif r < 0.08:
                words.append(str(rng.randint(0, 99999)))
            else:
                words.append(rng.choice(WORDS))
        s = " ".join(words)
        s = s[0].upper() + s[1:]
        if rng.random() < 0.2:
            cut = rng.randint(1, len(words) - 1) if len(words) > 1 else 1
            s = " ".join(s.split(" ")[:cut]) + ", " + " ".join(s.split(" ")[cut:])
        if rng.random() < 0.1:
            s = f'"{s}," said {rng.choice(NAMES)}'
        sentences.append(s + rng.choice([".", ".", ".", "?", "!", "...", ";"]))
    return " ".join(sentences) + "\n\n"


def c_code(rng):
    fn = rng.choice(IDENTS) + "_" + rng.choice(["init", "free", "encode", "step", "apply"])
    args = ", ".join(f"{rng.choice(C_TYPES)} {rng.choice(IDENTS)}"
                     for _ in range(rng.randint(1, 4)))
    lines = [f"/* {rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(WORDS)}. */",
             f"static {rng.choice(C_TYPES)} {fn}({args})", "{"]
    for _ in range(rng.randint(3, 12)):
        a, b = rng.choice(IDENTS), rng.choice(IDENTS)
        kind = rng.randint(0, 5)
        if kind == 0:
            lines.append(f"    for (size_t {a} = 0; {a} < {b}; {a}++) {{")
            lines.append(f"        {b}[{a}] += 0x{rng.randint(0, 0xFFFF):04x}u * {a};")
            lines.append("    }")
        elif kind == 1:
            lines.append(f"    if ({a} == NULL || {b} >= {rng.randint(1, 4096)}) "
                         f"return PIO_ERR_INVALID_ARGUMENT;")
        elif kind == 2:
            lines.append(f'    fprintf(stderr, "{rng.choice(WORDS)}: %zu\\n", {a});')
        elif kind == 3:
            lines.append(f"    {a} = ({b} << {rng.randint(1, 16)}) ^ {a}->{rng.choice(IDENTS)};")
        elif kind == 4:
            lines.append(f"    memcpy({a}, {b}, sizeof(*{a}) * {rng.randint(2, 512)});")
        else:
            lines.append(f"    {rng.choice(C_TYPES)} {a} = {rng.uniform(-10, 10):.6f}f;  "
                         f"// {rng.choice(WORDS)}")
    lines.append("    return 0;\n}\n\n")
    return "\n".join(lines)


def python_code(rng):
    fn = rng.choice(IDENTS) + "_" + rng.choice(["load", "save", "forward", "run", "check"])
    lines = [f"def {fn}({', '.join(rng.sample(IDENTS, rng.randint(1, 4)))}):",
             f'    """{rng.choice(WORDS).capitalize()} the {rng.choice(WORDS)}."""']
    indent = "    "
    for _ in range(rng.randint(3, 12)):
        a, b = rng.choice(IDENTS), rng.choice(IDENTS)
        kind = rng.randint(0, 5)
        if kind == 0:
            lines.append(f"{indent}for {a} in range(len({b})):")
            lines.append(f"{indent}    {b}[{a}] = {b}[{a}] * {rng.randint(2, 99)} + {a}")
        elif kind == 1:
            lines.append(f"{indent}if {a} is None or {b} > {rng.randint(0, 1000)}:")
            lines.append(f"{indent}    raise ValueError(f\"{rng.choice(WORDS)}: {{{a}!r}}\")")
        elif kind == 2:
            lines.append(f"{indent}{a} = [{', '.join(str(rng.randint(0, 999)) for _ in range(rng.randint(2, 8)))}]")
        elif kind == 3:
            lines.append(f"{indent}{a} = {{'{rng.choice(IDENTS)}': {b}, '{rng.choice(WORDS)}': "
                         f"{rng.random():.4f}}}")
        elif kind == 4:
            lines.append(f"{indent}with open({a!r}, 'rb') as f:")
            lines.append(f"{indent}    {b} = f.read()  # {rng.choice(WORDS)} {rng.choice(WORDS)}")
        else:
            lines.append(f"{indent}print({a}, {b}, sep='\\t', end='')")
    lines.append(f"{indent}return {rng.choice(IDENTS)}\n\n")
    return "\n".join(lines)


def cjk(rng):
    out = []
    lang = rng.randint(0, 2)
    for _ in range(rng.randint(20, 80)):
        if lang == 0:
            out.append(rng.choice(CHINESE))
            if rng.random() < 0.15:
                out.append(rng.choice(CJK_PUNCT))
        elif lang == 1:
            out.append(rng.choice(JAPANESE))
            if rng.random() < 0.1:
                out.append("、")
        else:
            out.append(rng.choice(KOREAN) + (" " if rng.random() < 0.8 else ". "))
    return "".join(out) + ("。\n" if lang < 2 else "\n")


def emoji(rng):
    parts = []
    for _ in range(rng.randint(5, 25)):
        r = rng.random()
        if r < 0.5:
            parts.append(rng.choice(EMOJI) * rng.randint(1, 3))
        elif r < 0.8:
            parts.append(rng.choice(WORDS))
        else:
            parts.append(rng.choice(CHINESE))
    return " ".join(parts) + "\n"


def numbers(rng):
    parts = []
    for _ in range(rng.randint(5, 20)):
        k = rng.randint(0, 6)
        if k == 0:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 18))))
        elif k == 1:
            parts.append(f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 8)}f}")
        elif k == 2:
            parts.append(f"{rng.randint(1970, 2099)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
                         f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z")
        elif k == 3:
            parts.append(f"0x{rng.getrandbits(64):016X}")
        elif k == 4:
            parts.append(f"+1 ({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(0, 9999):04d}")
        elif k == 5:
            parts.append(f"{rng.randint(1, 999)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}.{rng.randint(0, 99):02d}")
        else:
            parts.append(f"{rng.uniform(0, 100):.1f}%")
    return " ".join(parts) + "\n"


def whitespace(rng):
    out = []
    for _ in range(rng.randint(3, 12)):
        k = rng.randint(0, 4)
        if k == 0:
            out.append(" " * rng.randint(2, 200))
        elif k == 1:
            out.append("\t" * rng.randint(1, 20))
        elif k == 2:
            out.append("\n" * rng.randint(2, 12))
        elif k == 3:
            out.append(rng.choice(["\r\n", " \n ", "\u3000", "\u00a0 ", "\t \t\n"]) * rng.randint(1, 10))
        else:
            out.append(rng.choice(WORDS))
    return "".join(out) + "\n"


def markup(rng):
    k = rng.randint(0, 3)
    if k == 0:
        items = ", ".join(f'"{rng.choice(IDENTS)}": {rng.choice([str(rng.randint(0, 999)), "true", "null", repr(rng.choice(WORDS)).replace(chr(39), chr(34))])}'
                          for _ in range(rng.randint(2, 8)))
        return "{" + items + "}\n"
    if k == 1:
        return (f"## {rng.choice(WORDS).capitalize()} {rng.choice(WORDS)}\n\n"
                + "".join(f"- **{rng.choice(WORDS)}**: `{rng.choice(IDENTS)}()` {rng.choice(WORDS)}\n"
                          for _ in range(rng.randint(2, 6))) + "\n")
    if k == 2:
        return " ".join(rng.choice(ACCENTED) for _ in range(rng.randint(5, 20))) + "\n"
    return (f"<|im_start|>user\n{prose(rng).strip()}<|im_end|>\n"
            f"<|im_start|>assistant\n{prose(rng).strip()}<|im_end|>\n")


BLOCKS = [(prose, 30), (c_code, 14), (python_code, 14), (cjk, 12), (emoji, 6), (numbers, 8),
          (whitespace, 6), (markup, 10)]


def mixed(size, seed):
    rng = random.Random(seed)
    funcs = [f for f, w in BLOCKS for _ in range(w)]
    out, total = [], 0
    while total < size:
        block = rng.choice(funcs)(rng).encode("utf-8")
        out.append(block)
        total += len(block)
    return b"".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--kind", choices=["mixed", "digits", "letter", "spaces"], default="mixed")
    parser.add_argument("--size-mb", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=20251126)
    args = parser.parse_args()
    size = int(args.size_mb * (1 << 20))
    if args.kind == "mixed":
        data = mixed(size, args.seed)
    elif args.kind == "digits":
        rng = random.Random(args.seed)
        data = "".join(rng.choice("0123456789") for _ in range(size)).encode()
    elif args.kind == "letter":
        data = b"a" * size
    else:
        data = b" " * (size - 5) + b"word\n"
    with open(args.out, "wb") as f:
        f.write(data)
    print(f"{args.out}: {len(data)} bytes ({args.kind}, seed {args.seed})", file=sys.stderr)


if __name__ == "__main__":
    main()
