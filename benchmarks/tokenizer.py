"""The trained BPE tokenizer against its peers, in one run on the same text: training time of zoo's trainer (HF
`tokenizers`' BPE trainer, what `data.tokenizer = "bpe"` runs) beside rustbpe's (nanochat's; when installed),
encode throughput of zoo's tokenizer (tiktoken with the learned merges) beside tiktoken's own GPT-2 on the same
documents and threads, and bytes per token of each on the FineWeb sample's val documents and on Tiny Shakespeare.

    python benchmarks/tokenizer.py [--vocab 4096] [--source ../shared/data/fineweb_sample/train.parquet]

Each timing is the best of --rounds rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import pyarrow.parquet as pq
import tiktoken

from zoo.data import read_text
from zoo.tokenizers import Gpt2Tokenizer
from zoo.tokenizers.bpe import PATTERNS, train

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT.parent / "shared" / "data" / "fineweb_sample"


def best(fn, rounds: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(DEFAULT))
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="encoding threads, the same for both (zoo's workers "
                                                            "each encode with 1)")
    args = ap.parse_args()
    train_docs = pq.read_table(Path(args.source) / "train.parquet").column("text").to_pylist()
    val_docs = pq.read_table(Path(args.source) / "validation.parquet").column("text").to_pylist()
    chars = sum(map(len, train_docs))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; tiktoken {tiktoken.__version__}, "
          f"tokenizers {__import__('tokenizers').__version__}")
    print(f"training text: {len(train_docs):,} documents, {chars:,} characters; vocabulary {args.vocab:,}")

    seconds, tok = best(lambda: train(iter(train_docs), args.vocab), args.rounds)
    print(f"train  zoo (HF tokenizers BpeTrainer) {seconds:7.2f} s")
    try:
        import rustbpe

        def rust():
            t = rustbpe.Tokenizer()
            t.train_from_iterator(iter(train_docs), args.vocab - 1, pattern=PATTERNS["gpt4"])
            return t

        rust_seconds, _ = best(rust, args.rounds)
        print(f"train  rustbpe                         {rust_seconds:7.2f} s   "
              f"zoo/rustbpe time {seconds / rust_seconds:.2f}x")
    except ImportError:
        print("train  rustbpe                         (not installed: pip install rustbpe)")

    gpt2 = Gpt2Tokenizer()
    text_bytes = sum(len(d.encode("utf-8")) for d in train_docs)
    ours_s, ours_ids = best(lambda: tok.encode_batch(train_docs, threads=args.threads), args.rounds)
    ref_s, ref_ids = best(lambda: gpt2.encode_batch(train_docs, threads=args.threads), args.rounds)
    print(f"encode zoo bpe{args.vocab}  {text_bytes / ours_s / 1e6:6.2f} MB/s  "
          f"({sum(map(len, ours_ids)):,} tokens)")
    print(f"encode tiktoken gpt2 {text_bytes / ref_s / 1e6:6.2f} MB/s  ({sum(map(len, ref_ids)):,} tokens)")
    print(f"encode throughput zoo / tiktoken gpt2: {ref_s / ours_s:.2f}x  ({args.threads} thread(s) each)")

    texts = {"FineWeb val": "\n".join(val_docs), "Tiny Shakespeare": read_text("embedded:tinyshakespeare")}
    print(f"{'bytes per token':<18} {'bpe' + str(args.vocab):>10} {'gpt2':>8}")
    for name, text in texts.items():
        size = len(text.encode("utf-8"))
        print(f"{name:<18} {size / len(tok.encode_ordinary(text)):>10.2f} "
              f"{size / len(gpt2.encode_ordinary(text)):>8.2f}")


if __name__ == "__main__":
    main()
