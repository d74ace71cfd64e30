"""GPT-2 training step: zoo's model against transformers' GPT2LMHeadModel (SDPA attention), same process.

Both start from the same weights; a step is forward, cross-entropy, backward and an AdamW update, in fp32 on
CPU. Prints tokens/s of each, the ratio zoo / transformers, and model FLOPs utilisation against this machine's
measured fp32 matmul peak.

    python benchmarks/gpt2_train_step.py [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import transformers

from zoo.models.gpt2 import GPT2, GPT2Config, load_hf_weights

CASES = [  # name, layers, heads, width, sequence, batch
    ("gpt2-small", 12, 12, 768, 256, 2),
    ("4 x 256", 4, 4, 256, 256, 8),
]


def matmul_peak(seconds: float = 1.0) -> float:
    """Measured FLOP/s of a large fp32 matmul (the peak the MFU is taken against)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - start)


def timed(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def run_case(name, layers, heads, width, seq, batch, args, peak) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=layers, n_head=heads, n_embd=width, n_positions=1024,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         attn_implementation="sdpa")
    hf = transformers.GPT2LMHeadModel(config)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = GPT2(GPT2Config(size="", n_layer=layers, n_head=heads, n_embd=width, qkv_bias=True,
                               tie_weights=True), 50257)
        from pathlib import Path

        load_hf_weights(ours, Path(tmp))
    x = torch.randint(0, 50257, (batch, seq))
    y = torch.randint(0, 50257, (batch, seq))
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    opt_zoo = torch.optim.AdamW(ours.parameters(), lr=1e-4)

    def step_hf():
        loss = F.cross_entropy(hf(x).logits.reshape(-1, 50257), y.reshape(-1))
        opt_hf.zero_grad(set_to_none=True)
        loss.backward()
        opt_hf.step()

    def step_zoo():
        hidden, _ = ours(x)
        loss = F.cross_entropy(ours.lm_head(hidden).reshape(-1, 50257), y.reshape(-1))
        opt_zoo.zero_grad(set_to_none=True)
        loss.backward()
        opt_zoo.step()

    t_hf = t_zoo = float("inf")
    for _ in range(args.rounds):  # alternate, keep the best of each
        t_hf = min(t_hf, timed(step_hf, args.steps, args.warmup))
        t_zoo = min(t_zoo, timed(step_zoo, args.steps, args.warmup))
    tokens = seq * batch
    matmul_params = sum(p.numel() for p in ours.parameters()) - ours.wpe.weight.numel()
    flops_per_token = 6 * matmul_params + 12 * layers * seq * width  # at this sequence length
    mfu = tokens / t_zoo * flops_per_token / peak
    print(f"{name:<12} {seq:>5} x {batch:<3} {tokens / t_hf:>19,.0f} {tokens / t_zoo:>10,.0f} "
          f"{t_hf / t_zoo:>6.2f} {mfu:>8.1%}", flush=True)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak()
    print(f"{torch.get_num_threads()} threads, fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    print(f"{'model':<12} {'seq x batch':>11} {'transformers tok/s':>19} {'zoo tok/s':>10} {'ratio':>6} {'zoo MFU':>8}")
    for case in CASES:
        run_case(*case, args, peak)


if __name__ == "__main__":
    main()
