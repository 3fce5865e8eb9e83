"""Which layout a ``--source`` has, and the labelled image files each layout lists.

Four layouts are read (``--layout`` forces one; ``auto`` recognizes it and refuses to guess):

* ``oxford102``: the Oxford-102 release (``imagelabels.mat``, ``setid.mat``, ``jpg/`` or
  ``102flowers.tgz``; any of its files marks it); read by ``prepare.oxford102`` exactly as before.
* ``folders``: a class per folder, ``SOURCE/<class>/**/<image>`` (torchvision's ImageFolder), or a
  tree already split, ``SOURCE/<split>/<class>/**/<image>``, when every top-level folder is a split
  spelling (``SPLIT_NAMES``, any case).
* ``csv``: a CSV file with a header and the columns ``path,label[,split]``; paths are relative to
  the CSV's folder. ``--source`` is the file, or a folder whose top level holds one such file.

Nothing is read outside the source folder: a symlink that leads out of it, a symlink loop, a path
that leaves the CSV's folder or an entry that is not a regular file is refused with one line that
names it. Class names are the folder names or CSV labels exactly; their order is code-point order
(Python's ``sorted``, the order torchvision's ImageFolder uses), so class ``i`` is the ``i``-th name.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import posixpath
import stat
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from edge_runtime import console
from edge_runtime.errors import FloraEdgeError

LAYOUTS = ("auto", "oxford102", "folders", "csv")
OXFORD_MARKERS = ("imagelabels.mat", "setid.mat", "102flowers.tgz")  # the files of an Oxford-102 release
# The image files read, by suffix (any case): the formats ``edge_runtime.admission`` reads the header of.
IMAGE_SUFFIXES = frozenset(
    (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pbm", ".pgm", ".ppm", ".pnm")
)
# Split folder (and CSV split value) spellings, compared case-insensitively, and the split each names.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
CSV_COLUMNS = ("path", "label", "split")
# Bounds on what the input controls: walking stops with an error beyond them.
MAX_ENTRIES = 5_000_000  # files and folders walked (or CSV rows)
MAX_DEPTH = 64  # nested folders below a class folder
MAX_CLASSES = 100_000
MAX_NAME_CHARS = 255  # a class name (a folder name is at most 255 bytes anyway)
MAX_DATASET_NAME_CHARS = 100
MAX_CSV_BYTES = 512 * 1024 * 1024
SKIP_EXAMPLES = 5  # example paths kept per skip reason


class LayoutError(FloraEdgeError):
    """A source whose layout cannot be recognized, or that holds something refused."""


@dataclass(frozen=True)
class Item:
    """One labelled image file of a source."""

    file: str  # where to read it: inside the source folder (a symlink's target checked to be inside too)
    source: str  # its path relative to the source folder (POSIX), as the manifest records it
    label: str
    split: str | None = None  # "train" / "val" / "test" when the source gives the split
    size: int = 0  # bytes, from stat (checked against the read limit before reading)


@dataclass
class Listing:
    """What a layout reader found: the images, and what it skipped and why."""

    layout: str  # "folders", "split-folders" or "csv": the report's "layout read"
    root: Path  # the folder that ``Item.source`` paths are relative to
    items: list[Item] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    empty_classes: list[str] = field(default_factory=list)  # class folders without one image file
    missing_files: list[str] = field(default_factory=list)  # CSV rows whose file does not exist
    duplicate_rows: int = 0  # CSV rows repeating an earlier row
    entries: int = 0  # files and folders walked, or CSV rows read
    seconds: float = 0.0  # how long the listing took

    @property
    def splits_given(self) -> bool:
        return any(item.split is not None for item in self.items)

    def skip(self, reason: str, path: str) -> None:
        self.skipped[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < SKIP_EXAMPLES:
            examples.append(path)


# ---------------------------------------------------------------------------------------------- recognition


def detect_layout(source: Path, forced: str = "auto") -> str:
    """``forced`` when it is not ``auto``; else the one layout ``source`` matches (an error for none or several)."""
    if forced not in LAYOUTS:
        raise LayoutError(f"--layout {forced!r} is not one of {', '.join(LAYOUTS)}")
    if not os.path.lexists(source):
        raise LayoutError(f"--source {source} does not exist; point it at your dataset folder (or CSV file)")
    if forced != "auto":
        return forced
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return "csv"
        raise LayoutError(f"--source {source} is a file but not a .csv; give a CSV (path,label[,split]) or a folder")
    if not source.is_dir():
        raise LayoutError(f"--source {source} is neither a folder nor a file")
    found = layout_candidates(source)
    if len(found) == 1:
        return next(iter(found))
    if not found:
        raise LayoutError(
            f"--source {source} matches no layout: looked for an Oxford-102 release ({', '.join(OXFORD_MARKERS)}), a CSV "
            f"with a path,label header, and class folders ({source}/<class>/<image>); "
            "see `floraedge prepare --help`, or force one with --layout"
        )
    detail = "; ".join(f"{name} ({why})" for name, why in found.items())
    raise LayoutError(
        f"--source {source} matches several layouts: {detail}; force one with "
        + " or ".join(f"--layout {name}" for name in found)
    )


def layout_candidates(source: Path) -> dict[str, str]:
    """Each layout ``source``'s top level looks like, with what was seen (its first level only is read)."""
    found = {}
    oxford = [name for name in OXFORD_MARKERS if (source / name).is_file()]
    if oxford:
        found["oxford102"] = ", ".join(oxford)
    csvs = labelled_csvs(source)
    if csvs:
        found["csv"] = ", ".join(p.name for p in csvs[:3])
    folders = [d for d in top_folders(source) if not (oxford and d.name == "jpg")]
    if folders:
        names = ", ".join(f"{d.name}/" for d in folders[:3]) + (" ..." if len(folders) > 3 else "")
        found["folders"] = names
    return found


