"""zoo: a language-model zoo on one tokenizer/data/trainer core."""

__version__ = "0.1.0"
