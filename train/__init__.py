"""FloraEdge train."""
