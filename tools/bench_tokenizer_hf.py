#!/usr/bin/env python3
"""Hugging Face `tokenizers` encode throughput, measured like benchmarks/bench_tokenizer.c:
the whole text file is encoded in one Tokenizer.encode(text, add_special_tokens=False) call,
single-threaded (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false; pin the process to one
core with taskset as well):
  first   the very first call on the freshly loaded tokenizer (its word cache empty)
  warm-up W more calls (not reported)
  timed   N calls; best and median reported
MB/s counts input bytes (the file's UTF-8 bytes), MB = 10^6 bytes. The file is read as bytes
and decoded as UTF-8, so \\r\\n stays as it is.

  python3 tools/bench_tokenizer_hf.py [-n N] [-w W] [--compare IDS_JSON] [--json] \\
      TOKENIZER_JSON TEXT_FILE
--compare reads the ids bench_tokenizer wrote with --ids-out and checks they are identical
(exit status 1 when they are not, with the first differing position).
"""
import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import tokenizers  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tokenizer")
    parser.add_argument("text")
    parser.add_argument("-n", type=int, default=5, help="timed encodes (default 5)")
    parser.add_argument("-w", type=int, default=1, help="warm-up encodes (default 1)")
    parser.add_argument("--compare", help="ids JSON written by bench_tokenizer --ids-out")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--label", help="name of the input (default: the file name)")
    args = parser.parse_args()
    label = args.label or os.path.basename(args.text)

    data = open(args.text, "rb").read()
    text = data.decode("utf-8")

    t0 = time.perf_counter()
    tok = tokenizers.Tokenizer.from_file(args.tokenizer)
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    first = tok.encode(text, add_special_tokens=False).ids
    first_s = time.perf_counter() - t0

    times = []
    for r in range(args.w + args.n):
        t0 = time.perf_counter()
        enc = tok.encode(text, add_special_tokens=False)
        dt = time.perf_counter() - t0
        if r == 0 and enc.ids != first:
            sys.exit("bench_tokenizer_hf: a later call gave other ids than the first call")
        if r >= args.w:
            times.append(dt)
    best, median = min(times), statistics.median(times)
    mb = len(data) / 1e6
    result = {"impl": "hf-tokenizers " + tokenizers.__version__, "input": label,
              "bytes": len(data), "tokens": len(first), "load_s": round(load_s, 4),
              "first_s": round(first_s, 6), "best_s": round(best, 6),
              "median_s": round(median, 6), "runs": args.n,
              "first_mb_s": round(mb / first_s, 2), "best_mb_s": round(mb / best, 2),
              "median_mb_s": round(mb / median, 2)}

    rc = 0
    if args.compare:
        ours = json.load(open(args.compare))
        if ours == first:
            result["ids_match"] = True
        else:
            rc = 1
            result["ids_match"] = False
            n = min(len(ours), len(first))
            i = next((k for k in range(n) if ours[k] != first[k]), n)
            print(f"bench_tokenizer_hf: {label}: ids differ: pio {len(ours)} ids, HF {len(first)}; "
                  f"first difference at {i}: pio {ours[i:i + 8]} HF {first[i:i + 8]}",
                  file=sys.stderr)

    if args.json:
        print(json.dumps(result))
    else:
        match = {True: "  ids identical", False: "  IDS DIFFER"}.get(result.get("ids_match"), "")
        print(f"hf   {label:<12} {len(data):9d} bytes {len(first):8d} tokens  load {load_s:.3f} s  "
              f"first {mb / first_s:8.2f} MB/s  best of {args.n} {mb / best:8.2f} MB/s  "
              f"median {mb / median:8.2f} MB/s  (tokenizers {tokenizers.__version__}){match}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
