"""zoo: a language-model zoo on one tokenizer/data/trainer core."""

import os
from pathlib import Path

__version__ = "0.1.0"


def cache_home() -> Path:
    """zoo's cache folder (token files, built extensions): $ZOO_CACHE, else ~/.cache/zoo."""
    return Path(os.environ.get("ZOO_CACHE") or Path.home() / ".cache" / "zoo")


def configure_threads() -> None:
    """Thread settings for sharing a machine, applied when zoo is imported, before torch loads (the OpenMP
    runtime reads them once): every zoo command, torchrun worker, benchmark and the test suite get them.
    An idle OpenMP thread spins for GOMP_SPINCOUNT iterations (300,000 by default) before it sleeps; with two
    trainings on the same cores those spinning threads take the CPU from the other one's working threads
    (benchmarks/shared_machine.py: each kept a tenth of its solo speed or less). 1,000 keeps each at about half
    of its solo speed and costs nothing alone. A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins;
    ZOO_THREADS=off leaves torch's defaults."""
    if os.environ.get("ZOO_THREADS", "") == "off" or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")


configure_threads()
