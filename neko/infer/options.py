"""Decoding and serving options: every inference default lives here and only here.

Two frozen dataclasses (whisper's ``DecodingOptions`` pattern), ``CorrectionOptions`` (decoding) and
``ServerConfig`` (``neko serve``): the Python API, ``neko correct``, ``neko serve`` and the benchmarks
all start from their defaults and override fields with ``dataclasses.replace``, so the CLI can never
drift from the library's defaults. Nothing here loads torch (``neko --help`` reads these).

Design choices:
- Greedy decoding with the KV cache is the default: correction outputs are short and close to the
  input, and beam search costs ``num_beams`` times the compute for gains the paper does not report.
- ``top_k_experts=None`` (default) routes with the model's own ``num_experts_per_tok``: top-2 for the
  paper's up-cycled models (plain top-2 routing; task-guided routing is a training-time device),
  top-4 for a stock Qwen1.5-MoE, whose router was trained that way. An int forces that K.
- Batches are formed from length-sorted prompts so left padding wastes few positions.
- Inputs above ``max_input_tokens`` are rejected per item rather than silently truncated: a cut
  N-best list would be corrected into a confidently wrong answer.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Literal

from neko.model.precision import Precision, check_precision, resolve_precision, torch_dtype

__all__ = [
    "CORRECT_MODES",
    "CorrectionOptions",
    "ServerConfig",
    "is_loopback",
    "new_token_limit",
    "resolve_device",
    "resolve_dtype",
    "resolve_precision_on",
]

GuardMode = Literal["auto", "on", "off"]
CorrectMode = Literal["auto", "generate", "rescore", "keep", "constrained"]
CORRECT_MODES: tuple[str, ...] = ("auto", "generate", "rescore", "keep", "constrained")


@dataclass(frozen=True)
class CorrectionOptions:
    # Most tokens generated per item. None = per item, from its input: ceil(length_ratio x tokens of
    # its longest hypothesis) + length_slack. A correction is about as long as its input, so a fixed
    # cap either cuts long inputs (a ~1,000-character OCR page is ~250 tokens) or lets a run-on
    # repetition of a short one go on for a hundred tokens.
    max_new_tokens: int | None = None
    length_ratio: float = 1.5
    length_slack: int = 16
    # 1 = greedy (default). >1 = beam search with that many beams.
    num_beams: int = 1
    # Items per generate() call. 16 is where CPU throughput flattens for small models (bench_correct).
    batch_size: int = 16
    # Router top-K at inference for every MoE layer. None keeps the checkpoint's own (2 for neko's
    # up-cycled models, as in the paper; 4 for Qwen1.5-MoE).
    top_k_experts: int | None = None
    # Sort items by prompt length before batching (results are always returned in input order).
    sort_by_length: bool = True
    # Per-item limits: longer inputs get an error on that item, the batch goes on.
    max_input_tokens: int = 2048
    max_input_chars: int = 50_000
    # "auto" = CUDA when available, else CPU; or any torch device string.
    device: str = "auto"
    # The precision weights load and compute in (``--precision``): "auto" = bf16 where the hardware
    # computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16/AMX), else fp32
    # (neko.model.precision); or fp32 / bf16 / fp16 (torch's float32 / bfloat16 / float16 too).
    dtype: str = "auto"
    # Conservative generation: added to the logit of every token that occurs in the item's input
    # (its hypotheses, in their cased and spaced variants) at each step, so the model leaves the
    # input only where it is that much more confident. inf = generate only such tokens (plus EOS and
    # punctuation). 0 = off. None = by input kind: 1.5 on single texts (OCR, TEC, unseen tasks),
    # off on N-best lists. Chosen on dev (bench/bench_copy_bias.py, NOTES): on a 60-step model,
    # bias 1.5 took raw OCR WER 36.4 -> 30.0, TEC-grammar 12.7 -> 12.0, typo 17.3 -> 14.2 and
    # roughly halved the rows made worse.
    copy_bias: float | None = None
    # What to return (neko.infer.policy): "auto" = each task's mode from the model's tuned
    # neko_policy.json (plain generation when it has none); or one mode for every task:
    # "generate", "rescore" (best N-best hypothesis under the model), "keep" (the input) or
    # "constrained" (generation from the input hypotheses' tokens only, guarded like "generate").
    mode: CorrectMode = "auto"
    # Return the 1-best without running the model when an N-best list's hypotheses agree after the
    # Whisper normalizer (neko.infer.policy.hypotheses_agree). None = the task policy's setting (on
    # unless a tuned policy says otherwise); False = never (raw decoding, e.g. comparing plain
    # generation); True = always.
    keep_if_agree: bool | None = None
    # No-harm guard on generated text: "auto" = on when the model has a tuned policy.
    guard: GuardMode = "auto"

    def copy_bias_for(self, nbest: bool) -> float:
        """The copy bias an item is generated with: ``copy_bias``, else by input kind (above)."""
        if self.copy_bias is not None:
            return self.copy_bias
        return 0.0 if nbest else 1.5

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(
                f"max_new_tokens must be >= 1 or None (from the input), got {self.max_new_tokens}"
            )
        if self.copy_bias is not None and self.copy_bias < 0:
            raise ValueError(
                f"copy_bias must be >= 0 (0 = off, inf = input tokens only), got {self.copy_bias}"
            )
        if self.length_ratio <= 0 or self.length_slack < 0:
            raise ValueError(
                f"length_ratio must be > 0 and length_slack >= 0, got {self.length_ratio}, {self.length_slack}"
            )
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1 (1 = greedy), got {self.num_beams}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.top_k_experts is not None and self.top_k_experts < 1:
            raise ValueError(
                f"top_k_experts must be >= 1 or None (keep the checkpoint's), got {self.top_k_experts}"
            )
        if self.max_input_tokens < 1 or self.max_input_chars < 1:
            raise ValueError("max_input_tokens and max_input_chars must be >= 1")
        check_precision(self.dtype, "precision (dtype)")
        if self.mode not in CORRECT_MODES:
            raise ValueError(
                f"mode must be 'auto', 'generate', 'rescore', 'keep' or 'constrained', got {self.mode!r}"
            )
        if self.keep_if_agree not in (None, True, False):
            raise ValueError(f"keep_if_agree must be None, True or False, got {self.keep_if_agree!r}")
        if self.guard not in ("auto", "on", "off"):
            raise ValueError(f"guard must be 'auto', 'on' or 'off', got {self.guard!r}")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer token required on /v1 routes when set (the CLI also reads $NEKO_API_KEY).
    api_key: str | None = None
    # Most items decoded together; the worker waits up to max_wait_ms for a batch to fill.
    max_batch: int = 16
    max_wait_ms: float = 5.0
    # Most items waiting for the model; beyond it requests get 429.
    max_queue: int = 256
    # Seconds a request may wait for its results (queueing + decoding) before 504.
    timeout: float = 30.0
    max_body_bytes: int = 1_000_000
    max_items: int = 64
    model_name: str = "neko"
    # Serve a non-loopback address without an API key (refused otherwise).
    insecure: bool = False
    # Host header names accepted besides the bind address and the loopback names (e.g. a DNS name).
    allowed_hosts: tuple[str, ...] = ()
    # Open connections at once; well under the open-file limit (serve() checks), so a crowd of slow
    # clients cannot exhaust file descriptors.
    max_connections: int = 256
    # Open connections from one client address; so one client holding idle connections cannot take
    # every slot and starve the others (issue 23.5). Behind a reverse proxy every client is the
    # proxy's address: raise it to max_connections there and limit clients at the proxy.
    max_connections_per_client: int = 32
    # Seconds a client has to send a request's headers, and then its body (408 after).
    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def __post_init__(self) -> None:
        counts = (
            self.max_batch,
            self.max_queue,
            self.max_items,
            self.max_connections,
            self.max_connections_per_client,
        )
        if min(counts) < 1:
            raise ValueError(
                "max_batch, max_queue, max_items, max_connections and max_connections_per_client must be >= 1"
            )
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        # NaN passes `x <= 0` (every comparison with NaN is false) and made every request a 504
        # (issue 23.6); inf would never time out. Each must be a finite number above 0 (the batch
        # wait may be 0: decode what is there at once).
        for name in ("timeout", "header_timeout", "body_timeout", "max_wait_ms"):
            value = getattr(self, name)
            low_ok = value >= 0 if name == "max_wait_ms" else value > 0
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok):
                flag = "--" + name.replace("_", "-")
                what = "a finite number >= 0" if name == "max_wait_ms" else "a positive finite number"
                raise ValueError(f"{name} must be {what}, got {value} ({flag})")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if not is_loopback(self.host) and self.api_key is None and not self.insecure:
            raise ValueError(
                f"refusing to serve on {self.host} without an API key: anyone who can reach it could use "
                "the model. Set --api-key (or $NEKO_API_KEY), or pass --insecure to accept that"
            )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token_limit(options: CorrectionOptions, input_tokens: int) -> int:
    """The generation limit of one item whose longest hypothesis is ``input_tokens`` tokens long."""
    if options.max_new_tokens is not None:
        return options.max_new_tokens
    return math.ceil(options.length_ratio * input_tokens) + options.length_slack


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else must name a usable
    torch device (a typo or an absent GPU is one clear error here, not a torch traceback later)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index or 0) >= n:
            raise ValueError(f"device {device!r}: {n} CUDA GPU(s) visible here; use --device cpu (or auto)")
    return device


def resolve_precision_on(dtype: str, device: str) -> Precision:
    """The precision (with the reason) that ``dtype`` means on ``device`` (a resolved device string):
    ``auto`` -> bf16 where the GPU or CPU computes bf16 natively, else fp32."""
    import torch

    return resolve_precision(dtype, torch.device(device).type)


def resolve_dtype(dtype: str, device: str):
    """The torch dtype of :func:`resolve_precision_on`."""
    return torch_dtype(resolve_precision_on(dtype, device))
