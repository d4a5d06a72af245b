"""The documentation holds together: every relative link of README.md, docs/ and tests/README.md
points to an existing file, the README stays short, and it links every page of docs/."""

from __future__ import annotations

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
PAGES = [README, os.path.join(ROOT, "tests", "README.md"), *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), images included


def links(path: str):
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)  # code blocks hold no links
    for target in LINK.findall(text):
        if not re.match(r"(https?:|mailto:|#)", target):
            yield target.split("#", 1)[0]


def test_every_relative_link_points_to_an_existing_file():
    assert len(DOCS) >= 12, DOCS
    dead = [
        f"{os.path.relpath(page, ROOT)}: {target}"
        for page in PAGES
        for target in links(page)
        if not os.path.exists(os.path.join(os.path.dirname(page), target))
    ]
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_link_checker_sees_a_dead_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md#top) [web](https://example.com) [anchor](#x) [dead](nope/missing.md#y)\n")
    assert list(links(str(page))) == ["page.md", "nope/missing.md"]


def test_readme_is_short():
    lines = open(README).read().count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move details to docs/"


def test_readme_links_every_docs_page():
    linked = {os.path.normpath(os.path.join(ROOT, target)) for target in links(README)}
    missing = [os.path.relpath(page, ROOT) for page in DOCS if os.path.normpath(page) not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"
