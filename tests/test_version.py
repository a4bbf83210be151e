"""One version source: pyrnn/_version.py, read by the build (pyproject.toml), by
``pyrnn.__version__`` and by show_config, and named by CHANGELOG.md's latest entry."""

import importlib.metadata
import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest

import pyrnn
from pyrnn import _version

ROOT = Path(__file__).resolve().parents[1]
# PEP 440 public versions (release, optional pre/post/dev segments)
PEP440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")


def test_version_is_pep440_and_read_from_the_one_source():
    assert PEP440.match(pyrnn.__version__), pyrnn.__version__
    assert pyrnn.__version__ == _version.__version__


def test_installed_metadata_carries_the_same_version():
    assert importlib.metadata.version("pyrnn") == pyrnn.__version__


def test_show_config_names_the_version():
    out = io.StringIO()
    with redirect_stdout(out):
        pyrnn.show_config()
    assert out.getvalue().splitlines()[0] == f"pyrnn {pyrnn.__version__}"


def test_pyproject_reads_the_version_from_the_source_file():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    provider = meta["tool"]["scikit-build"]["metadata"]["version"]
    assert provider["provider"] == "scikit_build_core.metadata.regex"
    assert provider["input"] == "pyrnn/_version.py"
    assert Path(_version.__file__).parts[-2:] == ("pyrnn", "_version.py")


def test_changelog_latest_entry_is_this_version():
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert headings, "CHANGELOG.md has no '## <version>' entries"
    assert headings[0] == pyrnn.__version__, (headings[0], pyrnn.__version__)
    assert len(headings) == len(set(headings)), headings


def test_license_file_is_mit():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
