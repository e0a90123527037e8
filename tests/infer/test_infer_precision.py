"""`--precision` on correct / serve: bf16 weights decode and rescore on a CPU; auto is resolved and named."""

from __future__ import annotations

import json
import math

import pytest
import torch
from infer_helpers import sample_rows, write_rows
from typer.testing import CliRunner

from neko.cli import app
from neko.infer.correct import Corrector
from neko.infer.options import CorrectionOptions, resolve_dtype
from neko.model.precision import resolve_precision


def test_bf16_corrects_and_rescores_on_cpu(model_dir):
    opts = CorrectionOptions(dtype="bf16", max_new_tokens=6, batch_size=4, guard="off")
    c = Corrector.from_pretrained(model_dir, opts)
    assert c.model.dtype is torch.bfloat16 and c.precision.describe() == "precision bf16 (as requested)"
    rows = sample_rows(6)
    out = c.run([c.prepare(r, index=i) for i, r in enumerate(rows)], all_outputs=True)
    assert all(r.ok and r.generated is not None for r in out)
    nbest = [r for r in out if r.scores is not None and len(r.scores.hypotheses) > 1]
    assert nbest and all(math.isfinite(x) for r in nbest for x in r.scores.cond + r.scores.lm)


def test_auto_follows_this_machine_and_torch_names_still_work(model_dir):
    c = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=4))
    assert c.precision == resolve_precision("auto", "cpu")
    assert (
        resolve_dtype("float32", "cpu") is torch.float32
        and resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    )
    with pytest.raises(ValueError, match="precision \\(dtype\\) must be one of auto, fp32, bf16, fp16"):
        CorrectionOptions(dtype="int4")


def test_cli_precision_is_printed_and_recorded(tmp_path, model_dir):
    src = write_rows(tmp_path / "in.jsonl", sample_rows(4))
    out = tmp_path / "out.jsonl"
    args = ["correct", "--model", str(model_dir), "--input", str(src), "--output", str(out)]
    res = CliRunner().invoke(app, [*args, "--max-new-tokens", "4", "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    assert "precision bf16 (as requested)" in res.output
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert summary["precision"] == "bf16" and summary["rows"] == 4
    bad = CliRunner().invoke(app, [*args, "--precision", "bf17", "--overwrite"])
    assert bad.exit_code == 2 and "must be one of auto, fp32, bf16, fp16, got 'bf17'" in bad.output
