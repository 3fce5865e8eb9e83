"""One-off studies: each module measured a question once, for the docs section its header names. Not part
of the installed package (pyproject's package list leaves it out); nothing in the package or its tests imports it."""
