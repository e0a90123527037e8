"""Task-guided routing (NeKo §2.2) on stock transformers 5.x MoE models, by changing only the router output.

A token of task T goes to its task's expert f(T) plus the router's top-(K-1) among the *other*
experts (f(T) is masked out before choosing, so it is never picked twice). Tokens whose task id is
-1 (padding, unknown tasks) keep plain top-K. Outside :func:`task_routing` the model is untouched
plain top-K, which is exactly what a stock ``AutoModelForCausalLM`` does after ``from_pretrained``.

Design choices:
- **Router output, not expert compute.** In transformers 5.x a sparse block is
  ``gate(hidden) -> (logits, scores, indices)`` followed by ``experts(hidden, indices, scores)``
  whose backend (``config._experts_implementation``: eager / batched_mm / grouped_mm) is
  interchangeable. A forward hook on each router rewrites (scores, indices) while a
  :func:`task_routing` context is active, so every expert backend, including the ``grouped_mm``
  fast path, runs unchanged. The extra work is one masked top-(K-1) and a K-way softmax over a
  (B*T, E) tensor per layer: 0.2 ms forward+backward for 1024 tokens x 8 experts on CPU, 0.04% of
  a layer step (bench/bench_routing.py, bench/NOTES.md).
- **Weights (``weighting``).** ``"pair_softmax"`` is the paper's Eq. 2 restricted to the chosen
  set: softmax over the K chosen logits. It equals what Mixtral does at inference (softmax then
  renormalise the top-K), so training and inference weights follow one formula.
  ``"full_softmax"`` uses the raw full-softmax probabilities of the chosen experts (not
  renormalised): this matches Qwen2/Qwen3-MoE and OLMoE routers with ``norm_topk_prob=False``
  (Qwen1.5-MoE-A2.7B: top-4, un-normalised). The default follows the model's own router
  (``norm_topk_prob``), as K does (its ``num_experts_per_tok``), so a stock MoE base trains with the
  weights it computes at inference; either can be overridden. Both let gradients reach the router
  through the chosen logits (pair) or all logits (full).
- **The map f is config.** ``model.config.neko_task_to_expert`` (task name -> expert index, insertion
  order = task id), ``neko_task_order`` (the same order as a list, because config.json is written
  with sorted keys) and ``neko_routing_weighting`` are written into config.json by
  ``save_pretrained``; plain transformers ignores them, neko re-enables routing from them
  (:func:`task_map` reads them back in id order).
- **Layout.** Routers see hidden states flattened to (B*T, H); task ids (B, T) are flattened the
  same way (row-major), so packed rows with several tasks route per token.
- **No global state.** Hooks close over a per-model ``_RoutingState``; the context manager sets and
  clears the per-batch forced experts. Gradient checkpointing recomputes the router in backward,
  so call ``backward()`` inside the ``with`` block when it is on; use ``use_reentrant=False``, since
  reentrant checkpointing runs the forward under no_grad and the recorded router logits (for the
  aux loss) then carry no graph.

Supported families (router classes): Mixtral, Qwen2-MoE (dense ``mlp_only_layers`` are skipped:
they have no router), Qwen3-MoE, OLMoE.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from neko.model.balance import load_balancing_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "SUPPORTED_ROUTERS",
    "WEIGHTINGS",
    "enable_task_guided_routing",
    "disable_task_guided_routing",
    "task_routing",
    "task_guided_topk",
    "TaskRouting",
    "task_map",
    "task_index",
    "find_routers",
    "NO_EXPERT",
    "without_expert",
]

# model_type -> router class name (transformers 5.x). One table, so a new family is one line here
# plus a test.
SUPPORTED_ROUTERS: dict[str, str] = {
    "mixtral": "MixtralTopKRouter",
    "qwen2_moe": "Qwen2MoeTopKRouter",
    "qwen3_moe": "Qwen3MoeTopKRouter",
    "olmoe": "OlmoeTopKRouter",
}
WEIGHTINGS = ("pair_softmax", "full_softmax")
Weighting = Literal["pair_softmax", "full_softmax"]
_STATE_ATTR = "_neko_routing"
# The task id of a token that routes plain top-K: padding, a task the data does not know, or a task
# without an expert. Every other id is a task's index (see task_index).
NO_EXPERT = -1


def _config(model: PreTrainedModel) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} has no .config; pass a transformers PreTrainedModel")
    return cfg


def find_routers(model: PreTrainedModel, *, required: bool = True) -> list[tuple[str, torch.nn.Module]]:
    """(module name, router module) for every sparse layer, in layer order.

    Routers are found by class (:data:`SUPPORTED_ROUTERS`): only for those is it known that the
    forward reads ``top_k`` and returns ``(logits, scores, indices)``, which the routing hook, the
    top-K override and the expert counts rely on. A model without one (a dense model, another MoE
    family, every layer dense) raises ValueError naming the supported families, or with
    ``required=False`` gives an empty list.
    """
    cfg = _config(model)
    model_type = getattr(cfg, "model_type", None)
    cls_name = SUPPORTED_ROUTERS.get(model_type)
    if cls_name is None:
        if not required:
            return []
        raise ValueError(
            f"task-guided routing does not support model_type {model_type!r} ({type(model).__name__}); "
            f"supported MoE families: {', '.join(sorted(SUPPORTED_ROUTERS))}. "
            "Up-cycle a dense model first (neko upcycle) or convert it to one of these."
        )
    routers = [(n, m) for n, m in model.named_modules() if type(m).__name__ == cls_name]
    if not routers and required:
        raise ValueError(
            f"{type(model).__name__} ({model_type}) has no {cls_name} modules: every layer is dense "
            "(check mlp_only_layers / decoder_sparse_step / num_experts in its config)"
        )
    return routers


def task_map(model: PreTrainedModel) -> dict[str, int]:
    """The saved task -> expert map of a model, in task-id order (empty when it has none).

    transformers writes config.json with sorted keys, so the id order is also saved as the list
    ``config.neko_task_order`` and restored from it here.
    """
    cfg = _config(model)
    mapping = dict(getattr(cfg, "neko_task_to_expert", None) or {})
    order = list(getattr(cfg, "neko_task_order", None) or [])
    if order and sorted(order) == sorted(mapping):
        return {t: mapping[t] for t in order}
    return mapping


def task_index(routed: PreTrainedModel | Sequence[str], others: Iterable[str] = ()) -> dict[str, int]:
    """Task name -> task id for :func:`task_routing`.

    ``routed``: a model (its saved map, in id order) or the routed task names; they get ids 0..m-1.
    ``others``: tasks without an expert, numbered from m on so they can be told apart in statistics;
    they route plain top-K once :func:`without_expert` turns their ids into :data:`NO_EXPERT`.
    A task in neither has no id: it is :data:`NO_EXPERT`.
    """
    names = list(task_map(routed)) if hasattr(routed, "config") else list(routed)
    index = {t: i for i, t in enumerate(names)}
    for t in others:
        index.setdefault(t, len(index))
    return index


def without_expert(task_ids: torch.Tensor, routed_tasks: int) -> torch.Tensor:
    """A copy of ``task_ids`` where every task from id ``routed_tasks`` on is :data:`NO_EXPERT`."""
    ids = task_ids.clone()
    ids[ids >= routed_tasks] = NO_EXPERT
    return ids


def task_guided_topk(
    router_logits: torch.Tensor,
    forced_expert: torch.Tensor,
    top_k: int,
    weighting: Weighting = "pair_softmax",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 selection for tokens with a forced expert: (weights (N, K) float32, indices (N, K) long).

    router_logits: (N, E). forced_expert: (N,) long in [0, E); column 0 of the result is always the
    forced expert, columns 1.. the router's top-(K-1) among the other experts, in descending order.
    """
    logits = router_logits.float()  # (N, E)
    forced = forced_expert.unsqueeze(-1)  # (N, 1)
    if top_k > 1:
        masked = logits.scatter(-1, forced, float("-inf"))
        others = torch.topk(masked, top_k - 1, dim=-1).indices  # (N, K-1)
        indices = torch.cat([forced, others], dim=-1)  # (N, K)
    else:
        indices = forced
    if weighting == "pair_softmax":
        weights = torch.softmax(logits.gather(-1, indices), dim=-1)
    elif weighting == "full_softmax":
        weights = torch.softmax(logits, dim=-1).gather(-1, indices)
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return weights, indices


