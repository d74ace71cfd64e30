"""Modelling code that `zoo export-hf` copies into exported folders (transformers' remote code). The two files
import only torch and transformers, so an exported folder works without zoo installed."""
