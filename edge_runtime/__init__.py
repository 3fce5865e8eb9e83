"""FloraEdge's torch-free runtime: the preprocessing spec, ``preprocess()`` and the inference backends."""

__version__ = "0.1.0"
