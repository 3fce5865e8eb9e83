"""README.md stays a short newcomer's page, and every relative link of it and of docs/ leads somewhere:
an existing file and, where the link names one, an existing heading of that file."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_MAX_LINES = 200

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
ANCHOR_TAG = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page has: its headings' slugs (repeats numbered as GitHub does) and <a id> tags."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found, seen = set(ANCHOR_TAG.findall(text)), {}
    for heading in HEADING.findall(text):
        slug = github_slug(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links(page: Path) -> list[str]:
    """The page's links to files of this repository (outside code blocks; web addresses left out)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def link_cases():
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    return [(page, target) for page in pages for target in relative_links(page)]


def test_readme_is_a_short_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move details to a docs/ topic page"


def test_readme_links_every_topic_page():
    linked = {target.split("#")[0] for page, target in link_cases() if page == README}
    topic_pages = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    assert topic_pages <= linked, f"docs pages the README does not link: {sorted(topic_pages - linked)}"


@pytest.mark.parametrize("page,target", link_cases(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_link_leads_to_a_file_and_heading(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    name = file.relative_to(REPO).as_posix() if file.is_relative_to(REPO) else str(file)
    assert file.exists(), f"{page.name}: the link {target} leads to no file"
    if anchor:
        assert file.suffix == ".md", f"{page.name}: {target} names a heading in a file that has none"
        assert anchor in anchors(file), f"{page.name}: {target}: {name} has no heading with that anchor"


def test_github_slug_matches_githubs_rule():
    assert github_slug("The model to ship: the same recipe on train + val") == (
        "the-model-to-ship-the-same-recipe-on-train--val"
    )
    assert github_slug("`prepare` on your own photos: layouts and throughput") == (
        "prepare-on-your-own-photos-layouts-and-throughput"
    )
    assert github_slug("bf16 training steps: 1.64x fp32") == "bf16-training-steps-164x-fp32"
