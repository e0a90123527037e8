"""The settings of the two runs: ``neko quickstart`` and ``neko experiment``, with their profiles.

Light on purpose: ``neko --help`` reads these defaults, so nothing here loads torch at import.
What each setting does to a run: :mod:`neko.experiment.quickstart` and :mod:`neko.experiment.compare`;
what the experiment's profiles cost: :mod:`neko.experiment.budget`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from neko.experiment.rows import EvalPlan
from neko.paths import BENCHMARK_DIR

__all__ = [
    "QuickstartConfig",
    "ExperimentConfig",
    "has_gpu",
    "SYSTEMS",
    "CORE_SYSTEMS",
    "PAPER_SYSTEMS",
    "PLAIN_DECODING",
    "AUX_LOSSES",
    "CPU_MOE_LAYERS",
    "PROFILES",
]

SYSTEMS = ("dense", "moe", "neko", "lora", "btx", "single", "moe_lb", "neko_lb")
CORE_SYSTEMS = ("dense", "moe", "neko")
# The paper's comparison: every system but the balance-loss ablation pair.
PAPER_SYSTEMS = ("dense", "moe", "neko", "lora", "btx", "single")
AUX_LOSSES = ("off", "standard", "free")
# Layers made MoE by the reduced profile on the default base: all-layer MoE trains 2.3x slower on 2 cores.
CPU_MOE_LAYERS = list(range(24, 30))


def has_gpu() -> bool:
    import torch  # here, not at the top: `neko --help` reads this module

    return torch.cuda.is_available()


@dataclass
class QuickstartConfig:
    """base: offline base name, model directory or ``tiny:llama`` (tests).
    steps: optimizer steps of ``micro_batch_size`` packed rows of ``max_seq_len`` tokens (0 = whole
    ``epochs``); train_time_s > 0 stops at that time instead (machine-dependent: off by default).
    moe_layers: None = the device default (CPU: the last 6 layers; GPU: every layer, as in the paper).
    train_layers: None = every weight trains (both profiles); "all" freezes only the embeddings,
    "moe" everything below the MoE block (see ModelConfig.train_layers).
    policy_dev_rows: dev rows per task the correction policy is tuned on (0 = plain generation).
    gpu: None = auto-detect; True/False forces the profile."""

    base: str = "smollm2"
    output_dir: str = "runs/quickstart"
    data_dir: str = str(BENCHMARK_DIR)
    num_experts: int = 8
    top_k: int = 2
    moe_layers: str | list[int] | None = None
    cpu_moe_layers: tuple[int, ...] = (24, 25, 26, 27, 28, 29)
    train_layers: str | None = None
    lr: float = 2e-4
    epochs: int = 1
    micro_batch_size: int = 4
    max_seq_len: int = 384
    steps: int = 80
    train_time_s: float = 0.0
    use_chat_template: bool = True
    # Sampling weight per task (copies per epoch; with a fixed number of steps: the share of steps).
    # ASR at half weight: its 6.5k train rows (PocketSphinx, Whisper tiny.en, HyPoradise ATIS) would
    # otherwise take 39% of the steps; at 0.5 it gets 26% and the other tasks as many steps as the
    # 60-step run gave them before the neural-recognizer rows joined (80 x 74% ~ 60 x 92%).
    task_weights: dict[str, float] = field(default_factory=lambda: {"asr": 0.5})
    routing_rows: int = 48
    policy_dev_rows: int = 40
    # ASR is scored per recognizer domain (PocketSphinx, Whisper tiny.en, Whisper tiny.en on held-out
    # conditions, released sets such as HyPoradise ATIS): test rows per domain (0 = all), and dev
    # rows per neural-recognizer domain the ASR policy is tuned on (the policy is tuned on Whisper
    # output: what our users hold; PocketSphinx rows get the same policy and are reported apart).
    asr_rows_per_domain: int = 80
    asr_dev_rows_per_domain: int = 60
    # The policy's harm cap on dev (share of rows made worse than the 1-best) and the least share of
    # the 1-best's dev errors a mode must remove to be chosen over a simpler one.
    max_harm: float = 0.10
    min_gain: float = 0.02
    seed: int = 0
    gpu: bool | None = None
    eval: EvalPlan = field(default_factory=EvalPlan)
    # Keep a finished model of this exact training config in output_dir/model (its neko_train.json
    # holds the config; training files compared by content) and redo policy, decoding and report.
    reuse_model: bool = False

    def for_device(self) -> QuickstartConfig:
        """The profile for this machine (see :mod:`neko.experiment.quickstart`)."""
        gpu = has_gpu() if self.gpu is None else self.gpu
        if not gpu:
            cpu_base = self.base == "smollm2"
            return replace(
                self,
                gpu=False,
                moe_layers=list(self.cpu_moe_layers)
                if self.moe_layers is None and cpu_base
                else self.moe_layers,
            )
        default = QuickstartConfig()
        return replace(
            self,
            gpu=True,
            epochs=3,
            steps=0 if self.steps == default.steps else self.steps,
            micro_batch_size=16,
            lr=1e-4,
            policy_dev_rows=100 if self.policy_dev_rows == default.policy_dev_rows else self.policy_dev_rows,
            asr_rows_per_domain=0
            if self.asr_rows_per_domain == default.asr_rows_per_domain
            else self.asr_rows_per_domain,
            asr_dev_rows_per_domain=200
            if self.asr_dev_rows_per_domain == default.asr_dev_rows_per_domain
            else self.asr_dev_rows_per_domain,
            eval=replace(self.eval, rows_per_task=0, batch_size=64, dtype="bf16"),
        )


@dataclass
class ExperimentConfig:
    """steps: optimizer steps per system (the equal budget) of micro_batch_size packed rows of
    max_seq_len tokens. systems: which to train (see :mod:`neko.experiment.compare`). aux_loss /
    aux_coef: the load-balancing loss of both MoE systems (the ``*_lb`` pair always uses "standard"
    with aux_coef). btx_branch_share: share of BTX's budget spent on its task branches.
    inference_top_k: extra NeKo inference settings scored beside the model's own. zeroshot: also
    score test_zeroshot.jsonl when the data directory has it. asr_rows_per_domain: ASR test rows per
    recognizer domain (:func:`neko.experiment.rows.asr_domain`), and zero-shot ASR rows per domain and
    held-out condition (0 = all); the other tasks take ``eval.rows_per_task``."""

    base: str = "smollm2"
    output_dir: str = "runs/experiment"
    data_dir: str = str(BENCHMARK_DIR)
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    steps: int = 144
    num_experts: int = 8
    top_k: int = 2
    moe_layers: str | list[int] | None = None
    lr: float = 2e-4
    micro_batch_size: int = 4
    max_seq_len: int = 384
    aux_loss: str = "off"
    aux_coef: float = 0.01
    lora_r: int = 16
    btx_branch_share: float = 0.5
    inference_top_k: list[int] = field(default_factory=lambda: [1, 3])
    zeroshot: bool = True
    asr_rows_per_domain: int = 40
    precision: str = "fp32"
    seed: int = 0
    eval: EvalPlan = field(default_factory=lambda: EvalPlan(rows_per_task=100))

    def __post_init__(self) -> None:
        bad = [s for s in self.systems if s not in SYSTEMS]
        if bad:
            raise ValueError(f"unknown system(s) {bad}; choose from {', '.join(SYSTEMS)}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.asr_rows_per_domain < 0:
            raise ValueError(f"asr_rows_per_domain must be >= 0 (0 = all), got {self.asr_rows_per_domain}")
        if self.aux_loss not in AUX_LOSSES:
            raise ValueError(f"aux_loss must be one of {', '.join(AUX_LOSSES)}, got {self.aux_loss!r}")
        if not 0 < self.btx_branch_share < 1:
            raise ValueError(f"btx_branch_share must be in (0, 1), got {self.btx_branch_share}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in 1..num_experts ({self.num_experts}), got {self.top_k}")
        bad_k = [k for k in self.inference_top_k if not 1 <= k <= self.num_experts]
        if bad_k:  # checked now: it would otherwise fail after hours of training, at decoding
            raise ValueError(f"inference top-K {bad_k} outside 1..num_experts ({self.num_experts})")


PROFILES: dict[str, dict[str, Any]] = {
    # 2-core CPU, 2.5-4.7 h (neko.experiment.budget): every system of the paper at 144 steps each,
    # NeKo also at top-1/top-3; 80 test rows per task, ASR 40 per recognizer domain and held-out condition.
    "reduced": {
        "steps": 144,
        "systems": list(PAPER_SYSTEMS),
        "inference_top_k": [1, 3],
        "asr_rows_per_domain": 40,
        "eval": EvalPlan(rows_per_task=80),
    },
    # One GPU: every system, every test row.
    "full": {
        "steps": 300,
        "micro_batch_size": 16,
        "lr": 1e-4,
        "precision": "bf16",
        "asr_rows_per_domain": 0,
        "eval": EvalPlan(rows_per_task=0, batch_size=64, dtype="bf16"),
    },
}

# How the comparison decodes every row (CorrectionOptions fields): greedy generation and nothing else.
# The Corrector's defaults would add a copy bias of 1.5 on single-text inputs (OCR, TEC, typo), a tuned
# policy and guard where the model has one, and keep agreeing N-best rows unread; the paper has none.
PLAIN_DECODING: dict[str, Any] = {
    "mode": "generate",
    "guard": "off",
    "keep_if_agree": False,
    "copy_bias": 0.0,
}
