"""`neko upcycle` and `neko routing-report` with outputs they cannot write: one error line, no traceback."""

from __future__ import annotations

from neko.model.routing import enable_task_guided_routing
from neko.model.tiny import tiny_dense, tiny_mixtral, tiny_tokenizer
from neko.schema import write_jsonl
from neko.tasks import save_prompt_config


def test_upcycle_into_a_read_only_or_full_disk(neko_cli, one_line_error, read_only_dir, small_disk, tmp_path):
    src = tmp_path / "dense"
    tiny_dense("llama", num_hidden_layers=2).save_pretrained(src)
    tiny_tokenizer(save_dir=src)
    out = read_only_dir / "moe"
    one_line_error(neko_cli("upcycle", src, out, "--num-experts", 2), f"cannot write {out}")
    out = small_disk / "moe"  # the weights do not fit in 64 KiB
    one_line_error(neko_cli("upcycle", src, out, "--num-experts", 2), f"cannot write {out}", "No space left")
    assert list(small_disk.iterdir()) == []  # no half-written model directory


def test_routing_report_into_a_read_only_dir_or_over_a_file(
    neko_cli, one_line_error, read_only_dir, tmp_path
):
    model = tiny_mixtral()
    enable_task_guided_routing(model, tasks=["ocr"])
    mdir = tmp_path / "model"
    model.save_pretrained(mdir)
    tiny_tokenizer(save_dir=mdir)
    save_prompt_config(mdir)
    data = tmp_path / "rows.jsonl"
    write_jsonl([{"id": "a", "task": "ocr", "input": "the speech text"}], data)
    args = ("routing-report", "--model", mdir, "--data", data, "--out")
    one_line_error(neko_cli(*args, read_only_dir / "rep"), str(read_only_dir / "rep"))
    one_line_error(neko_cli(*args, data), str(data))
