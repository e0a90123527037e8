"""Turn a TrainConfig into the model to train: load the base, up-cycle, enable routing, wrap LoRA.

Design choices:
- The base is a ``save_pretrained`` directory, an offline base name (``neko.model.offline_base``), or
  ``tiny:llama`` / ``tiny:mixtral`` (random tiny models with the tiny tokenizer, for tests and smoke
  runs). No hub download ever happens here.
- Modes neko/moe on a dense base up-cycle it first (``neko.model.upcycle.upcycle_model``); on an MoE
  base they train it as is. Mode neko installs task-guided routing hooks
  (``neko.model.routing.enable_task_guided_routing``); mode moe keeps plain top-K routing: the
  paper's "MoE FFT" baseline, same model, same data.
- LoRA wraps whatever ``lora.base_mode`` built, with PEFT; routing hooks live on the base routers
  and keep working through the wrapper.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from neko.model.experts import set_router_top_k
from neko.model.offline_base import obtain_base
from neko.model.routing import enable_task_guided_routing
from neko.model.safeload import weights_only_errors
from neko.model.tiny import tiny_llama, tiny_mixtral, tiny_tokenizer
from neko.model.upcycle import parse_layer_spec, upcycle_model
from neko.tasks import REGISTRY
from neko.train.config import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "resolve_base",
    "base_model_dir",
    "load_tokenizer",
    "build_model",
    "is_moe",
    "task_order",
    "freeze_layers",
]

TINY_BASES = ("tiny:llama", "tiny:mixtral")


def resolve_base(base: str) -> str:
    """A local directory for ``base`` (or the ``tiny:*`` name itself)."""
    if base in TINY_BASES:
        return base
    p = Path(base).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ValueError(f"model.base {base!r}: {p} has no config.json; give a save_pretrained directory")
        return str(p)
    if "/" not in base and "\\" not in base:
        return str(obtain_base(base))
    raise ValueError(
        f"model.base {base!r}: not a directory and not a known offline base; give a save_pretrained "
        f"directory, an offline base name (e.g. smollm2, see `neko base`), or one of {TINY_BASES}"
    )


def base_model_dir(base: str, seed: int, directory: str | Path) -> Path:
    """A ``save_pretrained`` directory holding the base itself (what plain LM rescoring scores with):
    the resolved directory, or for ``tiny:*`` bases the tiny model of this seed saved to ``directory``."""
    resolved = resolve_base(base)
    if resolved not in TINY_BASES:
        return Path(resolved)
    out = Path(directory)
    model = (tiny_llama if resolved == "tiny:llama" else tiny_mixtral)(seed=seed)
    model.save_pretrained(out)
    tiny_tokenizer(save_dir=out)
    return out


def load_tokenizer(base_dir: str) -> PreTrainedTokenizerBase:
    if base_dir in TINY_BASES:
        return tiny_tokenizer()
    tok = AutoTokenizer.from_pretrained(base_dir)
    if tok.pad_token is None:
        # padding tokens are always masked out of attention and loss, so EOS as pad is safe
        tok.pad_token = tok.eos_token
    return tok


def is_moe(model: PreTrainedModel) -> bool:
    cfg = model.config
    return bool(getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None))


def _load_base(base_dir: str, cfg: TrainConfig) -> PreTrainedModel:
    attn = cfg.model.attn_implementation
    if base_dir == "tiny:llama":
        return tiny_llama(seed=cfg.seed, attn_implementation=attn)
    if base_dir == "tiny:mixtral":
        return tiny_mixtral(
            seed=cfg.seed,
            attn_implementation=attn,
            num_local_experts=cfg.upcycle.num_experts,
            num_experts_per_tok=cfg.upcycle.top_k,
        )
    # weights load in fp32; Accelerate's autocast gives bf16/fp16 compute with fp32 master weights
    with weights_only_errors(base_dir):
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation=attn)


def _upcycle(model: PreTrainedModel, cfg: TrainConfig) -> PreTrainedModel:
    kw: dict[str, Any] = dict(
        num_experts=cfg.upcycle.num_experts,
        num_experts_per_tok=cfg.upcycle.top_k,
        router_init=cfg.upcycle.router_init,
        noise_std=cfg.upcycle.noise_std,
        seed=cfg.seed,
    )
    if cfg.upcycle.moe_layers is not None:
        kw["moe_layers"] = cfg.upcycle.moe_layers
    return upcycle_model(model, **kw)


def task_order(cfg: TrainConfig, data_tasks: list[str], model: PreTrainedModel | None = None) -> list[str]:
    """Task -> expert order for mode neko: the config's list, else the base's saved map when it covers
    the data's tasks, else the data's tasks in registry order."""
    if cfg.model.tasks:
        return list(cfg.model.tasks)
    saved = dict(getattr(getattr(model, "config", None), "neko_task_to_expert", None) or {})
    if saved and set(data_tasks) <= set(saved):
        return list(saved)
    known = REGISTRY.names()
    return sorted(data_tasks, key=lambda t: (known.index(t) if t in known else len(known), t))


def build_model(
    cfg: TrainConfig, base_dir: str, data_tasks: list[str], say: Callable[[str], None] | None = None
) -> tuple[torch.nn.Module, list[str]]:
    """(model ready to train, task order for task ids: empty when routing is not task-guided).

    ``say`` gets a line before and after each slow step (loading, up-cycling), which otherwise
    leave the console silent for a while on a CPU."""
    say = say or (lambda _msg: None)
    t0 = time.perf_counter()
    say(f"loading base model {base_dir}")
    model = _load_base(base_dir, cfg)
    say(f"loaded in {time.perf_counter() - t0:.1f}s")
    mode = cfg.routed_mode
    tasks: list[str] = []
    if mode in ("neko", "moe") and not is_moe(model):
        layers = f" on layers {cfg.upcycle.moe_layers}" if cfg.upcycle.moe_layers is not None else ""
        say(
            f"up-cycling {model.config.model_type} into {cfg.upcycle.num_experts} experts "
            f"(top-{cfg.upcycle.top_k}){layers}"
        )
        t0 = time.perf_counter()
        model = _upcycle(model, cfg)
        n = sum(p.numel() for p in model.parameters())
        say(f"up-cycled in {time.perf_counter() - t0:.1f}s: {n / 1e6:.1f}M parameters")
    if mode in ("neko", "moe") and cfg.routing.top_k is not None:
        if not set_router_top_k(model, cfg.routing.top_k):
            raise ValueError(f"routing.top_k={cfg.routing.top_k} but the model has no MoE router")
    if mode == "neko":
        order = task_order(cfg, data_tasks, model)
        saved = dict(getattr(model.config, "neko_task_to_expert", None) or {})
        # "auto": the weights the model's router computes at inference (see neko.model.routing)
        weighting = None if cfg.routing.weighting == "auto" else cfg.routing.weighting
        if saved and list(saved) == order and cfg.model.routing_seed is None:
            enable_task_guided_routing(model, task_to_expert=saved, weighting=weighting)
        else:
            enable_task_guided_routing(model, tasks=order, seed=cfg.model.routing_seed, weighting=weighting)
        tasks = list(model.config.neko_task_to_expert)
    if cfg.model.train_layers is not None:
        if cfg.mode == "lora":
            raise ValueError("model.train_layers does not apply to mode lora (LoRA trains only its adapters)")
        freeze_layers(model, cfg.model.train_layers, train_embeddings=cfg.model.train_embeddings)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if cfg.mode == "lora":
        model = _wrap_lora(model, cfg)
    return model, tasks


def _wrap_lora(model: PreTrainedModel, cfg: TrainConfig) -> torch.nn.Module:
    """PEFT LoRA per ``cfg.lora``; zero-width linears (an up-cycled Qwen2-MoE's disabled shared
    expert) are excluded, since an adapter there would only add zero-width matmuls."""
    from peft import LoraConfig, get_peft_model

    empty = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.weight.numel() == 0]
    lcfg = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        target_parameters=list(cfg.lora.target_parameters) or None,
        modules_to_save=list(cfg.lora.modules_to_save) or None,
        exclude_modules=empty or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def _decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(
            f"{type(model).__name__}: cannot find its decoder layers (model.model.layers); "
            "model.train_layers needs a Llama/Mistral/Mixtral/Qwen-style causal LM"
        )
    return layers


def freeze_layers(
    model: PreTrainedModel, spec: str | list[int], *, train_embeddings: bool = False
) -> list[int]:
    """Train only the decoder layers ``spec`` names (plus the final norm, and the embeddings / tied LM
    head when ``train_embeddings``); returns the trained layer indices.

    ``"moe"`` means every layer from the lowest MoE layer up, so the up-cycled block and everything
    above it learns; ``"all"`` every layer (then only the embeddings are frozen, unless
    ``train_embeddings``). Frozen layers below the lowest trained one still run forward, but autograd never
    enters them: with the last 6 of SmolLM2's 30 layers trained, a step costs about half as much
    (bench/bench_train_choices.py measures it).
    """
    layers = _decoder_layers(model)
    n = len(layers)
    if spec == "all":
        keep = list(range(n))
    elif spec == "moe":
        moe = [i for i, layer in enumerate(layers) if hasattr(getattr(layer, "mlp", None), "experts")]
        if not moe:
            raise ValueError(
                "model.train_layers='moe' but the model has no MoE layer; give a spec like '-6:'"
            )
        keep = list(range(min(moe), n))
    else:
        keep = parse_layer_spec(spec, n) or list(range(n))
    model.requires_grad_(False)
    for i in keep:
        layers[i].requires_grad_(True)
    norm = getattr(model.model, "norm", None)
    if norm is not None:
        norm.requires_grad_(True)
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    if train_embeddings:
        model.get_input_embeddings().requires_grad_(True)
        if head is not None:
            head.requires_grad_(True)
    elif head is not None and not tied:
        head.requires_grad_(True)  # an untied head is a cheap, top-of-network parameter: keep it learning
    return keep
