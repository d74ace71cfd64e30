"""Backbones: one file per architecture, each knowing nothing about tasks or parallelism."""
