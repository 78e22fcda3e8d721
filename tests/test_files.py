"""The one atomic-write helper: complete results or nothing, and stale temporaries found."""

from __future__ import annotations

import os

import pytest

from s12mae.files import atomic_dir, atomic_path, atomic_write, remove_stale_temps


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_block_leaves_target_and_no_temporary(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write(target, b"kept")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"kept"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_dir_refuses_or_replaces_existing(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_dir(final):
            pass
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_remove_stale_temps_only_touches_temporaries(tmp_path):
    (tmp_path / "keep.txt").write_text("k")
    (tmp_path / ".keep-hidden").write_text("k")
    (tmp_path / ".a.json.x1.tmp.json").write_text("t")
    (tmp_path / ".ckpt.abc.tmp").mkdir()
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".a.json.x1.tmp.json", ".ckpt.abc.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep-hidden", "keep.txt"]


def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "shared.json", "{}")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o644
