"""Load a neko model directory for inference: weights, tokenizer and the prompts saved beside them.

Each way a directory can be wrong (missing, no config.json, not a causal LM, a refused prompt
template, no tokenizer, unreadable weights) is one ValueError naming the directory, checked in the
order that fails fastest: the prompts before the weights are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from neko.infer.options import CorrectionOptions, resolve_device, resolve_precision_on
from neko.model.precision import Precision, torch_dtype
from neko.model.safeload import UnsafeWeights, weights_only_errors
from neko.tasks import TaskRegistry, load_prompt_config

__all__ = ["LoadedModel", "eos_token_ids", "load_model_dir"]


@dataclass
class LoadedModel:
    """What a Corrector is built from: the model on its device, its tokenizer, and its prompts."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    registry: TaskRegistry
    use_chat_template: bool
    precision: Precision  # what options.dtype resolved to here, and why


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and the generation config's."""
    eos = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    ids = sorted(e for e in eos if e is not None)
    if not ids:
        raise ValueError("the tokenizer has no EOS token; set eos_token in the model directory's tokenizer")
    return ids


def load_model_dir(model_dir: Path, options: CorrectionOptions) -> LoadedModel:
    """The model of ``model_dir`` on ``options.device`` in ``options.dtype`` (its weights in bf16 for
    the bf16 path), frozen for inference."""
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"{model_dir}: model directory not found; pass the directory `neko train` wrote"
        )
    if not (model_dir / "config.json").exists():
        raise ValueError(
            f"{model_dir}: not a model directory (no config.json); pass a directory saved with save_pretrained"
        )
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (ValueError, OSError, KeyError) as e:
        raise ValueError(f"{model_dir}: unreadable config.json ({e})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"{model_dir}: model type {config.model_type!r} is not a causal language model; "
            "neko corrects with decoder-only LMs (e.g. Mixtral, Qwen2-MoE, Llama)"
        )
    # the prompts first: a refused template (issue 23.3) fails before the weights are read
    registry, use_chat = load_prompt_config(model_dir)
    device = resolve_device(options.device)
    precision = resolve_precision_on(options.dtype, device)
    dtype = torch_dtype(precision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (ValueError, OSError) as e:
        raise ValueError(
            f"{model_dir}: no usable tokenizer ({e}); save the tokenizer with the model"
        ) from None
    try:
        with weights_only_errors(model_dir):
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    except UnsafeWeights:
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"{model_dir}: could not load the model weights ({e})") from None
    model.to(device)
    model.requires_grad_(False)  # inference only; never flip the process-wide grad mode
    return LoadedModel(model, tokenizer, registry, use_chat, precision)
