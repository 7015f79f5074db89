"""The repository's shape: the tests stand on the package alone."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_tests_do_not_import_benchmarks():
    offenders = {
        p.name: sorted(m for m in _imported_modules(p) if m.split(".")[0] == "benchmarks")
        for p in (ROOT / "tests").glob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_no_citations_of_a_design_file_that_is_not_here():
    files = [*(ROOT / "yolo_nexp").rglob("*.py"), ROOT / "README.md"]
    assert not (ROOT / "DESIGN.md").exists()
    assert [str(f.relative_to(ROOT)) for f in files if "DESIGN.md" in f.read_text()] == []
