"""FloraEdge benchmarks."""
