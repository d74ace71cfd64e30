"""Helpers for the typed dataclasses that recipes are made of: a field with its documentation, and a check
that turns an impossible value into a one-line RecipeError. The lowest layer of the recipe format: models and
tasks declare their config classes with these, without importing the recipe parser."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from zoo.errors import RecipeError


def doc(text: str, default: Any) -> Any:
    """A dataclass field with a default and a one-line description."""
    return field(default=default, metadata={"doc": text})


def check(ok: bool, key: str, message: str) -> None:
    """Raise a RecipeError for `key` unless `ok`."""
    if not ok:
        raise RecipeError(f"recipe value {key} {message}")


@dataclass(frozen=True)
class Section:
    """The base of every recipe section's dataclass, with the hooks the parser and the trainer call."""

    # a [task] that reads train.seq_len (language modelling); tasks of whole examples cut them at their own
    # max_length, so a model's context need not cover train.seq_len for them
    uses_seq_len: ClassVar[bool] = True

    def validate(self) -> None:
        """Refuse impossible values of this section alone (RecipeError via `check`)."""

    def validate_recipe(self, recipe) -> None:
        """Refuse combinations with other sections of the whole recipe."""

    def resolved(self) -> Section:
        """The section with what it points to filled in (e.g. GPT-2's architecture from `init_from` weights)."""
        return self


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def check_name(name: str) -> str:
    """A run name is one plain path component (no `/`, no `..`)."""
    if not NAME.match(name) or ".." in name:
        raise RecipeError(f"run name {name!r} must be letters, digits and . _ - + = (no slashes or '..')")
    return name
