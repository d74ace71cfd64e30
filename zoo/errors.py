"""Errors meant for users: `cli.py` prints them as one line and exits with code 2."""


class ZooError(Exception):
    """A problem the user can fix (bad recipe, missing file, ...); printed without a traceback."""


class RecipeError(ZooError):
    """The recipe or an override is wrong."""


class DataError(ZooError):
    """The input data cannot serve the recipe."""


class CheckpointError(ZooError):
    """A run directory or checkpoint cannot be used."""


class TrainingError(ZooError):
    """Training cannot go on (for example the loss stopped being finite)."""
