"""Branch-Train-MiX (Sukhbaatar et al., 2024): k dense fine-tunes of one base become one MoE model.

Design choices:
- **Same machinery as up-cycling.** The MoE skeleton, layouts (Mixtral, or Qwen2-MoE for Qwen2
  and partial ``moe_layers``), config mapping and router init come from :func:`upcycle_model` on the
  first input; then expert ``i`` of every sparse layer is replaced by model ``i``'s FFN and every
  other tensor (embeddings, attention, norms, LM head, the FFNs of dense layers) by the plain mean
  over the k models, as in the BTX paper. With k identical inputs the result is therefore exactly
  the up-cycled model (tested).
- **Fresh router.** Same ``router_init``/``router_std``/``seed`` semantics as up-cycling; BTX then
  trains the router (and everything else) on the union of the branches' data.
- **Expert i = input i.** ``config.neko_btx["experts"]`` lists the source of each expert, so a task
  that owned branch i can be mapped to expert i for task-guided routing.
- **More experts than branches.** ``num_experts`` > k fills experts k.. with copies of the
  ``seed`` model's FFN (the model the branches started from), i.e. those experts are sparse
  up-cycling of the seed; the averaged tensors stay the mean of the k branches. This gives a BTX
  model the expert count of the MoE it is compared with (5 task branches + 3 seed experts = 8).
- **Validation before any copy.** All inputs must share model_type, every shape-defining config
  field and the exact set of tensor names and shapes; the error names the input and the field.
- Averaging is done in fp64 (exact for identical inputs) and cast back to the inputs' dtype.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from neko.io import atomic_dir, check_new_dir
from neko.model.safeload import weights_only_errors
from neko.model.upcycle import ARCH_FIELDS, Layout, RouterInit, dense_state_dict, upcycle_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["btx_merge", "check_compatible"]


def _name(src: str | Path | PreTrainedModel, i: int) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return str(getattr(getattr(src, "config", None), "_name_or_path", "") or f"model #{i}")


def check_compatible(models: Sequence[PreTrainedModel], names: Sequence[str]) -> None:
    """Raise ValueError unless every model has the first one's architecture and tensor shapes."""
    ref_cfg, ref_sd = models[0].config, models[0].state_dict()
    for m, name in zip(models[1:], names[1:], strict=True):
        for f in ARCH_FIELDS:
            a, b = getattr(ref_cfg, f, None), getattr(m.config, f, None)
            if a != b:
                raise ValueError(f"BTX inputs differ: {names[0]} has {f}={a!r} but {name} has {f}={b!r}")
        sd = m.state_dict()
        if set(sd) != set(ref_sd):
            diff = sorted(set(sd) ^ set(ref_sd))[:5]
            raise ValueError(f"BTX inputs differ: {name} and {names[0]} have different tensors, e.g. {diff}")
        for k, v in sd.items():
            if v.shape != ref_sd[k].shape:
                raise ValueError(
                    f"BTX inputs differ: {k} is {tuple(v.shape)} in {name} but {tuple(ref_sd[k].shape)} in {names[0]}"
                )


def btx_merge(
    dense_dirs_or_models: Iterable[str | Path | PreTrainedModel],
    out_dir: str | Path | None = None,
    num_experts_per_tok: int = 2,
    router_init: RouterInit = "normal",
    router_std: float | None = None,
    seed: int = 0,
    moe_layers: str | Iterable[int] | None = None,
    layout: Layout = "auto",
    num_experts: int | None = None,
    seed_model: str | Path | PreTrainedModel | None = None,
) -> PreTrainedModel:
    """Merge k dense checkpoints (directories or loaded ``*ForCausalLM`` models) into one k-expert MoE,
    or a ``num_experts``-expert MoE whose experts after the k branches are copies of ``seed_model``.

    With ``out_dir`` the model is saved there (atomically, with the first directory's tokenizer and
    ``neko_prompts.json`` when inputs are directories). Returns the merged model (eval mode).
    """
    sources = list(dense_dirs_or_models)
    total = _expert_count(len(sources), num_experts, num_experts_per_tok, seed_model is not None)
    names = [_name(s, i) for i, s in enumerate(sources)]
    for s in [*sources, *([seed_model] if seed_model is not None else [])]:
        if isinstance(s, (str, os.PathLike)) and not (Path(s) / "config.json").is_file():
            raise ValueError(f"{s} is not a model directory (no config.json)")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_new_dir(out)

    models = [_load(s) for s in sources]
    check_compatible(models, names)
    extra = total - len(models)
    seed_src, seed_name = None, ""
    if extra:
        seed_m = _load(seed_model)
        seed_name = _name(seed_model, len(models))
        check_compatible([models[0], seed_m], [names[0], seed_name])
        seed_src = dense_state_dict(seed_m)

    moe = upcycle_model(
        models[0],
        num_experts=total,
        num_experts_per_tok=num_experts_per_tok,
        router_init=router_init,
        router_std=router_std,
        noise_std=0.0,
        moe_layers=moe_layers,
        seed=seed,
        layout=layout,
    )
    branches = [dense_state_dict(m) for m in models]  # Gemma: in the folded (Llama) convention
    _merge_weights(moe, branches, branches + [seed_src] * extra)
    moe.config.neko_btx = {
        "experts": names + [f"seed: {seed_name}"] * extra,
        "averaged": "all non-expert tensors (mean of the branches)",
    }
    moe.eval()
    if out is not None:
        _save(moe, sources[0], out)
    return moe


