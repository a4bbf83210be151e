"""Sphinx configuration for pyrnn's documentation site.

Build (CI does this, warnings as errors, then checks every link inside the site):

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
    python docs/check_links.py docs/_build/html

Pages are Markdown (MyST), so the guide reads the same on GitHub; the API
reference is generated from the docstrings by autodoc, from the installed
package (the compiled extension is needed: install pyrnn first).
"""

from __future__ import annotations

import os
import sys

import pyrnn

project = "pyrnn"
author = "the pyrnn developers"
copyright = "2026, the pyrnn developers"
release = pyrnn.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: $...$ math, ::: fences, and anchors for headings down to ###, so that
# [text](page.md#a-heading) links are checked at build time.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# autodoc: members in source order; signatures from the code. No base classes
# ("Bases: ..."): they would name private classes (pyrnn._module.Module, the
# torch mixins); the public classes show the methods they inherit instead
# (docs/api/*.md: :inherited-members:). Note that autodoc treats any value of a
# flag option here, False included, as "on": leave a flag out to turn it off.
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # defaults as written: dtype=np.float32, not <class 'numpy.float32'>
# NumPy's typing aliases are unions: show their names, not their expansions
# (pyrnn.reservoir's signatures would otherwise spell out ArrayLike's 7 members).
autodoc_type_aliases = {
    "npt.ArrayLike": "numpy.typing.ArrayLike",
    "npt.DTypeLike": "numpy.typing.DTypeLike",
    "ArrayLike": "numpy.typing.ArrayLike",
    "NDArray": "numpy.typing.NDArray",
}
# Sphinx 9.0 writes such an alias inside a union (``Optional[ArrayLike]``) as
# "TypeAliasForwardRef('numpy.typing.ArrayLike') | None", a reference to nothing:
# make the placeholder print as the alias's name.
try:
    from sphinx.util.inspect import TypeAliasForwardRef as _AliasRef
except ImportError:  # (a later Sphinx without the placeholder)
    pass
else:
    _AliasRef.__repr__ = lambda self: self.name

# Every cross-reference must resolve (-n): references to other projects'
# objects are not checked (no intersphinx: CI builds offline).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|torch|jax|jaxlib|keras|onnx|onnxruntime|typing|collections|builtins)(\..*)?"),
    (r"py:class", r"(int|float|bool|str|bytes|object|tuple|list|dict|None|callable|Callable|Sequence|Iterable|optional)"),
]


def _bench_options(app, what, name, obj, options, lines):
    """Appends ``python -m pyrnn.bench --help`` to the docstring of pyrnn.bench.main
    (docs/api/bench.md), so the documented options are the parser's own. Formatted
    for 8 cores and 100 columns, whatever the machine that builds the docs. (Connected
    in setup(), at the end of this file.)"""
    if name != "pyrnn.bench.main":
        return
    from unittest import mock

    import pyrnn.bench.cli as cli

    with mock.patch.object(cli, "available_cores", lambda: 8), mock.patch.dict(os.environ, {"COLUMNS": "100"}):
        text = cli.build_parser().format_help()
    lines += ["", "Options (``python -m pyrnn.bench --help``)::", ""]
    lines += ["    " + line if line.strip() else "" for line in text.splitlines()]


html_theme = "furo"
html_title = f"pyrnn {release}"
html_static_path: list[str] = []


# Smart quotes, but no "--" -> en dash: command lines in plain text (the bench reports' "- command:"
# lines, "--peers" in prose) must stay copyable.
smartquotes_action = "qe"


# bench/*.md are pyrnn.bench's Markdown reports, included by the guide's pages. Their footnotes use '*'
# literally ("2*N*G*H*(I+H)", "- * variable lengths"), which Markdown reads as emphasis or a nested
# list: escape '*' in their list lines as they are included.
def _escape_bench_footnotes(app, relative_path, parent_docname, content):
    if "bench" in relative_path.parts and relative_path.suffix == ".md":
        content[0] = "\n".join(line.replace("*", "\\*") if line.startswith("- ") else line
                               for line in content[0].split("\n"))


def setup(app):
    app.connect("autodoc-process-docstring", _bench_options)  # docs/api/bench.md
    app.connect("include-read", _escape_bench_footnotes)
