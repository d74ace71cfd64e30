"""Data preparation speed and memory: `zoo prepare-data`'s pipeline (streamed through `datasets`, batched
multi-threaded tiktoken, uint16 token files) against a plain single-threaded tiktoken loop over the same
documents held in memory, each in its own process so peak memory is its own.

    python benchmarks/prepare_data.py [PARQUET ...]   (default: ../shared/data/fineweb_sample/train.parquet)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fineweb_sample" / "train.parquet"

ZOO = """
import json, resource, sys, time
from pathlib import Path
from zoo.data import tokens
from zoo.tokenizers import Gpt2Tokenizer
start = time.perf_counter()
folder = tokens.prepare(sys.argv[1], Gpt2Tokenizer(), progress=False, cache=Path(sys.argv[2]))
seconds = time.perf_counter() - start
manifest = json.loads((folder / "manifest.json").read_text())
print(json.dumps({"seconds": seconds, "bytes": manifest["text_bytes"],
                  "tokens": sum(manifest["tokens"].values()),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PLAIN = """
import json, resource, sys, time
import numpy as np, pyarrow.parquet as pq, tiktoken
from zoo.tokenizers import gpt2_encoding
enc = gpt2_encoding()
start = time.perf_counter()
texts = [t for f in sys.argv[1].split(",") for t in pq.read_table(f).column("text").to_pylist()]
ids = []
for t in texts:
    ids.extend(enc.encode_ordinary(t))
    ids.append(50256)
np.asarray(ids, dtype=np.uint16).tofile(sys.argv[2] + "/plain.bin")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "bytes": sum(len(t.encode()) for t in texts), "tokens": len(ids),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    files = sys.argv[1:] or [str(DEFAULT)]
    with tempfile.TemporaryDirectory() as tmp:
        zoo = run(ZOO, files[0] if len(files) == 1 else ",".join(files), tmp)
        plain = run(PLAIN, ",".join(files), tmp)
    print(f"{'pipeline':<34} {'MB/s':>7} {'tokens':>11} {'peak RSS MB':>12}")
    for name, r in (("plain tiktoken loop (in memory)", plain), ("zoo prepare-data (streamed)", zoo)):
        print(f"{name:<34} {r['bytes'] / r['seconds'] / 1e6:>7.2f} {r['tokens']:>11,} {r['peak_mb']:>12.0f}")
    print(f"ratio zoo / plain: speed {plain['seconds'] / zoo['seconds']:.2f}x, peak memory "
          f"{zoo['peak_mb'] / plain['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
