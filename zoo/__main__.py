"""`python -m zoo` (what torchrun launches)."""

from zoo.cli import console

if __name__ == "__main__":
    raise SystemExit(console())
