#!/usr/bin/env python3
"""Builds tiny random-weight models with Hugging Face transformers (the reference
implementation) and records their reference outputs, as test fixtures for our C engine.

For each fixture it writes OUT/<name>/:
  config.json, generation_config.json, model.safetensors   (bf16 weights, as the real models)
  tokenizer.json, tokenizer_config.json   a tiny byte-level BPE tokenizer (1000 tokens + ChatML
                   specials at 1000..1002) trained here with Qwen3's pre-tokenizer and the
                   Qwen3 chat template, so the whole text path can be checked
  reference.json   input sequences, greedy continuations, settings
  logits_f32.npy   float32 logits of every position of every sequence, computed in float32
                   from the bf16 weights (our CPU engine must match these closely)
  logits_bf16.npy  the same computed by the model in bfloat16 (for bf16 tolerance checks)

Run it where transformers and torch are installed (the GPU machine):
  python3 tools/make_model_fixtures.py OUT_DIR --shared SHARED_DIR [--only NAME]
SHARED_DIR holds models/qwen3_4b_instruct_2507/{tokenizer.json,chat_template.jinja}.
"""
import argparse
import json
import os

import numpy as np
import tokenizers
import torch
import transformers

SEED = 1234


def perturb_norm_weights(model, generator):
    """HF initialises RMSNorm weights to ones; make them differ so a test sees them applied."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))


def qwen3_dense():
    config = transformers.Qwen3Config(
        vocab_size=1024, hidden_size=96, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
        rms_norm_eps=1e-6, rope_theta=5000000.0, tie_word_embeddings=True,
        initializer_range=0.08, bos_token_id=1000, eos_token_id=1002, pad_token_id=1000,
        attention_bias=False, use_sliding_window=False,
    )
    config.architectures = ["Qwen3ForCausalLM"]
    return config, transformers.Qwen3ForCausalLM


def qwen3_moe(tie_router=False):
    config = transformers.Qwen3MoeConfig(
        vocab_size=1024, hidden_size=80, intermediate_size=192, moe_intermediate_size=48,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, head_dim=24,
        num_experts=12, num_experts_per_tok=3, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_theta=10000000.0, tie_word_embeddings=False, initializer_range=0.08,
        bos_token_id=1000, eos_token_id=1002, output_router_logits=False,
    )
    config.architectures = ["Qwen3MoeForCausalLM"]
    return config, transformers.Qwen3MoeForCausalLM


def make_router_ties(model):
    """Near-ties in every layer's router: expert 5 is expert 2 with one weight moved by one bf16
    step, expert 7 is expert 0 scaled by 1.001 (after bf16 rounding, 13 of 80 weights differ).
    Their router logits then differ by far more than float32 rounding, so the selection is
    well defined and ours must equal the reference's. (Exact ties are not used: torch.topk on
    the CPU orders equal values in no fixed way; seen with transformers 5.17 / torch 2.11:
    expert 5 before 2 at one token, 2 before 5 at another.)"""
    with torch.no_grad():
        for layer in model.model.layers:
            gate = layer.mlp.gate.weight
            gate[5].copy_(gate[2])
            gate[5][0] = gate[2][0] * (1.0 + 2.0 ** -6)
            gate[7].copy_(gate[0] * (1.0 + 1e-3))


FIXTURES = {
    "qwen3_tiny": (qwen3_dense, None),
    "qwen3_moe_tiny": (qwen3_moe, None),
    "qwen3_moe_router_ties": (qwen3_moe, make_router_ties),
}

SEQUENCES = [
    [1000, 17, 923, 4, 511, 88, 1002],
    [5, 900, 33, 33, 33, 641, 7, 250, 1019, 64, 2, 999, 128, 300, 301, 302, 17, 18, 19, 511,
     700, 12, 1],
    [42],
]
GREEDY_NEW_TOKENS = 32
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12 plus 30? Answer in one word."},
]


def training_corpus():
    """Deterministic text: made-up words of random syllables (so there is plenty for BPE to
    merge), a few real words, numbers, arithmetic and small code lines."""
    rng = np.random.default_rng(SEED)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    real = "the of and to is answer plus minus question model token hello world".split()

    def word():
        if rng.random() < 0.3:
            return real[int(rng.integers(0, len(real)))]
        return "".join(syllables[int(j)] for j in rng.integers(0, len(syllables),
                                                               int(rng.integers(1, 4))))

    lines = []
    for i in range(6000):
        sentence = " ".join(word() for _ in range(int(rng.integers(4, 14))))
        lines.append(f"{sentence.capitalize()}, {int(rng.integers(0, 10000))} + {i % 97} = ?")
        lines.append(f"def {word()}_{i % 50}(x):\n    return x * {i % 13}  # {word()}")
    return lines


def make_tokenizer(shared_dir, path):
    """Trains a 1000-token byte-level BPE with Qwen3's split regex; specials follow at 1000."""
    qwen = json.load(open(os.path.join(shared_dir, "models/qwen3_4b_instruct_2507/tokenizer.json")))
    pattern = qwen["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.normalizer = tokenizers.normalizers.NFC()
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated", invert=False),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=1000, show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_corpus(), trainer)
    assert tok.get_vocab_size() == 1000, tok.get_vocab_size()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                            for t in SPECIAL_TOKENS])
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [1000, 1001, 1002]
    template = open(os.path.join(shared_dir,
                                 "models/qwen3_4b_instruct_2507/chat_template.jinja")).read()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=template)
    fast.save_pretrained(path)
    return fast


