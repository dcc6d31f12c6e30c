"""The project's promises about itself: the README's commands and CI agree, the dependency pins hold."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    import importlib.metadata

    import lightbert

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.6.3")
    with pytest.raises(ImportError, match="lightning>=2.6.6"):
        lightbert._check_lightning()
