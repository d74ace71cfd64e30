"""Generation speed: zoo's KV-cached sampler against transformers' `generate`, same GPT-2 weights, greedy.

    python benchmarks/generate.py [--new-tokens 64] [--prompt-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import transformers

from zoo.generate import generate
from zoo.models.gpt2 import from_hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} threads, greedy, batch 1, prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens")
    print(f"{'model':<12} {'transformers tok/s':>19} {'zoo tok/s':>10} {'ratio':>6}")
    for name, layers, heads, width in (("gpt2-small", 12, 12, 768), ("4 x 256", 4, 4, 256)):
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=layers, n_head=heads, n_embd=width, attn_implementation="sdpa")
        hf = transformers.GPT2LMHeadModel(config).eval()
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            ours = from_hf(f"hf:{Path(tmp)}").eval()
        prompt = torch.randint(0, 50257, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
        t_hf = t_zoo = float("inf")
        out_hf = out_zoo = None
        for _ in range(args.rounds):
            start = time.perf_counter()
            with torch.no_grad():
                out_hf = hf.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, pad_token_id=0)
            t_hf = min(t_hf, time.perf_counter() - start)
            start = time.perf_counter()
            out_zoo = generate(ours, prompt[0].tolist(), args.new_tokens, temperature=0)
            t_zoo = min(t_zoo, time.perf_counter() - start)
        same = out_hf[0, args.prompt_tokens:].tolist() == out_zoo
        print(f"{name:<12} {args.new_tokens / t_hf:>19,.1f} {args.new_tokens / t_zoo:>10,.1f} {t_hf / t_zoo:>6.2f}"
              f"{'' if same else '  (outputs differ!)'}", flush=True)


if __name__ == "__main__":
    main()
