"""The documentation stays a front page plus docs/ that hold together: every relative link in
README.md and docs/*.md resolves (file and `#anchor`), the README stays short, and the code cites
the project's own docs (docs/method.md, docs/evaluation.md, docs/architecture.md), never the
working notes a user of the package does not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300  # a front page (nanoGPT's is ~14 KB); the rest lives in docs/
OUTSIDE_NOTES = re.compile(r"method-spec|eval-spec|DESIGN\.md")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (links and headings there are not links or headings)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation other than
    '-' and '_' removed, each space a '-'."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = text.replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's slug in a markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    for line in _prose(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def relative_links(path: Path) -> list[str]:
    """Links that point into the repository (not http(s), mailto)."""
    found = []
    for line in _prose(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # code spans hold no links
        for match in LINK.finditer(line):
            target = match.group(1) or match.group(2)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                found.append(target)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading(doc: Path):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        destination = (doc.parent / file_part).resolve() if file_part else doc
        if not destination.exists():
            broken.append(f"{target} (no file {destination.relative_to(ROOT) if ROOT in destination.parents else destination})")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no heading with anchor #{anchor} in {destination.relative_to(ROOT)})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: " + "; ".join(broken)


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (f"README.md: {lines} lines, at most {README_MAX_LINES}; "
                                       "move the detail into a docs/ file and link it")


def test_code_cites_the_project_docs_not_outside_notes():
    offenders = []
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted(p for p in (ROOT / folder).rglob("*") if p.is_file()):
            generated = "__pycache__" in path.parts or any(part.endswith(".egg-info") for part in path.parts)
            if path == Path(__file__).resolve() or generated:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # fixtures (safetensors, audio) are not prose
                continue
            for number, line in enumerate(text.splitlines(), 1):
                if OUTSIDE_NOTES.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, ("cite docs/method.md, docs/evaluation.md or docs/architecture.md instead of "
                           f"method-spec / eval-spec / DESIGN.md ({len(offenders)} lines): " + ", ".join(offenders[:20]))


def test_github_slug_follows_githubs_rules():
    assert github_slug("2. Masking (time-span masking, `compute_mask_indices`)") == \
        "2-masking-time-span-masking-compute_mask_indices"
    assert github_slug("4.6 Music2Vec-specific settings") == "46-music2vec-specific-settings"
    assert github_slug("Models you can load") == "models-you-can-load"
