"""The 102 official Oxford Flowers category names, in label order (label 1 is index 0).

The single source is ``oxford102_categories.txt`` beside this file (package data).
"""

from functools import cache
from importlib.resources import files

NUM_CLASSES = 102


@cache
def class_names() -> tuple[str, ...]:
    """The official names; ``class_names()[i]`` is the name of class index ``i``."""
    text = files(__package__).joinpath("oxford102_categories.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(names) == NUM_CLASSES, f"package data holds {len(names)} names, expected {NUM_CLASSES}"
    return names


def folder_name(index: int) -> str:
    """The ImageFolder directory of a class: zero-padded so that sorting keeps label order."""
    return f"{index:03d}_{class_names()[index].replace(' ', '_')}"
