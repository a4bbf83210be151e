"""docs/check_links.py (the docs site's internal link checker) on a synthetic two-page site: no Sphinx."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "check_links.py"


@pytest.fixture(scope="module")
def check_links():
    spec = importlib.util.spec_from_file_location("check_links", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_site(root, extra_links=""):
    (root / "api").mkdir()
    (root / "_static").mkdir()
    (root / "_static" / "style.css").write_text("body {}")
    (root / "index.html").write_text(
        '<html><head><link rel="stylesheet" href="_static/style.css">'
        '<link rel="preconnect" href="https://fonts.example.org"></head><body>'
        '<h1 id="top">Home</h1>'
        '<a href="api/page.html">page</a> <a href="api/page.html#pyrnn.LSTM">LSTM</a>'
        '<a href="api/page.html#old-anchor">by name</a> <a href="api/">api dir</a>'
        '<a href="#top">top</a> <a href="#">nothing</a> <a>no href</a>'
        '<a href="https://example.org/missing.html#nope">external</a> <a href="mailto:a@example.org">mail</a>'
        '<img src="data:image/png;base64,AAAA"> <a href="javascript:void(0)">js</a>'
        f"{extra_links}</body></html>")
    (root / "api" / "index.html").write_text('<html><body><a href="../index.html#top">home</a></body></html>')
    (root / "api" / "page.html").write_text(
        '<html><body><dt id="pyrnn.LSTM">LSTM</dt><a name="old-anchor"></a>'
        '<a href="../index.html">home</a><script src="../_static/missing.js"></script></body></html>')


def test_ok_links_and_a_missing_script(check_links, tmp_path):
    write_site(tmp_path)
    broken, pages, checked = check_links.check_site(tmp_path)
    assert pages == 3
    # index: stylesheet, 4 links to api/, #top; api/index: 1; api/page: home and the script
    assert checked == 9
    assert [(b.page, b.url) for b in broken] == [("api/page.html", "../_static/missing.js")]


def test_missing_file_and_missing_fragments(check_links, tmp_path):
    write_site(tmp_path, '<a href="api/gone.html">gone</a> <a href="api/page.html#pyrnn.GRU">GRU</a>'
                         '<a href="#nowhere">nowhere</a> <img src="_static/logo.png">')
    broken, _, _ = check_links.check_site(tmp_path)
    reasons = {(b.page, b.url): b.reason for b in broken}
    assert reasons == {
        ("index.html", "api/gone.html"): "no file api/gone.html",
        ("index.html", "api/page.html#pyrnn.GRU"): "no id 'pyrnn.GRU' in api/page.html",
        ("index.html", "#nowhere"): "no id 'nowhere' in this page",
        ("index.html", "_static/logo.png"): "no file _static/logo.png",
        ("api/page.html", "../_static/missing.js"): "no file _static/missing.js",
    }


def test_command_line(tmp_path):
    write_site(tmp_path)
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1
    assert "api/page.html: broken link '../_static/missing.js'" in run.stdout
    (tmp_path / "_static" / "missing.js").write_text("")
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert run.stdout.strip() == "3 pages, 9 internal links checked, none broken"
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "absent")], capture_output=True, text=True)
    assert run.returncode == 2
