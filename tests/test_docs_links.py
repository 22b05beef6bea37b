"""Every relative link in the README, the top-level guides and docs/*.md points at a file that exists,
and every #anchor at a heading of its target, named as GitHub names headings; the README's example
topology loads."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from mle_stream.core.topology import parse_topology

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where links are links."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        lines.append("" if fenced else re.sub(r"`[^`]*`(?!\])", "``", line))
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LN").replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    text = page.read_text(encoding="utf-8")
    # Inline code is blanked before links are read, but a link whose text is code must survive.
    text = re.sub(r"\[`([^`\]]*)`\]", r"[\1]", text)
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor in {resolved.name}")
    return broken


def test_slug_follows_github() -> None:
    assert slug("What ratio ≥ 0.5 would take") == "what-ratio--05-would-take"
    assert slug("Operators' commands") == "operators-commands"
    assert slug("The `mle.state` topic") == "the-mlestate-topic"
    assert slug("Canary, A/B and shadow") == "canary-ab-and-shadow"


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [bad](#nope) [gone](missing.md) `[code](missing.md)`\n"
                    "```\n[fenced](missing.md)\n```\n", encoding="utf-8")
    assert broken_links(page) == ["#nope: no heading with that anchor in page.md", "missing.md: no such file"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    assert page.exists(), f"{page.relative_to(REPO)} is missing"
    assert broken_links(page) == []


def test_the_readme_topology_loads() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(model: .*?)```", readme, re.S)
    assert example, "README.md has no example topology"
    topology = parse_topology(example.group(1), "README.md")
    assert (topology.model, topology.routing.backend) == ("fraud-detector", "gateway-api")
    assert [c.sequential is not None for c in topology.checks] == [True]
