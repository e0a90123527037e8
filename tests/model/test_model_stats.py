"""Routing statistics: exact numbers on hand-made logits, padding invariance on a real tiny model, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from neko.cli import app
from neko.model.routing import enable_task_guided_routing
from neko.model.stats import RoutingStats, routing_report, write_routing_report
from neko.model.tiny import tiny_mixtral, tiny_tokenizer
from neko.schema import Example, write_jsonl
from neko.tasks import save_prompt_config


def test_stats_on_hand_made_logits():
    # 1 layer, E=4, K=2; tokens: 2 of task a (f=0), 1 of task b (f=3), 1 padding
    logits = torch.tensor(
        [
            [5.0, 4.0, 0.0, 0.0],  # a: top-2 {0,1}, f in top-2, top-1
            [0.0, 5.0, 4.0, 0.0],  # a: top-2 {1,2}, f missed
            [1.0, 0.5, 0.0, -0.5],  # b: top-2 {0,1}, f=3 missed
            [0.0, 0.0, 0.0, 9.0],  # padding: must not count
        ]
    )
    st = RoutingStats(["a", "b"], 4, 2, {"a": 0, "b": 3}, ["l0"])
    st.update([logits], torch.tensor([[0, 0, 1, 1]]), torch.tensor([[1, 1, 1, 0]]))
    rep = st.report()
    a, b, everything = (
        rep["layers"][0]["per_task"]["a"],
        rep["layers"][0]["per_task"]["b"],
        rep["layers"][0]["all"],
    )
    assert a["tokens"] == 2 and b["tokens"] == 1 and everything["tokens"] == 3
    assert a["load"] == [0.25, 0.5, 0.25, 0.0]
    assert a["dead_experts"] == [3]
    assert a["forced_in_topk"] == 0.5 and a["forced_is_top1"] == 0.5
    assert b["forced_in_topk"] == 0.0
    p = torch.softmax(logits[2], -1)
    assert b["entropy"] == pytest.approx(-(p * p.log()).sum().item(), abs=1e-6)
    assert b["normalized_entropy"] == pytest.approx(b["entropy"] / math.log(4), abs=1e-6)
    assert everything["dead_experts"] == [3]  # only the padding token chose 3
    assert rep["summary"]["dead_in_every_layer"] == [3]
    assert rep["summary"]["per_task"]["a"]["mean_forced_in_topk"] == 0.5
    json.dumps(rep)


def test_stats_errors():
    st = RoutingStats(["a"], 4, 2)
    with pytest.raises(ValueError, match="no statistics"):
        st.report()
    with pytest.raises(ValueError, match="task id 1"):
        st.update([torch.zeros(2, 4)], torch.tensor([[0, 1]]))


def _rows():
    out = []
    for i, task in enumerate(["asr", "ocr", "mt", "asr", "typo", "ocr", "tec-grammar"]):
        inp = ["hello world the", "hello word the"] if task == "asr" else "the speech text " * (1 + i % 3)
        out.append(
            Example(
                id=f"r{i}",
                task=task,
                input=inp,
                output="hello world",
                source_lang="English",
                target_lang="English",
                meta={},
            )
        )
    return out


def test_report_on_tiny_model_padding_invariant_and_token_counts():
    model, tok = tiny_mixtral(num_local_experts=6), tiny_tokenizer()
    enable_task_guided_routing(model, tasks=["asr", "mt", "ocr"], seed=0)
    rows = _rows()
    one = routing_report(model, rows, tok, batch_size=1)
    many = routing_report(model, rows, tok, batch_size=4)  # right padding inside batches
    assert one["tasks"] == ["asr", "mt", "ocr", "tec-grammar", "typo"]
    from neko.tasks import build_prompt

    expected_tokens = {}
    for r in rows:
        n = len(
            tok(build_prompt(r, tokenizer=tok) + r.output + tok.eos_token, add_special_tokens=False).input_ids
        )
        expected_tokens[r.task] = expected_tokens.get(r.task, 0) + n
    for la, lb in zip(one["layers"], many["layers"], strict=True):
        for t in one["tasks"]:
            pa, pb = la["per_task"][t], lb["per_task"][t]
            assert pa["tokens"] == pb["tokens"] == expected_tokens[t]
            assert pa["load"] == pytest.approx(pb["load"], abs=1e-4)
            assert sum(pa["load"]) == pytest.approx(1.0, abs=1e-4)
            assert (
                pa["forced_in_topk"] == pytest.approx(pb["forced_in_topk"], abs=1e-4)
                if t
                in (
                    "asr",
                    "mt",
                    "ocr",
                )
                else pa["forced_in_topk"] is None
            )
    assert [lay["layer"] for lay in one["layers"]] == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]


def test_report_skips_dense_layers_of_qwen2_moe():
    from test_model_routing import tiny_qwen2_moe

    model = tiny_qwen2_moe()  # layer 0 dense
    enable_task_guided_routing(model, tasks=["asr", "ocr"], weighting="full_softmax")
    rep = routing_report(model, _rows(), tiny_tokenizer())
    assert [lay["layer"] for lay in rep["layers"]] == ["model.layers.1.mlp.gate", "model.layers.2.mlp.gate"]
    assert len(rep["summary"]["per_task"]["asr"]["mean_load"]) == 6


def test_write_report_png_is_a_readable_image(tmp_path):
    model, tok = tiny_mixtral(), tiny_tokenizer()
    enable_task_guided_routing(model, tasks=["asr", "mt", "ocr"])
    rep = routing_report(model, _rows(), tok, max_rows=4)
    assert rep["rows"] == 4
    js, png = write_routing_report(rep, tmp_path / "out")
    assert json.loads(js.read_text())["tasks"] == rep["tasks"]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200


def test_cli_routing_report(tmp_path):
    model, tok = tiny_mixtral(), tiny_tokenizer()
    enable_task_guided_routing(model, tasks=["asr", "mt", "ocr", "tec-grammar", "tec-coherence"])
    mdir = tmp_path / "model"
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    save_prompt_config(mdir)
    data = tmp_path / "rows.jsonl"
    write_jsonl(_rows(), data)
    res = CliRunner().invoke(
        app, ["routing-report", "--model", str(mdir), "--data", str(data), "--out", str(tmp_path / "rep")]
    )
    assert res.exit_code == 0, res.output
    assert "f(T)=0 in top-2" in res.output and "typo" in res.output
    rep = json.loads((tmp_path / "rep" / "routing_report.json").read_text())
    assert rep["task_to_expert"]["tec-coherence"] == 4 and rep["rows"] == 7
    assert (tmp_path / "rep" / "routing_heatmap.png").stat().st_size > 1000

    bad = CliRunner().invoke(
        app, ["routing-report", "--model", str(tmp_path), "--data", str(data), "--out", "x"]
    )
    assert bad.exit_code == 2 and "no config.json" in bad.output
    missing = CliRunner().invoke(
        app, ["routing-report", "--model", str(mdir), "--data", str(tmp_path / "nope.jsonl"), "--out", "x"]
    )
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_max_rows_spreads_over_tasks_so_a_task_grouped_file_shows_every_task():
    from neko.model.stats import spread_over_tasks

    grouped = sorted(_rows(), key=lambda e: e.task)  # like the benchmark files: one task after another
    picked = spread_over_tasks(grouped, 5)
    assert [e.task for e in picked] == ["asr", "mt", "ocr", "tec-grammar", "typo"]
    assert [e.id for e in spread_over_tasks(grouped, 7)][-2:] == ["r3", "r5"]  # second asr, second ocr
    assert len(spread_over_tasks(grouped, 100)) == len(grouped)
    model, tok = tiny_mixtral(), tiny_tokenizer()
    enable_task_guided_routing(model, tasks=["asr", "mt", "ocr"])
    rep = routing_report(model, grouped, tok, max_rows=3)
    seen = {t for t, v in rep["summary"]["per_task"].items() if v.get("tokens")}
    assert seen == {"asr", "mt", "ocr"}
