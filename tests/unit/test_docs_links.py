"""Every relative link and #anchor in README.md and docs/*.md leads somewhere: the file exists
in the repository and the anchor is a heading of it (as GitHub makes heading anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces
    as hyphens, a repeated one suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _prose(path.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_docs_folder_holds_the_reference_pages() -> None:
    assert {p.name for p in DOCS} >= {"README.md", "api.md", "settings.md", "performance.md"}


def test_anchors_follow_githubs_rules(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# genq\n## Models, params and prices\n## Limits\n## Limits\n"
                    "```sh\n# a comment, not a heading\n```\n")
    assert anchors(page) == {"genq", "models-params-and-prices", "limits", "limits-1"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    found = links(doc)
    broken = []
    for target in found:
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        found_file = not file.startswith("/") and dest.is_relative_to(ROOT) and dest.exists()
        if not found_file or (anchor and (dest.suffix != ".md" or anchor not in anchors(dest))):
            broken.append(target)
    assert found
    assert broken == []


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    assert [p.name for p in DOCS[1:] if p not in linked] == []
