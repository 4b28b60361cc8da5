#!/usr/bin/env python3
"""transformers on the same random model `pio bench` runs (load_format dummy), for the side-by-side
rows of docs/BENCHMARKS.md: the model is built from a config.json with random weights, in bf16 on
one CUDA device, attention "sdpa", and timed like pio bench's tests:
  ppN    one forward over N tokens of a fresh sequence (use_cache off), after one warm-up
  tgN    N greedy decode steps of one sequence after a 4-token prompt: model.generate with
         min_new_tokens = max_new_tokens = N, EOS ignored; the prompt's forward is timed alone
         and subtracted. --cache static uses transformers' StaticCache (compiled-graph friendly,
         as its docs advise for decoding speed); dynamic is the default cache.
Each test runs once to warm up, then -r times; the mean and standard deviation are printed, as
tokens/s. torch.cuda.synchronize() brackets every timed region.

  python3 tools/bench_transformers.py CONFIG_DIR [-p 512,2048] [-n 128] [-r 3]
      [--cache dynamic|static] [--json]
"""
import argparse
import json
import statistics
import time

import torch
import transformers


def timed(fn, reps):
    fn()  # warm-up
    seconds = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def rate(tokens, seconds):
    values = [tokens / s for s in seconds]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config_dir")
    parser.add_argument("-p", default="512,2048", help="prompt lengths of the ppN tests")
    parser.add_argument("-n", type=int, default=128, help="decode steps of tgN")
    parser.add_argument("-r", type=int, default=3, help="repetitions")
    parser.add_argument("--cache", choices=["dynamic", "static"], default="static")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = transformers.AutoConfig.from_pretrained(args.config_dir)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(
            config, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    vocab = config.vocab_size
    results = {"transformers": transformers.__version__, "torch": torch.__version__,
               "device": torch.cuda.get_device_name(), "cache": args.cache, "tests": {}}

    with torch.inference_mode():
        for n in [int(v) for v in args.p.split(",") if v]:
            ids = (1000 + 7919 * torch.arange(n, device="cuda")) % vocab
            ids = ids.unsqueeze(0)
            seconds = timed(lambda: model(ids, use_cache=False), args.r)
            results["tests"][f"pp{n}"] = rate(n, seconds)

        prompt = ((1000 + 7919 * torch.arange(4, device="cuda")) % vocab).unsqueeze(0)
        generate = dict(do_sample=False, max_new_tokens=args.n, min_new_tokens=args.n,
                        cache_implementation=args.cache if args.cache == "static" else None,
                        pad_token_id=0)
        prefill = statistics.mean(timed(
            lambda: model.generate(prompt, **dict(generate, max_new_tokens=1,
                                                  min_new_tokens=1)), args.r))
        seconds = timed(lambda: model.generate(prompt, **generate), args.r)
        decode = [max(s - prefill, 1e-9) for s in seconds]
        results["tests"][f"tg{args.n}"] = rate(args.n - 1, decode)

    if args.json:
        print(json.dumps(results))
        return
    print(f"transformers {results['transformers']}, torch {results['torch']}, "
          f"{results['device']}, {args.cache} cache")
    for name, (mean, stdev) in results["tests"].items():
        print(f"{name:>8}  {mean:12.2f} ± {stdev:.2f} tok/s")


if __name__ == "__main__":
    main()
