"""Typed exceptions. Every message is one line: what is wrong, then what to do.

The CLI prints ``str(exc)`` and exits with status 2; the app shows it with ``st.error``.
"""


class OatsError(Exception):
    """Base class for every error this package raises on purpose.

    Its message is always one line: a line break or other control character that came in
    with a name from a file (a run folder called "run\nTraceback ...") is shown escaped, so
    nothing a shared folder holds can make an error look like two messages or a traceback.
    """

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_one_line(args[0]),)
        super().__init__(*args)


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