@dataclass
class TaskRouting:
    """The handle :func:`task_routing` yields.

    task_ids: the (B, T) ids given. forced_experts: (B*T,) expert per token, -1 = plain top-K.
    router_logits: (B*T, E) router logits of every sparse layer, in call order (one forward = one
    entry per sparse layer; gradient-checkpoint recomputation is not recorded). Feed them to
    :func:`neko.model.balance.load_balancing_loss`.
    """

    task_ids: torch.Tensor
    forced_experts: torch.Tensor
    expert_of_task: list[int]
    top_k: int
    router_logits: list[torch.Tensor] = field(default_factory=list)
    _on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )

    def forced_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(forced expert clamped to >= 0 (N,), has-a-task mask (N, 1)) on device, computed once per
        context and device rather than once per layer."""
        t = self._on_device.get(device)
        if t is None:
            f = self.forced_experts.to(device, non_blocking=True)
            t = self._on_device[device] = (f.clamp(min=0), (f >= 0).unsqueeze(-1))
        return t

    def balance_loss(self, token_mask: torch.Tensor | None = None, mode: str = "standard") -> torch.Tensor:
        """Load-balancing aux loss over this context's router logits (see neko.model.balance)."""
        return load_balancing_loss(
            self.router_logits,
            token_mask,
            self.top_k,
            mode=mode,
            task_ids=self.task_ids,
            expert_of_task=self.expert_of_task,
        )


