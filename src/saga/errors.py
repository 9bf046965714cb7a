"""Errors for bad input. Each message names the file (and line) and the problem; the CLI prints it without a
traceback."""


class SagaError(Exception):
    """Base class of the errors the CLI reports as `saga: error: ...`."""


class DataError(SagaError, ValueError):
    """A dataset, annotation or image file is missing, malformed or unreadable."""


class ConfigError(SagaError, ValueError):
    """A config file or override is invalid (unknown key, wrong type)."""


class CheckpointError(SagaError, ValueError):
    """A checkpoint or model directory is missing or incomplete."""


class TrainingError(SagaError, RuntimeError):
    """A training run cannot go on (e.g. its loss is not finite step after step)."""