def top_folders(source: Path) -> list[Path]:
    """The non-hidden folders directly in ``source`` (symlinks to folders included), sorted by name."""
    with os.scandir(source) as entries:
        return sorted(Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir())


def labelled_csvs(source: Path) -> list[Path]:
    """The ``*.csv`` files directly in ``source`` whose header names a path and a label column."""
    with os.scandir(source) as entries:
        csvs = sorted(Path(e.path) for e in entries if e.name.lower().endswith(".csv") and e.is_file())
    inside = [p for p in csvs if _inside(os.path.realpath(p), os.path.realpath(source))]  # a link out is not read
    return [p for p in inside if _has_csv_header(p)]


def _inside(real: str, real_root: str) -> bool:
    return os.path.commonpath([real, real_root]) == real_root


def _has_csv_header(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096).decode("utf-8-sig", errors="replace")
    header = next(csv.reader(io.StringIO(head)), [])
    columns = {c.strip().lower() for c in header}
    return {"path", "label"} <= columns


def read_listing(source: Path, layout: str) -> Listing:
    """The labelled image files of ``source`` read as ``layout`` (``folders`` or ``csv``)."""
    readers = {
        "csv": lambda progress: read_csv(find_csv(source), progress),
        "folders": lambda progress: read_folders(source, progress),
    }
    if layout not in readers:
        raise LayoutError(f"layout {layout!r} has no listing reader")  # oxford102 is read by prepare.oxford102
    start = time.perf_counter()
    with console.counter(desc=f"listing {source}", unit=" entries", unit_scale=True, mininterval=0.5) as progress:
        listing = readers[layout](progress)
        progress.update(listing.entries - progress.n)
    listing.seconds = time.perf_counter() - start
    return listing


# ---------------------------------------------------------------------------------------------- names


def split_name(name: str) -> str | None:
    """The split a folder name or CSV value names (any case), or None."""
    return SPLIT_NAMES.get(name.strip().lower())


def check_class_name(name: str, where: str, *, what: str = "class name", longest: int = MAX_NAME_CHARS) -> str:
    """``name`` if it can be a class name (it travels as one line of labels.txt); else a one-line error."""
    problem = None
    if not name:
        problem = "is empty"
    elif _not_utf8(name):
        problem = "is not valid UTF-8"
    elif name != name.strip() or len(name.splitlines()) != 1:
        problem = "starts or ends with a space, or holds a line break"
    elif any(unicodedata.category(c) == "Cc" for c in name):
        problem = "holds a control character"
    elif len(name) > longest:
        problem = f"is longer than {longest} characters"
    if problem:
        shown = name.encode("utf-8", "backslashreplace").decode("utf-8")[:80]
        raise LayoutError(f"{where}: the {what} {shown!r} {problem}; rename it")
    return name


