"""Imports run one way: the import-linter contracts of pyproject.toml, in the default test run.

math -> model plumbing -> pipeline -> inputs/outputs -> applications (shapes,
benchmark, ui; independent of each other) -> command line; no cycle between
sibling modules. A back-import (say ``ui`` importing ``cli``) fails here, with
import-linter's report of the offending chain in the captured output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    # in a child process: import-linter changes the logging setup of the process it runs in
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"an import-linter contract is broken:\n{run.stdout}{run.stderr}"


def test_nothing_imports_the_command_line():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("gooddrag", cache_dir=None)
    importers = graph.find_modules_that_directly_import("gooddrag.cli")
    # the one exception: the script behind `python -m gooddrag.ui`, which is never imported
    assert importers == {"gooddrag.ui.__main__"}
    assert not graph.chain_exists(importer="gooddrag.benchmark", imported="gooddrag.cli", as_packages=True)


def test_ui_is_a_package_of_small_files_and_functions():
    import ast

    folder = ROOT / "src" / "gooddrag" / "ui"
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert {"state.py", "engine.py", "page.py"} <= set(sizes)
    assert max(sizes.values()) <= 420, sizes
    long = [f"{p.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in folder.glob("*.py") for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 85]
    assert not long, long
