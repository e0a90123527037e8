import json

import pytest

from neko.io import atomic_dir, atomic_write_json


def test_atomic_write_json_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "x.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": "ünï"})
    assert json.loads(p.read_text(encoding="utf-8")) == {"a": "ünï"}
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]


def test_atomic_dir_publishes_on_success_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp directory survives

    out.mkdir()  # an empty target is fine (created by a user or an earlier aborted call)
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (out / "config.json").is_file() and [p.name for p in tmp_path.iterdir()] == ["model"]

    with pytest.raises(ValueError, match="not empty; choose a new output directory"):
        with atomic_dir(out):
            pass
