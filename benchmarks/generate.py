"""Generation speed: zoo's KV-cached sampler against transformers' `generate` on the same weights, greedy, for
GPT-2 and for each modern option.

Each model is zoo's, exported with `zoo.export` to the transformers model its architecture is (GPT-2 ->
`GPT2LMHeadModel`; rotary + RMSNorm + SwiGLU without biases -> `LlamaForCausalLM`; a soft-cap or QK-norm -> zoo's
remote code), so both generate the same tokens (checked) and only the loops and kernels differ.

The last two columns are the floor of zoo's decoder on this machine: each of the model's linear layers (the head
included) applied once to one token's vector, as a decoded token needs, timed alone. At batch 1 these are
matrix-vector products bound by the memory bandwidth that reads the weights; "floor share" is the part of zoo's time
per new token (its prompt included) that they take, and what is left is all else the decoder does. (The floor is
for the layouts zoo decodes with: nn.Linear's [out, in] weights, and the LM head as `zoo.generate.decoding_head`
holds it, [in, out] where that kernel is the faster here. A kernel's speed at batch 1 can depend on the layout, so
a peer that stores its weights [in, out], as transformers' GPT-2 does, has a floor of its own.)

    python benchmarks/generate.py [--new-tokens 64] [--prompt-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers

from zoo.export.gpt2 import export
from zoo.generate import decoding_head, generate
from zoo.models.gpt2 import GPT2, GPT2Config

LLAMA = dict(position="rotary", norm="rmsnorm", mlp="swiglu", bias=False)
CASES = [  # name, layers, heads, width, options
    ("gpt2-small", 12, 12, 768, dict(qkv_bias=True, tie_weights=True)),
    ("4 x 256 GPT-2", 4, 4, 256, dict(qkv_bias=True, tie_weights=True)),
    ("4 x 256 rotary", 4, 4, 256, dict(position="rotary")),
    ("4 x 256 Llama (SwiGLU)", 4, 4, 256, LLAMA),
    ("4 x 256 soft-cap 15", 4, 4, 256, dict(logit_softcap=15.0)),
    ("4 x 256 modern stack", 4, 4, 256, dict(position="rotary", norm="rmsnorm", norm_gain=False, mlp="relu2",
                                            qk_norm=True, bias=False, logit_softcap=15.0)),
]


def peer(model: GPT2, folder: Path):
    """transformers' model of the same weights, exported as `zoo export-hf` writes it."""
    from zoo.tokenizers import Gpt2Tokenizer

    task = SimpleNamespace(kind="lm")
    run = SimpleNamespace(model=model, tokenizer=Gpt2Tokenizer(), recipe=SimpleNamespace(task=task))
    _, remote = export(run, folder)
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()


def matmul_floor(model: GPT2, rounds: int = 20) -> float:
    """Seconds of the linear layers alone for one decoded token (batch 1), best of `rounds`."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    vectors = [torch.randn(1, m.in_features) for m in layers]
    best = float("inf")
    with torch.no_grad(), decoding_head(model):
        for _ in range(rounds):
            start = time.perf_counter()
            for m, v in zip(layers, vectors, strict=True):
                m(v)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads, greedy, batch 1, prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens")
    print(f"{'model':<24} {'transformers tok/s':>19} {'zoo tok/s':>10} {'ratio':>6} {'floor tok/s':>12} "
          f"{'floor share':>11}")
    for name, layers, heads, width, options in CASES:
        torch.manual_seed(0)
        ours = GPT2(GPT2Config(size="", n_layer=layers, n_head=heads, n_embd=width, **options), 50257).eval()
        with torch.no_grad():
            for p in ours.parameters():  # zero-initialised pieces would make every greedy token the same
                p.add_(torch.randn_like(p) * 0.02)
        with tempfile.TemporaryDirectory() as tmp:
            hf = peer(ours, Path(tmp))
        prompt = torch.randint(0, 50257, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
        t_hf = t_zoo = float("inf")
        out_hf = out_zoo = None
        for _ in range(args.rounds):  # alternate, keep the best of each
            start = time.perf_counter()
            with torch.no_grad():
                out_hf = hf.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, pad_token_id=0)
            t_hf = min(t_hf, time.perf_counter() - start)
            start = time.perf_counter()
            out_zoo = generate(ours, prompt[0].tolist(), args.new_tokens, temperature=0)
            t_zoo = min(t_zoo, time.perf_counter() - start)
        same = out_hf[0, args.prompt_tokens:].tolist() == out_zoo
        floor = matmul_floor(ours)
        print(f"{name:<24} {args.new_tokens / t_hf:>19,.1f} {args.new_tokens / t_zoo:>10,.1f} {t_hf / t_zoo:>6.2f} "
              f"{1 / floor:>12,.1f} {args.new_tokens / t_zoo * floor:>11.2f}"
              f"{'' if same else '  (outputs differ!)'}", flush=True)


if __name__ == "__main__":
    main()
