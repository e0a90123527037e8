"""`neko train` on a bad config or an output it cannot write: one error, no traceback, work kept."""

from __future__ import annotations

import yaml

from neko.train.checkpoint import latest_checkpoint


def _yaml(path, train_file, out, **extra):
    cfg = {
        "mode": "dense",
        "model": {"base": "tiny:llama"},
        "data": {"train": [{"path": str(train_file)}], "max_seq_len": 256},
        "batch": {"micro_batch_size": 2},
        "max_steps": 4,
        "log": {"progress": False},
        "output_dir": str(out),
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_directory_or_binary_file_as_training_yaml(neko_cli, one_line_error, tmp_path):
    one_line_error(neko_cli("train", tmp_path), str(tmp_path), "is a directory; pass a training YAML file")
    binary = tmp_path / "train.yaml"
    binary.write_bytes(bytes(range(256)))
    one_line_error(neko_cli("train", binary), str(binary), "not UTF-8 text")


def test_an_unwritable_output_dir_is_one_line(neko_cli, one_line_error, read_only_dir, tmp_path, train_file):
    out = read_only_dir / "run"
    one_line_error(neko_cli("train", _yaml(tmp_path / "t.yaml", train_file, out)), str(out))


def test_a_disk_that_fills_mid_checkpoint_keeps_the_last_one(
    neko_cli, one_line_error, tmpfs, tmp_path, train_file
):
    # A tiny run's checkpoint is ~1.3 MB: the first fits, the second does not.
    out = tmpfs("1600k") / "run"
    res = neko_cli("train", _yaml(tmp_path / "t.yaml", train_file, out, save_every=1))
    one_line_error(res, "cannot write checkpoint", "No space left on device", "checkpoint-00000001 is intact")
    assert latest_checkpoint(out).name == "checkpoint-00000001"
    assert not list((out / "checkpoints").glob(".tmp-*"))
