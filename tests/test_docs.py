"""The user documents point only at what exists: every relative link (and its #heading), and every repository
path they name (`server/app.py`, `deploy/start-site.sh`, `docs/decisions/`); the README stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
TOP_LEVEL = ("pedseg", "pedseg_core", "server", "client", "flower_common", "simulations", "deploy", "docs",
             "benchmarks", "tests")
# a repository path: a top-level folder, then at least one more part; not the tail of a URL or an absolute path
REPO_PATH = re.compile(rf"(?<![\w/.:~-])((?:{'|'.join(TOP_LEVEL)})/[\w./-]*[\w-])")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*```")


def prose(text: str) -> list[str]:
    """The lines outside code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(document: Path) -> set[str]:
    """The #fragments GitHub gives the document's headings."""
    seen: dict[str, int] = {}
    for line in prose(document.read_text(encoding="utf-8")):
        if line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            if seen[slug]:
                seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(document: Path) -> None:
    broken = []
    for target in LINK.findall(document.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, fragment = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment}")
    assert not broken, f"{document.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_named_repository_path_exists(document: Path) -> None:
    missing = sorted({path for path in REPO_PATH.findall(document.read_text(encoding="utf-8"))
                      if not (ROOT / path).exists()})
    assert not missing, f"{document.relative_to(ROOT)} names what the repository does not have: {missing}"


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}"