def check_classes(names: set[str], where: str) -> list[str]:
    """The class names in their order (code points), refused when fewer than 2, too many or ambiguous."""
    ordered = sorted(names)
    if len(ordered) < 2:
        found = f"one class ({ordered[0]!r})" if ordered else "no class"
        raise LayoutError(
            f"{where} holds {found} with images; a classifier needs at least 2: add a class, or point --source "
            "at the folder that holds the class folders"
        )
    if len(ordered) > MAX_CLASSES:
        raise LayoutError(f"{where} holds {len(ordered):,} classes, over the limit of {MAX_CLASSES:,}")
    normalized = Counter(unicodedata.normalize("NFC", n) for n in ordered)
    twins = [n for n, k in normalized.items() if k > 1]
    if twins:
        raise LayoutError(
            f"{where}: two classes are spelled {twins[0]!r} in different Unicode normal forms; rename one"
        )
    return ordered


def check_dataset_name(name: str) -> str:
    """``--name`` if it can name a dataset (one line of text that cards and pages show); else a one-line error."""
    return check_class_name(name, "--name", what="dataset name", longest=MAX_DATASET_NAME_CHARS)


def _not_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")  # a name that was not UTF-8 on disk holds surrogate escapes that do not encode
    except UnicodeEncodeError:
        return True
    return False


# ---------------------------------------------------------------------------------------------- safe walking


class Walker:
    """Walks folders inside one root: never out of it, never twice into a folder, bounded in size and depth."""

    def __init__(self, root: Path, listing: Listing, progress: console.Counting | None = None):
        self.root = root
        self.prefix = os.path.join(str(root), "")
        self.real_root = os.path.realpath(root)
        self.listing = listing
        self.seen_dirs: dict[tuple[int, int], str] = {}
        if progress is None:
            progress = console.counter(desc="listing", enabled=False)
        self.progress = progress
        self.enter(str(root))

    def relative(self, path: str) -> str:
        """``path`` relative to the root; every path walked starts with the root's own spelling (scandir joins)."""
        prefix = self.prefix
        rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, self.root)
        return rel if os.sep == "/" else PurePosixPath(Path(rel)).as_posix()

    def resolve(self, path: str) -> str:
        """``path``'s real location, refused when it is a symlink loop or leads outside the root."""
        try:
            real = os.path.realpath(path, strict=True)
        except (OSError, RuntimeError) as exc:  # RuntimeError: a loop, in Pythons before 3.13
            if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
                raise LayoutError(f"{path} is a symlink loop; remove the link") from None
            raise
        if not _inside(real, self.real_root):
            raise LayoutError(
                f"{path} is a symlink to {real}, outside {self.root}; refusing to read outside the source: "
                "copy or hard-link the file into it"
            )
        return real

    def enter(self, path: str) -> None:
        """Record a folder about to be walked; a second way into it (a symlink loop) is refused."""
        st = os.stat(self.resolve(path))
        key = (st.st_dev, st.st_ino)
        if key in self.seen_dirs:
            raise LayoutError(
                f"{path} leads back to {self.seen_dirs[key]} (a symlink loop or a second link to one folder); "
                "remove the link"
            )
        self.seen_dirs[key] = path

    def files(self, top: str):
        """(path, size) of every image file below ``top``; other entries are counted as skipped."""
        self.enter(top)
        stack = [(top, 0)]
        while stack:
            folder, depth = stack.pop()
            with os.scandir(folder) as entries:  # streamed, not sorted: a huge folder costs no memory (ids sort later)
                for entry in entries:
                    yield from self._entry(entry, depth, stack)

    def count(self) -> None:
        """One more entry (or CSV row) read: refused past ``MAX_ENTRIES``, shown on the progress line."""
        self.listing.entries += 1
        if self.listing.entries > MAX_ENTRIES:
            raise LayoutError(f"{self.root} holds more than {MAX_ENTRIES:,} entries (files, folders or rows); split it")
        if self.listing.entries % 1000 == 0:
            self.progress.update(1000)

    def skip(self, reason: str, path: str) -> None:
        """Count a skipped entry (its relative path is worked out only while examples are still kept)."""
        examples = self.listing.skipped_examples.get(reason, ())
        rel = self.relative(path) if len(examples) < SKIP_EXAMPLES else ""
        self.listing.skip(reason, rel.encode("utf-8", "backslashreplace").decode())

    def _entry(self, entry: os.DirEntry, depth: int, stack: list):
        self.count()
        if entry.name.startswith("."):
            self.skip("hidden", entry.path)
            return
        if _not_utf8(entry.name):
            self.skip("name not valid UTF-8", entry.path)
            return
        if entry.is_symlink():
            try:
                self.resolve(entry.path)
            except FileNotFoundError:
                self.skip("broken symlink", entry.path)
                return
        if entry.is_dir():
            if depth + 1 > MAX_DEPTH:
                raise LayoutError(f"{entry.path} is nested more than {MAX_DEPTH} folders deep; flatten the tree")
            self.enter(entry.path)
            stack.append((entry.path, depth + 1))
            return
        if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
            self.skip("not an image", entry.path)  # never opened, whatever kind of file it is
            return
        st = entry.stat()  # follows a symlink, whose target is checked above
        if not stat.S_ISREG(st.st_mode):
            raise LayoutError(f"{entry.path} is not a regular file (a FIFO, socket or device); remove it")
        yield entry.path, st.st_size


