"""Training configuration: typed dataclasses are the single source of truth; YAML and ``--set`` override.

Design choices:
- **Each default lives here, once.** The CLI, the YAML examples and the API all start from these
  dataclasses; the defaults are the paper's recipe (AdamW lr 1e-4, weight decay 0.01, cosine with
  10% warm-up, clip 1.0, 3 epochs, sample packing).
- **One error for all problems.** :func:`config_from_dict` walks the whole tree and collects every
  unknown field and wrong type into one :class:`ConfigError` (with did-you-mean hints), so a user
  fixes a config in one round instead of one field per run.
- **Dotted overrides** (``--set optim.lr=3e-4``, ``--set data.tasks=[asr,mt]``) are parsed as YAML
  scalars, then checked exactly like the file, so a typo in a flag reads the same as one in YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from neko.model.precision import PRECISIONS

__all__ = [
    "MODES",
    "ConfigError",
    "ModelConfig",
    "UpcycleConfig",
    "LoraConfig",
    "DataSource",
    "DataConfig",
    "OptimConfig",
    "BatchConfig",
    "RoutingConfig",
    "EvalConfig",
    "LogConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "apply_overrides",
]

MODES = ("neko", "moe", "dense", "lora")
Mode = Literal["neko", "moe", "dense", "lora"]


class ConfigError(ValueError):
    """A training config with problems; ``problems`` lists each one, the message lists them all."""

    def __init__(self, problems: Sequence[str], source: str | None = None):
        self.problems = list(problems)
        head = f"{source}: " if source else ""
        n = len(self.problems)
        super().__init__(
            f"{head}{n} problem{'s' if n != 1 else ''} in the training config:\n  - "
            + "\n  - ".join(self.problems)
        )


@dataclass
class ModelConfig:
    """base: a model directory (save_pretrained + tokenizer), an offline base name from
    ``neko.model.offline_base`` (``smollm2``), or ``tiny:llama`` / ``tiny:mixtral`` (random test models).
    attn_implementation: transformers attention backend; packing relies on its packed-sequence
    detection from position ids (sdpa, eager, flash_attention_2 all support it).
    tasks: task -> expert order for mode neko; empty = the tasks found in the training data, in
    registry order (the base's saved ``neko_task_to_expert`` is reused when it covers them)."""

    base: str = "tiny:llama"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    tasks: list[str] = field(default_factory=list)
    routing_seed: int | None = None  # None: task i -> expert i; int: seeded random injective map
    # Layers whose weights train (None = all weights): a spec like "-6:" or "24-29", "moe" = every
    # layer from the lowest MoE layer up, or "all" = every layer (embeddings per train_embeddings). Other layers keep their weights: the forward still runs through
    # them but no backward does, which is where the speed comes from (bench/bench_train_choices.py).
    train_layers: str | list[int] | None = None
    # With train_layers set: also train the token embeddings (tied to the LM head in SmolLM2).
    train_embeddings: bool = False


@dataclass
class UpcycleConfig:
    """Applied when the base is dense and mode is neko/moe (``neko.model.upcycle.upcycle_model``)."""

    num_experts: int = 8
    top_k: int = 2
    # None = every layer; a list of layer indices or a spec like "22-29" / "-8:" (last 8 layers)
    moe_layers: str | list[int] | None = None
    router_init: Literal["normal", "orthogonal"] = "normal"
    noise_std: float = 0.0


@dataclass
class LoraConfig:
    """PEFT LoRA (mode lora). The final save merges the adapter and also keeps it under ``adapter/``.

    target_modules: nn.Linear layers by name suffix (zero-width ones, the disabled shared expert of an
    up-cycled Qwen2-MoE, are skipped: there is nothing to adapt). target_parameters: parameters
    adapted directly, for MoE experts that transformers 5 stores as one 3-D tensor per layer (e.g.
    ``experts.gate_up_proj``, ``experts.down_proj``): PEFT gives each expert its own rank-r pair and
    needs ``dropout: 0`` for them. modules_to_save: modules trained in full and saved with the
    adapter (e.g. ``mlp.gate``, the router of a freshly up-cycled MoE)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    target_parameters: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    base_mode: Literal["neko", "moe", "dense"] = "dense"  # what the LoRA is trained on top of


@dataclass
class DataSource:
    """One neko JSONL file. weight: copies per epoch (0.5 = a seeded random half, 2 = twice).
    tasks: only these tasks from this file (empty = all)."""

    path: str = ""
    weight: float = 1.0
    tasks: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    """train: the mixture. task_weights: per-task multiplier on top of the file weight.
    tasks: keep only these tasks everywhere (BTX trains one dense model per task with this).
    truncation: what to do with an example longer than max_seq_len: ``cut_nbest`` drops N-best
    hypotheses from the tail (worst first) until it fits, then drops it if still too long;
    ``drop`` drops it. The answer is never cut. Both are counted and reported."""

    train: list[DataSource] = field(default_factory=list)
    dev: str | None = None
    task_weights: dict[str, float] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    max_seq_len: int = 1024
    truncation: Literal["cut_nbest", "drop"] = "cut_nbest"
    packing: bool = True
    skip_invalid: bool = False
    use_chat_template: bool = True
    tasks_config: str | None = None  # extra user tasks (YAML/JSON), see neko.tasks.load_task_config


@dataclass
class OptimConfig:
    """AdamW + schedule. The defaults are the paper's recipe."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 3


@dataclass
class BatchConfig:
    """micro_batch_size: rows per device per forward (a packed row holds up to max_seq_len tokens).
    grad_accum: micro batches per optimizer step. batch_tokens: the global tokens per optimizer step
    instead (sets grad_accum = batch_tokens / (micro_batch_size * max_seq_len * processes))."""

    micro_batch_size: int = 4
    grad_accum: int = 1
    batch_tokens: int | None = None


@dataclass
class RoutingConfig:
    """Load-balancing aux loss (``neko.model.balance``): off | standard | free, weight coef.
    weighting: task-guided expert weights (mode neko); "auto" = the router's own (``pair_softmax``
    when it renormalises its top-K, ``full_softmax`` when not, as Qwen1.5-MoE does).
    top_k: experts per token while training an MoE (None = the model's own ``num_experts_per_tok``;
    an up-cycled model has ``upcycle.top_k``); the saved model keeps it, so inference follows."""

    aux_loss: Literal["off", "standard", "free"] = "free"
    aux_coef: float = 0.01
    weighting: Literal["auto", "pair_softmax", "full_softmax"] = "auto"
    top_k: int | None = None


@dataclass
class EvalConfig:
    """Every ``every`` optimizer steps and once after the last one (0 = never, not even at the end):
    dev loss per task and greedy decodes of ``decode_rows`` dev rows per task scored with the task's
    metric (WER/BLEU). Needs ``data.dev``."""

    every: int = 0
    decode_rows: int = 4
    max_new_tokens: int = 64
    max_rows: int = 256  # dev rows used for the dev loss


@dataclass
class LogConfig:
    every: int = 1  # optimizer steps between JSONL records
    progress: bool = True
    tensorboard: bool = False  # only if tensorboard is installed; a warning otherwise


@dataclass
class TrainConfig:
    """Everything ``neko train`` needs. ``max_steps`` > 0 caps the optimizer steps (the schedule is
    then built for that many). ``time_budget_s`` > 0 stops cleanly after that many seconds: it saves a
    checkpoint and the final model, so a quick start ends on time with a usable model (the budget
    counts per invocation, setup included; the final dev evaluation and save come after it)."""

    mode: Mode = "neko"
    model: ModelConfig = field(default_factory=ModelConfig)
    upcycle: UpcycleConfig = field(default_factory=UpcycleConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    max_steps: int = 0
    time_budget_s: float = 0.0
    save_every: int = 0  # optimizer steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2
    seed: int = 0
    output_dir: str = "runs/neko"
    # auto = bf16 where the hardware has native bf16 (a CUDA GPU, a CPU with AVX512-BF16/AMX), else
    # fp32 (neko.model.precision); bf16/fp16 = autocast with fp32 master weights.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def validate(self) -> list[str]:
        """Value problems (types are checked when loading). Empty list = fine."""
        p: list[str] = []
        if self.mode not in MODES:
            p.append(f"mode: must be one of {MODES}, got {self.mode!r}")
        if not self.data.train:
            p.append("data.train: give at least one training file ({path: ..., weight: 1.0})")
        for i, s in enumerate(self.data.train):
            if not s.path:
                p.append(f"data.train[{i}].path: empty")
            if s.weight < 0:
                p.append(f"data.train[{i}].weight: must be >= 0, got {s.weight}")
        for t, w in self.data.task_weights.items():
            if w < 0:
                p.append(f"data.task_weights.{t}: must be >= 0, got {w}")
        if self.data.max_seq_len < 8:
            p.append(f"data.max_seq_len: must be >= 8, got {self.data.max_seq_len}")
        if not 0 <= self.optim.warmup_ratio < 1:
            p.append(f"optim.warmup_ratio: must be in [0, 1), got {self.optim.warmup_ratio}")
        if self.optim.lr <= 0:
            p.append(f"optim.lr: must be > 0, got {self.optim.lr}")
        if self.optim.epochs < 1 and self.max_steps <= 0:
            p.append("optim.epochs: must be >= 1 (or set max_steps)")
        if len(self.optim.betas) != 2:
            p.append(f"optim.betas: needs two numbers, got {self.optim.betas}")
        if self.batch.micro_batch_size < 1:
            p.append(f"batch.micro_batch_size: must be >= 1, got {self.batch.micro_batch_size}")
        if self.batch.grad_accum < 1:
            p.append(f"batch.grad_accum: must be >= 1, got {self.batch.grad_accum}")
        if self.batch.batch_tokens is not None and self.batch.grad_accum != 1:
            p.append("batch: give either batch_tokens or grad_accum, not both (batch_tokens sets grad_accum)")
        if self.routing.aux_coef < 0:
            p.append(f"routing.aux_coef: must be >= 0, got {self.routing.aux_coef}")
        if self.routing.top_k is not None and self.routing.top_k < 1:
            p.append(f"routing.top_k: must be >= 1 (or null: the model's own), got {self.routing.top_k}")
        if self.mode == "lora" and self.lora.target_parameters and self.lora.dropout:
            p.append(
                f"lora.dropout: must be 0 with lora.target_parameters (PEFT cannot apply dropout to a "
                f"parameter-level adapter), got {self.lora.dropout}"
            )
        if self.upcycle.top_k < 1 or self.upcycle.top_k > self.upcycle.num_experts:
            p.append(f"upcycle.top_k: must be in [1, num_experts], got {self.upcycle.top_k}")
        if self.keep_checkpoints < 1:
            p.append(f"keep_checkpoints: must be >= 1, got {self.keep_checkpoints}")
        if self.precision not in PRECISIONS:
            p.append(f"precision: must be one of {list(PRECISIONS)}, got {self.precision!r}")
        return p

    def grad_accum_for(self, num_processes: int) -> int:
        if self.batch.batch_tokens is None:
            return self.batch.grad_accum
        per = self.batch.micro_batch_size * self.data.max_seq_len * max(1, num_processes)
        return max(1, round(self.batch.batch_tokens / per))

    @property
    def routed_mode(self) -> str:
        """The MoE/dense mode underneath (lora trains on top of ``lora.base_mode``)."""
        return self.lora.base_mode if self.mode == "lora" else self.mode


# --------------------------------------------------------------------------- loading / checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against annotation ``tp``; return the converted value (or None after a problem)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.append(
                f"{where}: expected a mapping of {tp.__name__} fields, got {type(value).__name__}"
            )
            return None
        return _build(tp, value, where, problems)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner:
            trial: list[str] = []
            out = _convert(value, a, where, trial)
            if not trial:
                return out
        problems.append(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
        return None
    if origin is Literal:
        if value not in args:
            problems.append(f"{where}: must be one of {list(args)}, got {value!r}")
            return None
        return value
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            problems.append(f"{where}: expected a list, got {type(value).__name__} {value!r}")
            return None
        (item,) = args or (Any,)
        return [_convert(v, item, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping, got {type(value).__name__}")
            return None
        kt, vt = args or (Any, Any)
        return {
            _convert(k, kt, f"{where} key", problems): _convert(v, vt, f"{where}.{k}", problems)
            for k, v in value.items()
        }
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true/false, got {value!r}")
            return None
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            problems.append(f"{where}: expected an integer, got {value!r}")
            return None
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {value!r}")
            return None
        if not math.isfinite(value):  # YAML's .nan/.inf: NaN passes every `<= 0` check (issue 23.6)
            problems.append(f"{where}: expected a finite number, got {value!r}")
            return None
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {type(value).__name__} {value!r}")
            return None
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")  # internal: a field we declared


def _build(cls: type, data: Mapping[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{where}: unknown field{hint}; known: {', '.join(names)}")
            continue
        kwargs[key] = _convert(value, hints[key], where, problems)
    if problems:
        return None
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any], source: str | None = None) -> TrainConfig:
    """Build and check a TrainConfig; raises one ConfigError listing every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"expected a mapping at the top level, got {type(data).__name__}"], source)
    problems: list[str] = []
    cfg = _build(TrainConfig, data, "", problems)
    if cfg is not None:
        problems += cfg.validate()
    if problems:
        raise ConfigError(problems, source)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {} if nxt is None else nxt
        if not isinstance(nxt, dict):
            raise ConfigError([f"--set {key}: {p!r} is not a section"])
        node = nxt
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML: ``3e-4``, ``true``, ``[asr, mt]``)."""
    import yaml

    problems: list[str] = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected key=value, e.g. --set optim.lr=3e-4")
            continue
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            problems.append(f"--set {key}: cannot parse {raw!r} ({e.__class__.__name__})")
            continue
        # YAML 1.1 reads "3e-4" as a string; a number is what every numeric field means.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        try:
            _set_dotted(tree, key, value)
        except ConfigError as e:
            problems += e.problems
    if problems:
        raise ConfigError(problems)
    return tree


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), **top_level: Any
) -> TrainConfig:
    """YAML file (optional) + dotted overrides + top-level keyword overrides -> checked TrainConfig.

    Relative data paths in the YAML are resolved against the current directory (as a user types
    them), not against the YAML's folder.
    """
    import yaml

    tree: dict[str, Any] = {}
    source = None
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: training config not found")
        if p.is_dir():
            raise ConfigError(["is a directory; pass a training YAML file (see configs/train/)"], source)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(
                [f"not UTF-8 text (byte {e.start}); pass a training YAML file"], source
            ) from None
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], source) from None
        if not isinstance(loaded, dict):
            raise ConfigError([f"expected a mapping at the top level, got {type(loaded).__name__}"], source)
        tree = loaded
    tree = apply_overrides(tree, overrides)
    for k, v in top_level.items():
        if v is not None:
            tree[k] = v
    return config_from_dict(tree, source)
