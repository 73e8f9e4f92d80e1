"""The documentation's links resolve: every relative Markdown link of the README and the docs pages
names a file that exists, and every ``#anchor`` into a Markdown file names one of its headings (by
GitHub's slug rules). The README stays a first screen: at most 250 lines. Reads text only."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250


def _checked_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += [ROOT / name for name in ("experiments/README.md", "sweeps/README.md")]
    return [f for f in files if f.exists()]


_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`]+`")
# [text](target) and ![alt](target): the text may hold one level of brackets and line breaks;
# an optional "title" after the target
_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where link-like text is not a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without Markdown, lowercased, every character that is
    not a letter, a mark, a digit, a connector (``_``), a hyphen or a space dropped, spaces -> ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(c for c in text if c in "- " or unicodedata.category(c)[0] in "LM"
                   or unicodedata.category(c) in ("Nd", "Pc"))
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for match in _HEADING.finditer(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[tuple[str, str]]:
    """``(target, anchor)`` for every link of a file that stays inside the repository."""
    out = []
    for match in _LINK.finditer(_prose(path.read_text(encoding="utf-8"))):
        target = match.group(2)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        out.append((unquote(file_part), unquote(anchor)))
    return out


LINKS = [(f, target, anchor) for f in _checked_files() for target, anchor in relative_links(f)]


def test_the_checked_files_have_links():
    assert (ROOT / "README.md").exists() and (ROOT / "docs").is_dir()
    assert len(LINKS) > 20, "the link pattern found almost nothing: is it broken?"


@pytest.mark.parametrize(("source", "target", "anchor"), LINKS,
                         ids=[f"{f.relative_to(ROOT)}->{t or ''}#{a}" if a else f"{f.relative_to(ROOT)}->{t}"
                              for f, t, a in LINKS])
def test_link_resolves(source: Path, target: str, anchor: str):
    where = (source.parent / target).resolve() if target else source
    assert where.exists(), f"{source.relative_to(ROOT)}: link to {target!r}, which does not exist"
    if anchor and where.is_file() and where.suffix.lower() == ".md":
        known = anchors(where)
        assert anchor in known, (f"{source.relative_to(ROOT)}: anchor #{anchor} is no heading of "
                                 f"{where.relative_to(ROOT)} (its anchors: {sorted(known)})")


def test_slug_follows_github():
    assert slug("The optimizer matters: β2, ε and clipping") == "the-optimizer-matters-β2-ε-and-clipping"
    assert slug("Using the engine with a `Trainer`") == "using-the-engine-with-a-trainer"
    assert slug("What follows the paper, what follows the authors' code, what is our reading") == \
        "what-follows-the-paper-what-follows-the-authors-code-what-is-our-reading"
    assert slug("Cost, measured (2026-11-23; `OMP_NUM_THREADS` set)") == "cost-measured-2026-11-23-omp_num_threads-set"


def test_readme_is_a_first_screen():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}); move detail to docs/"