# ---------------------------------------------------------------------------------------------- folders


def read_folders(source: Path, progress: console.Counting | None = None) -> Listing:
    """A class-per-folder tree, or a split tree when every top-level folder is a split spelling."""
    if not source.is_dir():
        raise LayoutError(f"--source {source} is not a folder; --layout folders reads SOURCE/<class>/<image>")
    folders = top_folders(source)
    splits = {d: split_name(d.name) for d in folders}
    if folders and all(splits.values()):
        return _read_split_tree(source, splits, progress)
    named = [d.name for d in folders if splits[d]]
    if named:
        others = [d.name for d in folders if not splits[d]]
        raise LayoutError(
            f"{source} holds split folders ({', '.join(named[:3])}) beside class folders ({', '.join(others[:3])}); "
            "put every class folder inside a split folder, or rename the split folders"
        )
    listing = Listing("folders", source)
    walker = Walker(source, listing, progress)
    _skip_loose_files(source, listing)
    for folder in folders:
        _read_class(walker, folder, None)
    return listing


def _read_split_tree(source: Path, splits: dict[Path, str], progress: console.Counting | None) -> Listing:
    listing = Listing("split-folders", source)
    seen: dict[str, str] = {}
    for folder, split in splits.items():
        if split in seen:
            raise LayoutError(
                f"{source}: {seen[split]}/ and {folder.name}/ both name the {split} split; merge them into one folder"
            )
        seen[split] = folder.name
    walker = Walker(source, listing, progress)
    for folder, split in splits.items():
        walker.enter(str(folder))
        _skip_loose_files(folder, listing, root=source)
        for class_folder in top_folders(folder):
            _read_class(walker, class_folder, split)
    return listing


def _read_class(walker: Walker, folder: Path, split: str | None) -> None:
    label = check_class_name(folder.name, f"class folder {folder}")
    before = len(walker.listing.items)
    for path, size in walker.files(str(folder)):
        walker.listing.items.append(Item(path, walker.relative(path), label, split, size))
    if len(walker.listing.items) == before:
        walker.listing.empty_classes.append(walker.relative(str(folder)))


def _skip_loose_files(folder: Path, listing: Listing, root: Path | None = None) -> None:
    """Files beside the class folders belong to no class: counted, not read."""
    with os.scandir(folder) as entries:
        for e in entries:
            if not e.name.startswith(".") and not e.is_dir():
                rel = os.path.relpath(e.path, root or folder)
                listing.skip("not in a class folder", rel.encode("utf-8", "backslashreplace").decode())


# ---------------------------------------------------------------------------------------------- csv


