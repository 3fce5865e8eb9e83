"""FloraEdge's torch-free runtime: the preprocessing spec, ``preprocess()`` and the inference backends."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("floraedge")  # pyproject.toml holds the one version string
except PackageNotFoundError:  # a copied folder that was never installed (e.g. `floraedge space`)
    __version__ = "0+unknown"
