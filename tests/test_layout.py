"""The import directions of the README's layout section, checked by import-linter's contracts
in pyproject.toml: the project keeps them, and each kind of breach is caught."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent))


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages under `root` (alexc/, runtime/alexc_runtime/)."""
    assert LINT_IMPORTS, "lint-imports is missing: install the dev extra (pip install -e .[dev])"
    # COLUMNS: one line per contract in the report.
    env = os.environ | {"PYTHONPATH": f"{root}{os.pathsep}{root / 'runtime'}", "COLUMNS": "400"}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_project_keeps_every_import_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """A copy of the packages and pyproject.toml, to break."""
    root = tmp_path_factory.mktemp("layout")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "alexc", root / "alexc", ignore=ignore)
    shutil.copytree(
        ROOT / "runtime" / "alexc_runtime", root / "runtime" / "alexc_runtime", ignore=ignore
    )
    shutil.copy(ROOT / "pyproject.toml", root)
    return root


@pytest.mark.parametrize(
    "module, bad_import, contract",
    [
        ("alexc/serial/graph_yaml.py", "from alexc.passes import lower", "serialisation never"),
        ("runtime/alexc_runtime/plan.py", "import alexc.errors", "the runtime never imports"),
        ("alexc/training/optim.py", "import typer", "only the CLI imports typer"),
        ("alexc/ir/core.py", "import alexc.ops", "the IR's types know nothing"),
        ("alexc/passes/compile.py", "import alexc.training.loop", "passes never import"),
        ("alexc/ops/lrn.py", "import alexc.passes.lower", "the op registry imports only"),
    ],
)
def test_a_bad_import_breaks_its_contract(copy, module, bad_import, contract):
    path = copy / module
    original = path.read_text()
    path.write_text(original + f"\n{bad_import}  # noqa\n")
    try:
        result = lint_imports(copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(contract in line for line in broken), result.stdout
