"""Typed exceptions. Every message is one line: what is wrong, then what to do.

The CLI prints ``str(exc)`` and exits with status 2; the app shows it with ``st.error``.
"""


class OatsError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(OatsError, ValueError):
    """A configuration value is out of range or malformed."""


class ModelLoadError(OatsError):
    """A model could not be found or loaded (unknown name, offline, damaged files)."""


class UnsupportedModelError(OatsError):
    """The model loaded, but no adapter knows its architecture."""


class DataError(OatsError):
    """Calibration or evaluation data is missing, empty or unreadable."""


class RunError(OatsError):
    """A run folder is missing, damaged, or belongs to another model."""


class ResourceError(OatsError):
    """A request needs more memory (or another resource) than this machine has."""
