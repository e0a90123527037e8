"""A resume never runs what a checkpoint file says: a planted file for every shipped launcher layout
(DDP, FSDP2's sharded DCP directories, DeepSpeed ZeRO-2/3) is refused before any library reads it."""

from __future__ import annotations

import json
import pickle
import random
import warnings

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from neko.model.safeload import UnsafeCheckpoint, check_checkpoint_dir, check_pickle_bytes
from neko.train.checkpoint import STATE_FILE, load_checkpoint


class _Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _dcp_save(state, where):
    with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": intended
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(where), no_dist=True)


@pytest.fixture
def fsdp_ckpt(tmp_path):
    """What Accelerate's FSDP2 SHARDED_STATE_DICT save writes, made by the same DCP writer."""
    ckpt = tmp_path / "checkpoint-00000002"
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    _dcp_save(get_model_state_dict(m), ckpt / "pytorch_model_fsdp_0")
    _dcp_save(get_optimizer_state_dict(m, opt), ckpt / "optimizer_0")
    rng = {"random_state": random.getstate(), "numpy_random_seed": np.random.get_state()}
    torch.save({**rng, "torch_manual_seed": torch.get_rng_state()}, ckpt / "random_states_0.pkl")
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 2}))
    return ckpt


@pytest.fixture
def deepspeed_ckpt(tmp_path):
    """The layout of a DeepSpeed ZeRO-2/3 save_state (DeepSpeed loads these with weights_only=False)."""
    ckpt = tmp_path / "checkpoint-00000002"
    (ckpt / "pytorch_model").mkdir(parents=True)
    sd = torch.nn.Linear(4, 3).state_dict()
    torch.save({"module": sd, "ds_version": "0.16.0"}, ckpt / "pytorch_model" / "mp_rank_00_model_states.pt")
    torch.save(
        {
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3}]},
            "ds_config": {"zero_stage": 2},
        },
        ckpt / "pytorch_model" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
    )
    (ckpt / "pytorch_model" / "latest").write_text("pytorch_model")
    torch.save({"torch_manual_seed": torch.get_rng_state()}, ckpt / "random_states_0.pkl")
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 2}))
    return ckpt


def test_real_fsdp_and_deepspeed_layouts_pass(fsdp_ckpt, deepspeed_ckpt):
    check_checkpoint_dir(fsdp_ckpt)
    check_checkpoint_dir(deepspeed_ckpt)


@pytest.mark.parametrize("shard_dir", ["pytorch_model_fsdp_0", "optimizer_0"])
def test_a_planted_dcp_metadata_is_refused_unread(fsdp_ckpt, tmp_path, shard_dir):
    from torch.distributed.checkpoint import FileSystemReader

    marker = tmp_path / "pwned"
    (fsdp_ckpt / shard_dir / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=rf"{shard_dir}/\.metadata: names builtins\.exec; not loaded"):
        load_checkpoint(None, fsdp_ckpt)  # refused before the accelerator is touched
    assert not marker.exists()
    with pytest.raises(AttributeError):  # the library itself runs it, then fails on what it built
        FileSystemReader(str(fsdp_ckpt / shard_dir)).read_metadata()
    assert marker.exists()


def test_a_planted_non_tensor_dcp_entry_is_refused(fsdp_ckpt, tmp_path):
    """DCP stores non-tensor entries as torch.save blobs and loads them with weights_only=False."""
    marker = tmp_path / "pwned"
    _dcp_save({"w": torch.zeros(2), "extra": _Payload(marker)}, fsdp_ckpt / "optimizer_0")
    assert not marker.exists()
    with pytest.raises(
        ValueError, match=r"optimizer_0/__0_0\.distcp@\d+ \(data\.pkl\): names builtins\.exec"
    ):
        load_checkpoint(None, fsdp_ckpt)
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(
            {"w": torch.zeros(2), "extra": None}, checkpoint_id=str(fsdp_ckpt / "optimizer_0"), no_dist=True
        )
    assert marker.exists()  # proof the plant is live


@pytest.mark.parametrize(
    "name",
    [
        "random_states_0.pkl",
        "scheduler.bin",
        "sampler.bin",
        "optimizer.bin",
        "pytorch_model.bin",
        "custom_checkpoint_0.pkl",
        "pytorch_model/mp_rank_00_model_states.pt",
        "pytorch_model/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ],
)
def test_every_planted_pickle_is_refused(deepspeed_ckpt, tmp_path, name):
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), deepspeed_ckpt / name)
    with pytest.raises(ValueError, match=rf"{name}(\s\(.*\))?: (names builtins\.exec|neko does not load)"):
        load_checkpoint(None, deepspeed_ckpt)
    assert not marker.exists()


def test_unresolvable_or_legacy_pickles_are_refused(tmp_path):
    import io

    # STACK_GLOBAL whose strings are not pushed right before it: cannot be checked, so refused
    sneaky = b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94h\x00h\x01\x93" + b"0\x8c\x01x\x85R."
    with pytest.raises(UnsafeCheckpoint, match=r"x: names builtins\.exec"):
        check_pickle_bytes(sneaky, "x")
    swapped = b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94N0h\x01\x93."
    with pytest.raises(UnsafeCheckpoint, match="cannot resolve"):
        check_pickle_bytes(swapped, "y")
    buf = io.BytesIO()
    torch.save(torch.zeros(2), buf, _use_new_zipfile_serialization=False)
    (tmp_path / "old.bin").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeCheckpoint, match="old.bin: data after the pickle"):
        check_checkpoint_dir(tmp_path)


@pytest.fixture(scope="module")
def pickled_model_dir(tmp_path_factory):
    """A model directory whose only weights are a pytorch_model.bin that runs code when unpickled."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "infer"))
    from infer_helpers import make_model_dir

    d = make_model_dir(tmp_path_factory.mktemp("pickled"))
    (d / "model.safetensors").unlink()
    marker = d.parent / "pwned"
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, d / "pytorch_model.bin")
    return d


def _rows(path):
    row = {"id": "a", "task": "asr", "input": ["i like tea", "i like tee"], "output": "i like tea"}
    path.write_text(json.dumps(row) + "\n")
    return path


@pytest.mark.parametrize("command", ["correct", "serve", "train", "routing-report"])
def test_a_pickle_bearing_weights_file_is_one_line_without_unsafe_advice(
    neko_cli, one_line_error, pickled_model_dir, tmp_path, command
):
    """Issue 23.7: the error was a traceback ending in torch's advice to load it with weights_only=False."""
    d, rows = pickled_model_dir, _rows(tmp_path / "rows.jsonl")
    if command == "correct":
        res = neko_cli("correct", "--model", d, "--input", rows, "--output", tmp_path / "o.jsonl")
    elif command == "serve":
        res = neko_cli("serve", "--model", d, "--port", 0)
    elif command == "routing-report":
        res = neko_cli("routing-report", "--model", d, "--data", rows, "--out", tmp_path / "r")
    else:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"mode: dense\nmodel: {{base: {d}}}\ndata: {{train: [{{path: {rows}}}]}}\nmax_steps: 1\n"
            f"output_dir: {tmp_path / 'run'}\nlog: {{progress: false}}\n"
        )
        res = neko_cli("train", cfg)
    err = one_line_error(res, "pytorch_model.bin: names builtins.exec", "never runs a weights file's code")
    assert "weights_only" not in err and "Traceback" not in res.output
    assert not (d.parent / "pwned").exists()
