"""One version, in one leaf: ``diffvqa/version.py``. The package root, the package metadata (pyproject.toml reads it
without importing the package) and CITATION.cff say the same; the leaf imports nothing, so data/ and files/ read it
without climbing to the package root."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

import diffvqa
from diffvqa import version

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_root_reads_the_version_leaf():
    assert diffvqa.__version__ is version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version.__version__)


def test_the_version_leaf_imports_nothing():
    tree = ast.parse(Path(version.__file__).read_text(encoding="utf-8"))
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_pyproject_reads_the_version_from_the_leaf():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "diffvqa.version.__version__"}


def test_the_installed_metadata_and_the_citation_say_the_same_version():
    assert importlib.metadata.version("diffvqa") == version.__version__
    cited = re.search(r"^version: (\S+)$", (ROOT / "CITATION.cff").read_text(encoding="utf-8"), re.M)
    assert cited and cited.group(1) == version.__version__