def load_reference(model_class, path, dtype, device):
    return model_class.from_pretrained(path, dtype=dtype,
                                       attn_implementation="eager").to(device).eval()


def logits_of(model, sequences):
    rows = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq], device=model.device)
            rows.append(model(input_ids=ids).logits[0].float().cpu().numpy())
    return np.concatenate(rows, axis=0)


def greedy(model, sequences):
    out = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq], device=model.device)
            gen = model.generate(input_ids=ids, max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False,
                                 eos_token_id=None, pad_token_id=0,
                                 attention_mask=torch.ones_like(ids))
            out.append(gen[0, len(seq):].tolist())
    return out


def chat_reference(model, tokenizer):
    """The chat prompt rendered by transformers, and the greedy reply until <|im_end|>."""
    prompt_ids = tokenizer.apply_chat_template(CHAT_MESSAGES, add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
        prompt_ids = prompt_ids["input_ids"]
    ids = torch.tensor([prompt_ids], device=model.device)
    with torch.no_grad():
        gen = model.generate(input_ids=ids, max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False,
                             eos_token_id=[1002, 1000], pad_token_id=1000,
                             attention_mask=torch.ones_like(ids))
    reply = gen[0, len(prompt_ids):].tolist()
    return {
        "messages": CHAT_MESSAGES,
        "prompt_text": tokenizer.apply_chat_template(CHAT_MESSAGES, add_generation_prompt=True,
                                                     tokenize=False),
        "prompt_ids": list(prompt_ids),
        "reply_ids": reply,
        "reply_text": tokenizer.decode(reply, skip_special_tokens=True),
        "max_new_tokens": GREEDY_NEW_TOKENS,
    }


def build(name, out_dir, device, shared_dir):
    make_config, post = FIXTURES[name]
    config, model_class = make_config()
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED + 1)
    model = model_class(config).eval()
    perturb_norm_weights(model, generator)
    if post is not None:
        post(model)
    # Round every weight to bf16 once; the fp32 reference then runs on exactly those values.
    model = model.to(torch.bfloat16)
    path = os.path.join(out_dir, name)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    model.generation_config.save_pretrained(path)
    tokenizer = make_tokenizer(shared_dir, path)

    # The references load the saved folder, as a user would. Converting the in-memory model
    # with .to(bfloat16) would also round the rotary inv_freq buffer, which from_pretrained
    # keeps in float32.
    model_f32 = load_reference(model_class, path, torch.float32, device)
    np.save(os.path.join(path, "logits_f32.npy"), logits_of(model_f32, SEQUENCES))
    continuations = greedy(model_f32, SEQUENCES)
    chat = chat_reference(model_f32, tokenizer)
    model_bf16 = load_reference(model_class, path, torch.bfloat16, device)
    np.save(os.path.join(path, "logits_bf16.npy"), logits_of(model_bf16, SEQUENCES))
    reference = {
        "generator": "tools/make_model_fixtures.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seed": SEED,
        "sequences": SEQUENCES,
        "rows_per_sequence": [len(s) for s in SEQUENCES],
        "greedy_new_tokens": GREEDY_NEW_TOKENS,
        "greedy_continuations_f32": continuations,
        "attention": "eager",
        "chat_f32": chat,
    }
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters -> {path}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--shared", required=True)
    parser.add_argument("--only")
    args = parser.parse_args()
    # The CPU gives plain IEEE float32 math (no TF32) and is fast enough for tiny models.
    device = "cpu"
    for name in FIXTURES:
        if args.only is None or args.only == name:
            build(name, args.out_dir, device, args.shared)


if __name__ == "__main__":
    main()