def find_csv(source: Path) -> Path:
    """``source`` itself when it is a file; else the one labelled CSV directly inside it."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise LayoutError(f"--source {source} is neither a CSV file nor a folder")
    csvs = labelled_csvs(source)
    if len(csvs) != 1:
        found = f"{len(csvs)} ({', '.join(p.name for p in csvs[:3])})" if csvs else "none"
        raise LayoutError(
            f"--layout csv needs one CSV with a path,label header in {source}, found {found}; "
            "give the file itself as --source"
        )
    return csvs[0]


def read_csv(path: Path, progress: console.Counting | None = None) -> Listing:
    """The rows of a ``path,label[,split]`` CSV; paths are relative to its folder and may not leave it."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise LayoutError(f"--source {path} is not a regular file")
    if st.st_size > MAX_CSV_BYTES:
        raise LayoutError(f"{path} is {st.st_size:,} bytes, over the {MAX_CSV_BYTES:,}-byte limit for a CSV")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    columns = _csv_columns(path, next(reader, None))
    listing = Listing("csv", path.parent)
    walker = Walker(path.parent, listing, progress)
    rows: dict[str, tuple[str, str | None, int]] = {}
    try:
        for cells in reader:
            _csv_row(path, reader.line_num, cells, columns, walker, rows)
    except csv.Error as exc:
        raise LayoutError(f"{path} line {reader.line_num}: malformed CSV ({exc})") from None
    return listing


def _csv_columns(path: Path, header: list[str] | None) -> dict[str, int]:
    names = [c.strip().lower() for c in header or []]
    repeated = sorted({n for n in names if n in CSV_COLUMNS and names.count(n) > 1})
    if repeated:
        raise LayoutError(f"{path}: the header names the column {repeated[0]!r} twice")
    if "path" not in names or "label" not in names:
        raise LayoutError(
            f"{path}: the first line must be a header naming the columns path,label[,split] (found {header!r})"
        )
    return {n: names.index(n) for n in CSV_COLUMNS if n in names}


def _csv_row(path: Path, line: int, cells: list[str], columns: dict[str, int], walker: Walker, rows: dict) -> None:
    listing = walker.listing
    if not any(c.strip() for c in cells):
        return  # a blank line
    walker.count()
    if len(cells) <= max(columns.values()):
        raise LayoutError(f"{path} line {line}: {len(cells)} cells, fewer than the header's columns")
    where = f"{path} line {line}"
    rel = _csv_path(where, cells[columns["path"]].strip())
    label = check_class_name(cells[columns["label"]].strip(), where)
    split = None
    if "split" in columns:
        value = cells[columns["split"]]
        split = split_name(value)
        if split is None:
            raise LayoutError(
                f"{where}: split {value.strip()!r} is none of {', '.join(SPLIT_NAMES)}; fix it or drop the split column"
            )
    if rel in rows:
        first_label, first_split, first_line = rows[rel]
        if (first_label, first_split) != (label, split):
            raise LayoutError(
                f"{where}: {rel} is labelled {label!r} ({split or 'no split'}) but line {first_line} gave it "
                f"{first_label!r} ({first_split or 'no split'}); keep one row per image"
            )
        listing.duplicate_rows += 1
        return
    rows[rel] = (label, split, line)
    _csv_file(walker, rel, label, split)


def _csv_path(where: str, value: str) -> str:
    """A CSV path as a normalized relative POSIX path that stays in the CSV's folder."""
    if not value:
        raise LayoutError(f"{where}: the path is empty; every row needs a path and a label")
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).anchor:
        raise LayoutError(f"{where}: the path {value!r} is absolute; write it relative to the CSV's folder")
    normalized = posixpath.normpath(value)
    if normalized == ".." or normalized.startswith("../"):
        raise LayoutError(f"{where}: the path {value!r} leaves the CSV's folder; keep the images inside it")
    return normalized


def _csv_file(walker: Walker, rel: str, label: str, split: str | None) -> None:
    listing = walker.listing
    file = walker.root / rel
    if not os.path.lexists(file):
        listing.missing_files.append(rel)
        return
    try:
        real = walker.resolve(str(file))
    except FileNotFoundError:
        listing.skip("broken symlink", rel)
        return
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        raise LayoutError(f"{file} is not a regular file (a folder, FIFO, socket or device); list image files only")
    if file.suffix.lower() not in IMAGE_SUFFIXES:
        listing.skip("not an image", rel)
        return
    listing.items.append(Item(str(file), rel, label, split, st.st_size))
