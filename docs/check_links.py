"""Checks every link inside a built HTML site (the Sphinx output): no dead internal links.

    python docs/check_links.py docs/_build/html

For every ``<a href>``, ``<link href>``, ``<img src>`` and ``<script src>`` of
every ``.html`` page under the directory, except external ones (any URL with a
scheme, such as ``https:``, ``mailto:``, ``data:`` or ``javascript:``, or with a
host, ``//host/...``), it checks that the target file exists inside the
directory (a directory stands for its ``index.html``) and, when the link has a
``#fragment`` and the target is an HTML page, that this page has an element
with that ``id`` (or an ``<a name=...>``). A bare ``#`` is not checked.

Prints each broken link with the page it is on and exits with status 1 if there
is any; otherwise prints one summary line and exits with 0 (2: bad usage).
Standard library only: it runs without Sphinx.
"""

from __future__ import annotations

import argparse
import os
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple, Optional, Sequence
from urllib.parse import unquote, urlsplit

LINK_ATTRIBUTES = {"a": "href", "link": "href", "img": "src", "script": "src"}


class Broken(NamedTuple):
    page: str  # the page the link is on, relative to the site's root
    url: str  # the link as written
    reason: str


class _Page(HTMLParser):
    """Collects a page's links (tag, URL) and its anchors (ids and <a name>)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.anchors.add(values["id"])
        if tag == "a" and values.get("name"):
            self.anchors.add(values["name"])
        attribute = LINK_ATTRIBUTES.get(tag)
        if attribute and values.get(attribute) is not None:
            self.links.append((tag, values[attribute].strip()))

    handle_startendtag = handle_starttag


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    page.close()
    return page


def _external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme or parts.netloc)


def check_site(root: os.PathLike | str) -> tuple[list[Broken], int, int]:
    """Checks every page under ``root``; returns (broken links, pages, internal links checked)."""
    root = Path(root).resolve()
    pages = sorted(p for p in root.rglob("*.html") if p.is_file())
    parsed: dict[Path, _Page] = {}

    def page_of(path: Path) -> _Page:
        if path not in parsed:
            parsed[path] = _parse(path)
        return parsed[path]

    broken: list[Broken] = []
    checked = 0
    for source in pages:
        name = source.relative_to(root).as_posix()
        for _tag, url in page_of(source).links:
            if url in ("", "#") or _external(url):
                continue
            checked += 1
            parts = urlsplit(url)
            fragment = unquote(parts.fragment)
            if parts.path:
                target = (source.parent / unquote(parts.path)).resolve()
                if target != root and root not in target.parents:
                    broken.append(Broken(name, url, "points outside the site"))
                    continue
                if target.is_dir():
                    target = target / "index.html"
                if not target.is_file():
                    broken.append(Broken(name, url, f"no file {target.relative_to(root).as_posix()}"))
                    continue
            else:
                target = source  # "#id", or "?query": this page
            if fragment and target.suffix == ".html" and fragment not in page_of(target).anchors:
                where = "this page" if target == source else target.relative_to(root).as_posix()
                broken.append(Broken(name, url, f"no id {fragment!r} in {where}"))
    return broken, len(pages), checked


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Check the internal links of a built HTML site.")
    parser.add_argument("site", help="the HTML output directory (e.g. docs/_build/html)")
    args = parser.parse_args(argv)
    root = Path(args.site)
    if not root.is_dir():
        print(f"check_links: {root} is not a directory", file=sys.stderr)
        return 2
    broken, pages, checked = check_site(root)
    if not pages:
        print(f"check_links: no .html pages under {root}", file=sys.stderr)
        return 2
    for b in broken:
        print(f"{b.page}: broken link {b.url!r}: {b.reason}")
    if broken:
        print(f"{len(broken)} broken link(s) in {pages} pages ({checked} internal links checked)")
        return 1
    print(f"{pages} pages, {checked} internal links checked, none broken")
    return 0


if __name__ == "__main__":
    sys.exit(main())
