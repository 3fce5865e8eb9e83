"""The base class of every error FloraEdge reports to a user as one clear line."""


class FloraEdgeError(Exception):
    """An error whose message says what is wrong and how to fix it; the CLI prints it and exits 1."""


class InferenceError(FloraEdgeError):
    """A model that loaded but failed while running: every backend raises this for any runtime error, so
    callers (``classify``, ``run``, ``bench``, the server) report one line instead of the runtime's traceback."""
