"""The house's layout: documents the code and docs cite exist in the repository; imports flow one way; a module that
moved is imported from where it lives, not from its old path."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "diffvqa"
# Documents a reference may name before they land: each entry says who writes it. Remove it once the file exists.
WRITTEN_ELSEWHERE: dict[str, str] = {}
OUTPUTS = {
    "study.md",
    "comparison.md",
    "pretrain.md",
}  # files diffvqa writes (study, evaluate, pretrain), not documents
# a path-like token that names a document: optional directories, a name, .md (DESIGN.md, docs/data.md, ../x.md)
DOCUMENT = re.compile(r"(?<![\w/.-])((?:\.{1,2}/)?(?:[\w.-]+/)*[\w.-]+\.md)\b")
SHARED = re.compile(r"\.\./shared\b")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".js", ".html", ".css", ".cff", ".txt"}


def _texts() -> list[Path]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for directory in (SRC, ROOT / "tests", ROOT / "benchmarks"):
        paths += [
            p for p in sorted(directory.rglob("*")) if p.suffix in TEXT_SUFFIXES and "node_modules" not in p.parts
        ]
    return [p for p in paths if p != Path(__file__).resolve()]


def _missing_documents(path: Path) -> list[str]:
    """The documents ``path`` cites that the repository does not hold (a name is looked up from the repository's
    root and from the citing file's folder, as a relative link is)."""
    text = path.read_text(encoding="utf-8")
    missing = [f"{path}: {m.group(0)!r} (outside the repository)" for m in SHARED.finditer(text)]
    for match in DOCUMENT.finditer(text):
        name = match.group(1)
        if (
            name in WRITTEN_ELSEWHERE
            or Path(name).name in OUTPUTS
            or any((base / name).resolve().is_file() for base in (ROOT, path.parent))
        ):
            continue
        missing.append(f"{path}: {name!r}")
    return missing


def test_every_cited_document_is_in_the_repository():
    """A docstring, comment or doc that cites DESIGN.md, ../shared/... or any other document the repository does not
    hold fails here: whoever has only the repository must be able to follow every reference."""
    missing = [m for path in _texts() for m in _missing_documents(path)]
    assert missing == [], "\n".join(missing)


def test_the_reference_check_catches_an_outside_document(tmp_path):
    probe = tmp_path / "probe.md"
    probe.write_text("The method: DESIGN.md item 7; the notes in ../shared/STYLE.md; [data](docs/data.md).\n")
    missing = _missing_documents(probe)
    assert any("'DESIGN.md'" in m for m in missing) and any("../shared" in m for m in missing)
    assert not any("docs/data.md" in m for m in missing)  # a document the repository holds


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # a Markdown link or picture: [text](target)


def _anchors(document: Path) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", document.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def _broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        name, _, fragment = target.partition("#")
        document = (path.parent / name).resolve() if name else path
        if not document.exists():
            broken.append(f"{path.name}: {target} (no such file)")
        elif fragment and document.suffix == ".md" and fragment not in _anchors(document):
            broken.append(f"{path.name}: {target} (no such heading)")
    return broken


def test_every_link_of_the_readme_and_the_docs_resolves():
    """Relative links and pictures name files that exist, and a #fragment names a heading of its document."""
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert [broken for path in documents for broken in _broken_links(path)] == []


def test_the_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# A heading: with (punctuation)\n")
    probe = tmp_path / "probe.md"
    probe.write_text("[ok](a.md#a-heading-with-punctuation) [file](b.md) [heading](a.md#nothing) [web](https://x.org)")
    assert _broken_links(probe) == ["probe.md: b.md (no such file)", "probe.md: a.md#nothing (no such heading)"]


# errors <- config <- files <- data <- model <- saliency <- metrics <- report/viewer <- commands <- cli: a module may
# import its own layer and earlier ones. Every top-level module and package has a layer here.
LAYERS = {"version": 0, "errors": 0, "device": 1, "config": 1, "precision": 2, "files": 2, "data": 3}
LAYERS |= {"files.model_card": 4}  # a checkpoint's card describes the prepared cache it was trained on: after data
LAYERS |= {"model": 5, "saliency": 6, "metrics": 7, "report": 8, "viewer": 8, "api": 8, "commands": 9, "cli": 10}
TOP_LEVEL_MODULES = 8  # __init__ included: cli, config, errors, api, device, precision, ...


def _layer(module: str, importing: bool = False) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package root is the public facade (diffvqa.load); the version is diffvqa.version's
        return LAYERS["cli"]
    for name in (".".join(parts[1:3]), parts[1]):
        if name in LAYERS:
            return LAYERS[name]
    raise AssertionError(f"{module} has no layer in tests/test_layout.py: LAYERS")


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_imports_flow_one_way():
    """No module imports one of a later layer, not even lazily inside a function."""
    backwards = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffvqa"):
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("diffvqa")]
            else:
                continue
            backwards += [f"{module} imports {t}" for t in targets if _layer(t) > _layer(module, importing=True)]
    assert backwards == []


def test_the_top_level_holds_few_modules_and_every_room_has_a_layer():
    modules = sorted(p.stem for p in SRC.glob("*.py"))
    assert len(modules) <= TOP_LEVEL_MODULES, modules
    rooms = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())
    assert [name for name in modules + rooms if name != "__init__" and name not in LAYERS] == []


# modules that moved, at the import paths they had: a module has one name, where it lives (no aliases)
MOVED = {
    "diffvqa.scoring": "diffvqa.metrics.pointing",
    "diffvqa.mechanisms": "diffvqa.metrics.mechanisms",
    "diffvqa.intervals": "diffvqa.metrics.intervals",
    "diffvqa.meteor_nltk": "diffvqa.metrics.meteor_nltk",
    "diffvqa.visualize": "diffvqa.report.drawing",
    "diffvqa.plot": "diffvqa.report.curves",
    "diffvqa.data.cache": "diffvqa.data.cache_writer",
    "diffvqa.data.image_cache": "diffvqa.data.cache_reader",
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_moved_module_is_imported_from_where_it_lives(old):
    assert importlib.util.find_spec(MOVED[old]) is not None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)
