"""Every shipped training config loads and validates, and its header shows the exact command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neko.paths import REPO_ROOT
from neko.train.config import load_config

CONFIGS = sorted((REPO_ROOT / "configs" / "train").glob("*.yaml"))
ACCEL = sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_train_config_loads_and_documents_its_command(path: Path):
    load_config(path)
    assert f"neko train configs/train/{path.name}" in path.read_text()


def test_expected_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert "neko_smollm2_cpu.yaml" in names
    assert {n.split("_")[0] for n in names} >= {"neko", "moe", "dense", "lora"}
    assert {p.stem for p in ACCEL} >= {"ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"}


@pytest.mark.parametrize("path", ACCEL, ids=lambda p: p.name)
def test_accelerate_config_is_valid_for_accelerate(path: Path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))  # what `accelerate launch` runs; rejects unknown keys
    assert cfg.distributed_type.value in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
    data = yaml.safe_load(path.read_text())
    if data["distributed_type"] == "DEEPSPEED":
        assert data["deepspeed_config"]["zero_stage"] in (2, 3)
    assert f"--config_file configs/accelerate/{path.name}" in path.read_text()
