"""Files lightbert writes are the user's: modes from the umask (0644/0755 under 022), a replaced file's own mode kept,
a symlinked output written through to its target, and a write the system refuses said in one line with nothing
left behind."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from helpers import assert_one_error_line, file_size_limit, run_cli

from lightbert.errors import LightbertError
from lightbert.safety import atomic_write, staged_directory


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_hello(path: Path) -> None:
    atomic_write(path, lambda f: f.write(b"hello\n"))


def test_a_new_file_gets_the_umasks_mode(tmp_path, umask_022):
    write_hello(tmp_path / "out.jsonl")
    assert mode(tmp_path / "out.jsonl") == 0o644


def test_a_new_file_under_a_stricter_umask_is_private(tmp_path):
    previous = os.umask(0o077)
    try:
        write_hello(tmp_path / "out.jsonl")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "out.jsonl") == 0o600


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_022):
    (tmp_path / "out.jsonl").write_text("old\n")
    (tmp_path / "out.jsonl").chmod(0o640)
    write_hello(tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_text() == "hello\n" and mode(tmp_path / "out.jsonl") == 0o640


def test_a_symlinked_output_is_written_through_to_its_target(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "real.jsonl").write_text("old\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "data" / "real.jsonl")
    write_hello(tmp_path / "link.jsonl")
    assert (tmp_path / "link.jsonl").is_symlink()
    assert (tmp_path / "data" / "real.jsonl").read_text() == "hello\n"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["real.jsonl"]


def test_predict_output_gets_the_umasks_mode(trained_checkpoint, tmp_path, umask_022):
    result = run_cli("predict", trained_checkpoint, "a great film", "--output", tmp_path / "out.jsonl")
    assert result.code == 0, result.err
    assert mode(tmp_path / "out.jsonl") == 0o644


def test_an_exported_directory_and_its_files_get_the_umasks_modes(trained_checkpoint, tmp_path, umask_022):
    result = run_cli("export", trained_checkpoint, tmp_path / "exported")
    assert result.code == 0, result.err
    assert mode(tmp_path / "exported") == 0o755
    assert {p.name: mode(p) for p in (tmp_path / "exported").iterdir()} == {
        p.name: 0o644 for p in (tmp_path / "exported").iterdir()
    }


def test_an_overwritten_export_keeps_the_directorys_mode(trained_checkpoint, tmp_path, umask_022):
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "old.txt").write_text("old")
    (tmp_path / "exported").chmod(0o750)
    result = run_cli("export", trained_checkpoint, tmp_path / "exported", "--overwrite")
    assert result.code == 0, result.err
    assert mode(tmp_path / "exported") == 0o750 and not (tmp_path / "exported" / "old.txt").exists()


def test_a_symlinked_export_directory_is_replaced_where_it_points(trained_checkpoint, tmp_path):
    (tmp_path / "store" / "model").mkdir(parents=True)
    (tmp_path / "model").symlink_to(tmp_path / "store" / "model")
    result = run_cli("export", trained_checkpoint, tmp_path / "model")
    assert result.code == 0, result.err
    assert (tmp_path / "model").is_symlink() and (tmp_path / "store" / "model" / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["model"]


def test_predict_into_a_path_that_cannot_be_a_directory_is_one_line(trained_checkpoint, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    result = run_cli("predict", trained_checkpoint, "a great film", "--output", tmp_path / "file" / "out.jsonl")
    assert_one_error_line(result, str(tmp_path / "file"))


def test_an_export_the_disk_cannot_hold_is_one_line_and_leaves_nothing(trained_checkpoint, tmp_path):
    with file_size_limit(64 * 1024):  # the model's weights are ~250 kB
        result = run_cli("export", trained_checkpoint, tmp_path / "exported")
    assert_one_error_line(result, "cannot write directory", os.strerror(errno.EFBIG), "nothing was written")
    assert list(tmp_path.iterdir()) == []


def test_a_staged_directory_that_fills_the_disk_keeps_the_previous_one(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("kept")
    expected = r"disk full while writing directory .*the previous one is intact"
    with pytest.raises(LightbertError, match=expected), staged_directory(tmp_path / "out", overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (tmp_path / "out" / "kept.txt").read_text() == "kept"
