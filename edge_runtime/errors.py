"""The base class of every error FloraEdge reports to a user as one clear line."""


class FloraEdgeError(Exception):
    """An error whose message says what is wrong and how to fix it; the CLI prints it and exits 1."""