def _expert_count(branches: int, num_experts: int | None, top_k: int, has_seed: bool) -> int:
    """The merged model's expert count (``num_experts``, default one per branch), checked."""
    if branches < 1:
        raise ValueError("btx_merge needs at least one dense checkpoint (one per expert)")
    total = branches if num_experts is None else int(num_experts)
    if total < branches:
        raise ValueError(f"num_experts={total} but {branches} branches: each branch is one expert")
    if total > branches and not has_seed:
        raise ValueError(
            f"num_experts={total} > {branches} branches: pass seed_model (the model the branches "
            "started from) to fill the other experts"
        )
    if top_k > total:
        raise ValueError(
            f"num_experts_per_tok={top_k} but only {branches} inputs (= experts)"
            + (f" and {total - branches} seed experts" if total > branches else "")
            + "; lower --top-k"
        )
    return total


def _load(src: str | Path | PreTrainedModel) -> PreTrainedModel:
    if not isinstance(src, (str, os.PathLike)):
        return src
    with weights_only_errors(src):
        return AutoModelForCausalLM.from_pretrained(src, dtype="auto")


def _merge_weights(
    moe: PreTrainedModel,
    branches: list[dict[str, torch.Tensor]],
    experts: list[dict[str, torch.Tensor]],
) -> None:
    """Expert e of every sparse layer = ``experts[e]``'s FFN; every other tensor but the routers =
    the mean of the branches' (in fp64, cast back)."""
    with torch.no_grad():
        for key, t in moe.state_dict().items():
            if key.endswith("mlp.experts.gate_up_proj") or key.endswith("mlp.experts.down_proj"):
                pre = key.rsplit("experts.", 1)[0]
                if key.endswith("gate_up_proj"):
                    per = [
                        torch.cat([sd[pre + "gate_proj.weight"], sd[pre + "up_proj.weight"]])
                        for sd in experts
                    ]
                else:
                    per = [sd[pre + "down_proj.weight"] for sd in experts]
                t.copy_(torch.stack(per).to(t.dtype))
            elif key.endswith("mlp.gate.weight") or ".mlp.shared_expert" in key:
                continue  # fresh router; zero-width shared expert
            else:
                src_key = key
                if key not in branches[0]:
                    if key != "lm_head.weight":
                        raise ValueError(f"BTX found no source tensor for {key}")
                    src_key = "model.embed_tokens.weight"  # tied LM head
                t.copy_(torch.stack([sd[src_key].double() for sd in branches]).mean(0).to(t.dtype))


def _save(moe: PreTrainedModel, first: str | Path | PreTrainedModel, out: Path) -> None:
    """Save atomically, with the first input's tokenizer and prompts when it is a directory."""
    with atomic_dir(out) as tmp:
        moe.save_pretrained(tmp)
        if isinstance(first, (str, os.PathLike)):
            first = Path(first)
            if list(first.glob("tokenizer*")):
                AutoTokenizer.from_pretrained(first).save_pretrained(tmp)
            if (first / "neko_prompts.json").is_file():
                shutil.copy2(first / "neko_prompts.json", tmp / "neko_prompts.json")
