"""zoo: a language-model zoo on one tokenizer/data/trainer core."""

import os
from pathlib import Path

__version__ = "0.1.0"


def cache_home() -> Path:
    """zoo's cache folder (token files, built extensions): $ZOO_CACHE, else ~/.cache/zoo."""
    return Path(os.environ.get("ZOO_CACHE") or Path.home() / ".cache" / "zoo")
