"""Every file a training run writes gets the mode the user's umask gives a new file (issue 23, item 8).

safetensors writes 0600 whatever the umask; torch.save, JSON and YAML files follow the umask. A run
must not leave a 0600 model.safetensors beside a 0644 optimizer.bin, nor anything more open than
the umask allows.
"""

from __future__ import annotations

import os
import stat

import pytest

from neko.train.config import config_from_dict
from neko.train.loop import train


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_of_a_run_takes_the_umask_mode(tmp_path, train_file, umask):
    out = tmp_path / "run"
    cfg = config_from_dict(
        {
            "mode": "lora",  # the adapter directory too, beside the merged weights
            "model": {"base": "tiny:llama"},
            "data": {"train": [{"path": str(train_file)}], "max_seq_len": 256},
            "batch": {"micro_batch_size": 2},
            "max_steps": 2,
            "save_every": 1,
            "log": {"progress": False},
            "output_dir": str(out),
        }
    )
    old = os.umask(umask)
    try:
        train(cfg)
    finally:
        os.umask(old)
    files = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    expected = {"file": 0o666 & ~umask, "dir": 0o777 & ~umask}
    # what the run writes: a checkpoint, the final model (merged and adapter), its logs and config
    for name in (
        "checkpoints/checkpoint-00000001/model.safetensors",
        "checkpoints/checkpoint-00000001/optimizer.bin",
        "checkpoints/checkpoint-00000001/random_states_0.pkl",
        "checkpoints/checkpoint-00000001/trainer_state.json",
        "model.safetensors",
        "adapter/adapter_model.safetensors",
        "config.json",
        "tokenizer.json",
        "neko_prompts.json",
        "neko_train.json",
        "train_config.yaml",
        "train_log.jsonl",
    ):
        assert name in files
    wrong = {
        name: oct(mode)
        for name, mode in files.items()
        if mode != expected["dir" if (out / name).is_dir() else "file"]
    }
    assert not wrong, f"under umask {umask:03o}: {wrong}"
    assert not [n for n in files if ".tmp" in n or "probe" in n]  # nothing temporary left behind
