"""Atomic writes: complete or absent, never half-written, with ordinary file permissions."""

import os
import stat

import pytest

from sidrepro.atomic import write_atomic, write_json_atomic


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    (tmp_path / "b.json").write_text("{}")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode)  # not mkstemp's owner-only 0600


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")

    def boom(handle):
        handle.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(target, boom)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]
