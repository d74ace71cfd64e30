"""GPT-2 training step: zoo's model against transformers' GPT2LMHeadModel (SDPA attention), same process; then
the modern stack's cost against the GPT-2 baseline's on CPU.

Part 1: both start from the same weights; a step is forward, cross-entropy, backward and an AdamW update, in
fp32 on CPU, zoo's through the loss its tasks use (`next_token_loss`: the chunked head loss). Prints tokens/s of
each, the ratio zoo / transformers, and model FLOPs utilisation against this machine's measured fp32 matmul peak.

Part 2: the laptop study's shapes (4 x 4 x 128, context 128, batch 16, GPT-2's vocabulary): zoo's GPT-2
baseline with AdamW, the modern stack (rotary, RMSNorm, ReLU^2, QK-norm, no biases, soft-cap 15, zero-init
projections) with AdamW and with Muon (the recipe's optimizer), each step time as a multiple of the baseline's;
and the same stack with the plain head (logits, soft-cap and cross-entropy as separate ops), the form before
the chunked head loss.

    python benchmarks/gpt2_train_step.py [--steps 5] [--threads 2] [--part 1|2] [--profile]
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
    from zoo import registry
    from zoo.optimizers.classic import OptimConfig

    # transformers' model with torch's AdamW as a plain training loop gets it (the per-tensor loop on CPU), and
    # with the fused CPU kernel (transformers' Trainer's adamw_torch_fused); zoo's as a recipe builds it
    # (optim.impl = "auto": the fused kernel)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    hf_fused = transformers.GPT2LMHeadModel(config)
    hf_fused.load_state_dict(hf.state_dict())
    opt_hf_fused = torch.optim.AdamW(hf_fused.parameters(), lr=1e-4, fused=True)
    opt_zoo, _ = registry.build_optimizer(ours, OptimConfig(name="adamw", weight_decay=0.0), 1e-4)

    def hf_step(model, opt):
        def step():
            loss = F.cross_entropy(model(x).logits.reshape(-1, 50257), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    step_hf, step_hf_fused = hf_step(hf, opt_hf), hf_step(hf_fused, opt_hf_fused)

    def step_zoo():
        hidden, _ = ours(x)
        loss = ours.next_token_loss(hidden, y)  # what LMTask.loss computes
        opt_zoo.zero_grad(set_to_none=True)
        loss.backward()
        opt_zoo.step()

    if args.profile:
        profile_steps(name, {"transformers (fused AdamW)": step_hf_fused, "zoo": step_zoo})
        return
    t_hf = t_fused = t_zoo = float("inf")
    for _ in range(args.rounds):  # alternate, keep the best of each
        t_hf = min(t_hf, timed(step_hf, args.steps, args.warmup))
        t_fused = min(t_fused, timed(step_hf_fused, args.steps, args.warmup))
        t_zoo = min(t_zoo, timed(step_zoo, args.steps, args.warmup))
    tokens = seq * batch
    matmul_params = sum(p.numel() for p in ours.parameters()) - ours.wpe.weight.numel()
    flops_per_token = 6 * matmul_params + 12 * layers * seq * width  # at this sequence length
    mfu = tokens / t_zoo * flops_per_token / peak
    print(f"{name:<12} {seq:>5} x {batch:<3} {tokens / t_hf:>10,.0f} {tokens / t_fused:>10,.0f} "
          f"{tokens / t_zoo:>10,.0f} {t_hf / t_zoo:>6.2f} {t_fused / t_zoo:>6.2f} {mfu:>8.1%}", flush=True)



def profile_steps(name: str, steps: dict) -> None:
    """Where each step's time goes, op by op (torch.profiler, self CPU time over 3 steps after 2 warm-up)."""
    from torch.profiler import profile

    for label, step in steps.items():
        for _ in range(2):
            step()
        with profile() as prof:
            for _ in range(3):
                step()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        print(f"\n{name}, {label}: {total / 3e3:,.0f} ms a step (profiled)")
        for e in rows:
            print(f"  {e.key[:48]:<48} {e.self_cpu_time_total / 3e3:>8,.1f} ms {e.count // 3:>6} calls")


MODERN = dict(position="rotary", norm="rmsnorm", norm_gain=False, mlp="relu2", qk_norm=True, bias=False,
              logit_softcap=15.0, zero_init_proj=True)


def modern_stack(args) -> None:
    """Step time of the modern stack (AdamW, Muon, and the plain head) as a multiple of the baseline's."""
    from zoo import registry
    from zoo.models.base import Backbone
    from zoo.optimizers.classic import OptimConfig
    from zoo.optimizers.muon import MuonConfig

    torch.manual_seed(0)
    batch, seq, vocab = 16, 128, 50257
    x, y = torch.randint(0, vocab, (batch, seq)), torch.randint(0, vocab, (batch, seq))

    def make(options: dict, optimizer: str, plain_head: bool = False):
        torch.manual_seed(0)
        model = GPT2(GPT2Config(size="", n_layer=4, n_head=4, n_embd=128, context_length=seq, **options), vocab)
        if optimizer == "muon":
            opt, _ = registry.build_optimizer(model, MuonConfig(), 0.02)
        else:
            opt, _ = registry.build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.0), 1e-3)
        loss_of = (lambda h: Backbone.next_token_loss(model, h, y)) if plain_head else (
            lambda h: model.next_token_loss(h, y))

        def step():
            loss = loss_of(model(x)[0])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    cases = [("GPT-2 baseline, AdamW", {}, "adamw", False), ("modern stack, AdamW", MODERN, "adamw", False),
             ("modern stack, Muon (the recipe)", MODERN, "muon", False),
             ("modern stack, Muon, plain head", MODERN, "muon", True)]
    steps = {name: make(options, opt, plain) for name, options, opt, plain in cases}
    best = {name: float("inf") for name in steps}
    for _ in range(args.rounds):  # alternate, keep the best of each
        for name, step in steps.items():
            best[name] = min(best[name], timed(step, args.steps, args.warmup))
    print(f"\n4 x 4 x 128, {seq} x {batch}, vocabulary {vocab:,}, fp32")
    print(f"{'model':<34} {'tok/s':>8} {'step time / baseline':>21}")
    base = best[cases[0][0]]
    for name, t in best.items():
        print(f"{name:<34} {batch * seq / t:>8,.0f} {t / base:>21.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--part", type=int, choices=[0, 1, 2], default=0, help="1 or 2 alone (0 = both)")
    parser.add_argument("--profile", action="store_true",
                        help="part 1: print each step's top ops (self CPU time) instead of timing them")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak()
    print(f"{torch.get_num_threads()} threads, fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    import platform

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.machine()}")
    if args.part in (0, 1):
        print(f"{'':<24} {'transformers tok/s':>21} {'':>10} {'zoo / transformers':>13}")
        print(f"{'model':<12} {'seq x batch':>11} {'AdamW':>10} {'fused':>10} {'zoo tok/s':>10} {'AdamW':>6} "
              f"{'fused':>6} {'zoo MFU':>8}")
        for case in CASES:
            run_case(*case, args, peak)
    if args.part in (0, 2):
        modern_stack(args)


if __name__ == "__main__":
    main()