@dataclass
class _RoutingState:
    expert_of_task: list[int]
    weighting: str
    top_k: int
    num_experts: int
    handles: list[Any] = field(default_factory=list)
    active: TaskRouting | None = None


def _in_backward() -> bool:
    fn = getattr(torch._C, "_current_graph_task_id", None)
    return fn is not None and fn() != -1


def _make_hook(state: _RoutingState, layer_name: str):
    def hook(module: Any, args: Any, output: Any) -> Any:
        ctx = state.active
        if ctx is None:
            return None
        logits, scores, indices = output  # (N, E), (N, K), (N, K)
        n = logits.shape[0]
        forced, has = ctx.forced_on(logits.device)  # (N,), (N, 1)
        if forced.shape[0] != n:
            raise ValueError(
                f"task_routing: task_ids cover {forced.shape[0]} tokens but {layer_name} routes {n}; "
                "pass task_ids with the same (batch, seq) shape as input_ids (generation inside "
                "task_routing is not supported: inference is plain top-K)"
            )
        if not _in_backward():  # checkpoint recomputation would record a layer twice
            ctx.router_logits.append(logits)
        g_w, g_idx = task_guided_topk(logits, forced, state.top_k, state.weighting)
        new_idx = torch.where(has, g_idx, indices)
        new_w = torch.where(has, g_w.to(scores.dtype), scores)
        return logits, new_w, new_idx

    return hook


def _resolve_map(
    tasks: Sequence[str] | None,
    task_to_expert: Mapping[str, int] | None,
    seed: int | None,
    num_experts: int,
    existing: dict[str, int],
) -> dict[str, int]:
    if tasks is not None and task_to_expert is not None:
        raise ValueError("give either tasks=[...] or task_to_expert={...}, not both")
    if task_to_expert is not None:
        if seed is not None:
            raise ValueError(
                "seed= draws a random map from tasks=[...]; it cannot be used with task_to_expert"
            )
        mapping = dict(task_to_expert)
    else:
        if tasks is None:
            if not existing:
                raise ValueError(
                    "no task map: pass tasks=[...] (or task_to_expert={...}); this model's config has no "
                    "neko_task_to_expert to reuse"
                )
            if seed is not None:
                raise ValueError("seed= needs tasks=[...] to draw a new map")
            mapping = dict(existing)
        else:
            if isinstance(tasks, str):
                raise ValueError(f"tasks must be a list of task names, got the string {tasks!r}")
            tasks = list(tasks)
            dup = sorted({t for t in tasks if tasks.count(t) > 1})
            if dup:
                raise ValueError(f"tasks lists {dup} more than once; each task owns exactly one expert")
            if len(tasks) > num_experts:
                raise ValueError(
                    f"{len(tasks)} tasks but only {num_experts} experts: task-guided routing gives each task "
                    "its own expert; up-cycle with more experts or merge tasks"
                )
            experts = (
                list(range(len(tasks)))
                if seed is None
                else random.Random(seed).sample(range(num_experts), len(tasks))
            )
            mapping = dict(zip(tasks, experts, strict=True))
    if not mapping:
        raise ValueError("the task map is empty: give at least one task")
    if len(mapping) > num_experts:
        raise ValueError(
            f"{len(mapping)} tasks but only {num_experts} experts: each task needs its own expert"
        )
    for name, e in mapping.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"task names must be non-empty strings, got {name!r}")
        if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < num_experts:
            raise ValueError(
                f"task {name!r} -> expert {e!r}: expert index must be an int in [0, {num_experts})"
            )
    seen: dict[int, str] = {}
    for name, e in mapping.items():
        if e in seen:
            raise ValueError(
                f"tasks {seen[e]!r} and {name!r} both map to expert {e}; the map must be one-to-one"
            )
        seen[e] = name
    return mapping


