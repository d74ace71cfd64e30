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
    (benchmarks/shared_machine.py on 2 cores: each kept 0.08-0.30 of its solo speed). 1,000 keeps each at about
    half of its solo speed and costs nothing measurable alone (0.99x torch's defaults). A user's own
    OMP_WAIT_POLICY or GOMP_SPINCOUNT wins; ZOO_THREADS=off leaves torch's defaults."""
    if os.environ.get("ZOO_THREADS", "") == "off" or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")


def configure_memory() -> None:
    """Keep freed memory in the process instead of giving it back to the system at once (Linux, glibc). By
    default glibc serves every allocation above 32 MiB with a fresh mmap and unmaps it when freed, so a
    training step whose big tensors (a GPT-2 step's [tokens, 50,257] logits and their gradient) are allocated
    anew each step pays a page fault per 4 KiB page, every step: on a 2-core CPU a gpt2-micro step spent more
    time in the kernel than computing (1.1k tokens/s; 2.0k with this, the same losses). With mmap off and a
    high trim threshold, freed blocks are reused by the next step, as torch's CUDA caching allocator does on a
    GPU. The process keeps its peak memory until it exits. ZOO_MALLOC=off leaves glibc's defaults; a user's
    own MALLOC_MMAP_MAX_ or GLIBC_TUNABLES wins."""
    if os.environ.get("ZOO_MALLOC", "") == "off" or "MALLOC_MMAP_MAX_" in os.environ \
            or "GLIBC_TUNABLES" in os.environ:
        return
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave its allocator alone
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameter numbers
    mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1))  # the largest it takes: 2 GiB
    mallopt(m_mmap_max, ctypes.c_int(0))


configure_threads()
configure_memory()
