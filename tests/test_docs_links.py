"""Relative links in README.md and docs/*.md point at files that exist, and their anchors at
headings that exist (GitHub's anchor rules). Fast and offline: web links are not followed."""

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")
CODE_SPAN = re.compile(r"(`+).*?\1")
# [text](target) or ![alt](target), target up to the first space or closing parenthesis;
# a target may hold one level of balanced parentheses.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?((?:[^()\s<>]|\([^()\s]*\))+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation and symbols
    removed (letters, decimal digits, '-', '_' and spaces kept), each space turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = "".join(c for c in text
                   if c in "-_ " or unicodedata.category(c)[0] == "L" or unicodedata.category(c) in ("Nd", "Mn", "Mc"))
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file: heading slugs (repeats get -1, -2, ...) and HTML ids."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of each link in prose, code spans left out."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        bare = CODE_SPAN.sub("", line)
        found += [(number, target) for target in LINK.findall(bare)]
        match = REFERENCE.match(bare)
        if match:
            found.append((number, match.group(1)))
    return found


def is_external(target: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) is not None or target.startswith("//")


def problems(page: Path) -> list[str]:
    bad = []
    for number, target in links(page):
        if is_external(target):
            continue
        file_part, _, anchor = target.partition("#")
        where = f"{page.relative_to(ROOT)}:{number}: ({target})"
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            bad.append(f"{where} no such file {file_part}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            bad.append(f"{where} no heading #{anchor} in {linked.relative_to(ROOT)}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page):
    bad = problems(page)
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_checker_sees_links_and_anchors():
    """The checker itself: slugs follow GitHub's rules, and the pages do have links to check."""
    assert slug("Training on a pool you already have: `ampo train`") == "training-on-a-pool-you-already-have-ampo-train"
    assert slug("Curriculum: whole groups or Curry-DPO stages") == "curriculum-whole-groups-or-curry-dpo-stages"
    assert slug("GPM reward models (`ampo train-rm --head gpm`)") == "gpm-reward-models-ampo-train-rm---head-gpm"
    assert slug("Worked example (9 points, k = 3, positive = 6)") == "worked-example-9-points-k--3-positive--6"
    assert sum(1 for page in PAGES for _, target in links(page) if not is_external(target)) > 20