def enable_task_guided_routing(
    model: PreTrainedModel,
    tasks: Sequence[str] | None = None,
    task_to_expert: Mapping[str, int] | None = None,
    weighting: Weighting | None = None,
    seed: int | None = None,
) -> dict[str, int]:
    """Install task-guided routing hooks on every sparse layer and store the map in the config.

    tasks: task names; task i gets expert i, or a seeded random injective expert (``seed``, as in the
    paper's appendix). task_to_expert: an explicit map instead. With neither, the map saved in
    ``model.config.neko_task_to_expert`` is reused. weighting: see the module docstring (default:
    the one saved in the config, else the router's own: ``"pair_softmax"`` when it renormalises the
    top-K, ``"full_softmax"`` when not). K is the router's ``top_k``. Calling it again replaces the
    hooks.
    Returns the map {task: expert}; task id i in :func:`task_routing` is its i-th key.
    """
    routers = find_routers(model)
    cfg = _config(model)
    num_experts = {int(r.num_experts) for _, r in routers}
    top_k = {int(r.top_k) for _, r in routers}
    if len(num_experts) != 1 or len(top_k) != 1:
        raise ValueError(
            f"sparse layers disagree on num_experts {num_experts} / top_k {top_k}; not supported"
        )
    (e_count,), (k,) = num_experts, top_k
    mapping = _resolve_map(tasks, task_to_expert, seed, e_count, task_map(model))
    renorm = bool(getattr(routers[0][1], "norm_topk_prob", True))
    if weighting is None:
        weighting = getattr(cfg, "neko_routing_weighting", None) or (
            "pair_softmax" if renorm else "full_softmax"
        )
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if k < 2:
        warnings.warn(
            "num_experts_per_tok=1: task-guided routing then sends every task token only to f(T) and the "
            "router gets no gradient from those tokens; the paper uses top-2",
            stacklevel=2,
        )
    if (weighting == "pair_softmax") != renorm:
        warnings.warn(
            f"weighting={weighting!r} but this {cfg.model_type} router uses "
            f"{'renormalised top-K' if renorm else 'raw softmax'} weights at inference "
            f"(norm_topk_prob={renorm}); training and inference weights will differ. Use "
            f"weighting={'pair_softmax' if renorm else 'full_softmax'!r} to match",
            stacklevel=2,
        )

    disable_task_guided_routing(model)
    state = _RoutingState(list(mapping.values()), weighting, k, e_count)
    for name, router in routers:
        state.handles.append(router.register_forward_hook(_make_hook(state, name)))
    object.__setattr__(model, _STATE_ATTR, state)
    cfg.neko_task_to_expert = dict(mapping)
    cfg.neko_task_order = list(mapping)  # config.json sorts dict keys; the list keeps the id order
    cfg.neko_routing_weighting = weighting
    return dict(mapping)


def disable_task_guided_routing(model: PreTrainedModel) -> None:
    """Remove the routing hooks (the saved map stays in the config). No-op when not enabled."""
    state = _state(model, required=False)
    if state is None:
        return
    for h in state.handles:
        h.remove()
    state.handles.clear()
    state.active = None
    try:
        object.__delattr__(model, _STATE_ATTR)
    except AttributeError:
        pass


def _state(model: torch.nn.Module, required: bool = True) -> _RoutingState | None:
    state = model.__dict__.get(_STATE_ATTR)
    if state is None and hasattr(model, "get_base_model"):  # PEFT wrappers
        state = model.get_base_model().__dict__.get(_STATE_ATTR)
    if state is None and required:
        raise ValueError(
            "task-guided routing is not enabled on this model: call "
            "neko.model.routing.enable_task_guided_routing(model, tasks=[...]) first"
        )
    return state


@contextmanager
def task_routing(model: torch.nn.Module, task_ids: torch.Tensor) -> Iterator[TaskRouting]:
    """Route by task for forward (and backward) calls inside the block.

    task_ids: LongTensor (B, T) matching input_ids; id i = i-th task of
    ``model.config.neko_task_to_expert``; :data:`NO_EXPERT` (-1) = plain top-K (padding, unknown task).
    """
    state = _state(model)
    if state.active is not None:
        raise RuntimeError("task_routing is already active on this model; contexts do not nest")
    ids = torch.as_tensor(task_ids)
    if ids.dtype in (torch.bool,) or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"task_ids must be an integer tensor (B, T), got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"task_ids must have shape (batch, seq) like input_ids, got {tuple(ids.shape)}")
    ids = ids.long()
    m = len(state.expert_of_task)
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < NO_EXPERT or hi >= m:
            bad = lo if lo < NO_EXPERT else hi
            raise ValueError(
                f"task id {bad} outside the task map: ids must be -1 (plain) or 0..{m - 1} "
                f"({list(task_map(model))})"
            )
    table = torch.tensor(state.expert_of_task, dtype=torch.long, device=ids.device)
    plain = torch.full_like(ids, NO_EXPERT)
    forced = torch.where(ids >= 0, table[ids.clamp(min=0)], plain).reshape(-1)  # (B*T,)
    ctx = TaskRouting(ids, forced, list(state.expert_of_task), state.top_k)
    state.active = ctx
    try:
        yield ctx
    finally:
        state.active = None
