"""FloraEdge export."""
