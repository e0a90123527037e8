"""Sparse up-cycling: a dense causal LM becomes a Mixture-of-Experts LM whose experts start as copies of its FFN.

Design choices:
- **Stock transformers layouts, so the result is a plain checkpoint.** Dense Llama / Mistral with every
  layer sparse -> ``MixtralForCausalLM``. Anything else goes to ``Qwen2MoeForCausalLM``, the one
  stock family that mixes dense and sparse layers (``mlp_only_layers``) and has switchable q/k/v
  biases (``qkv_bias``): Qwen2 (q/k/v biases, which Mixtral attention lacks) and partial MoE
  (``moe_layers``, e.g. only the last 8 of 30 layers, to fit a CPU training budget). Its shared
  expert is disabled *exactly* by giving it zero width (``shared_expert_intermediate_size=0``:
  a (0, H) matmul outputs zeros, so ``sigmoid(gate) * 0 == 0``) and its ``norm_topk_prob=True``
  makes the top-K weights sum to one as in Mixtral. Both layouts load and save with plain
  ``AutoModelForCausalLM`` (the zero-width tensors make torch warn "Initializing zero-element
  tensors is a no-op" on every build; ``neko/__init__.py`` silences exactly that message, and
  :mod:`neko.train.checkpoint` keeps Accelerate from dropping them as "shared" on save).
- **Function preservation.** Experts are exact copies (``gate_up_proj[e] = cat(gate, up)``,
  ``down_proj[e] = down``), top-K weights are renormalised to sum to one, so before any training the
  MoE computes exactly the dense function whatever the router says (tested to float tolerance on
  logits and on gradients). A consequence worth knowing: with equal experts the LM loss gives the
  router *zero* gradient (d/dw of sum_k w_k f(x) with sum_k w_k = 1 is 0); the router starts to learn
  once experts have diverged, which they do after the first step because each expert only receives
  the gradients of its own tokens. ``noise_std > 0`` breaks the symmetry from step 0 at the price of
  no longer reproducing the dense logits exactly.
- **Router init.** ``"normal"``: N(0, router_std), router_std defaulting to the dense config's
  ``initializer_range`` (what transformers itself uses). ``"orthogonal"``: orthonormal rows scaled to
  the same expected row norm (router_std * sqrt(hidden_size)), so experts start maximally distinct in
  routing direction at the same logit scale. Both seeded by ``seed`` through a private generator
  (the global torch RNG is not touched).
- **Noise** is relative: ``w_e = w + noise_std * std(w) * N(0, 1)``, independently per expert, so one
  ``noise_std`` means the same thing for every matrix.
- **Gemma (1st generation) folds in exactly.** It differs from Llama in four ways, each of which a
  Mixtral/Qwen2-MoE checkpoint can hold: RMSNorm computes ``x_hat * (1 + w)`` (stored as ``1 + w``,
  the same float32 sum Gemma computes), embeddings are scaled by sqrt(hidden) (folded into the
  embedding matrix with Gemma's own rounding of the scale; the LM head, tied to the unscaled matrix in
  Gemma, becomes a separate copy of it: ``tie_word_embeddings=False``), the FFN is GELU-tanh
  (``hidden_act`` carries over) and head_dim is independent of hidden size (carried over). In fp32
  the MoE reproduces Gemma's logits (tested); in bf16 the norm's cast happens in another place, so
  agreement is to bf16 rounding.
- **Refusals instead of approximations.** Gemma 2/3 add pre/post-FFN norms, logit soft-capping and
  (Gemma 3) q/k norms, which neither layout can express, so they get a clear error; so do models that
  are already MoE, are not causal LMs, or carry biases the target layout cannot hold (Llama/Gemma
  ``attention_bias`` includes an o_proj bias; ``mlp_bias``).
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, MixtralConfig, Qwen2MoeConfig

from neko.io import atomic_dir, check_new_dir
from neko.model.safeload import weights_only_errors

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel

__all__ = [
    "SUPPORTED_DENSE",
    "ROUTER_INITS",
    "LAYOUTS",
    "parse_layer_spec",
    "dense_state_dict",
    "upcycle_config",
    "upcycle_model",
    "upcycle_checkpoint",
]

SUPPORTED_DENSE = ("llama", "mistral", "qwen2", "gemma")
ROUTER_INITS = ("normal", "orthogonal")
LAYOUTS = ("auto", "mixtral", "qwen2_moe")
RouterInit = Literal["normal", "orthogonal"]
Layout = Literal["auto", "mixtral", "qwen2_moe"]

# The dense config fields up-cycling and BTX read, in one table: name -> (copied: up-cycling carries
# it into the MoE config, where both layouts give it the same name and meaning; arch: it fixes the
# tensor shapes or what the shared weights compute, so BTX inputs must agree on it).
_DENSE_FIELDS: dict[str, tuple[bool, bool]] = {
    "model_type": (False, True),
    "vocab_size": (True, True),
    "hidden_size": (True, True),
    "intermediate_size": (True, True),
    "num_hidden_layers": (True, True),
    "num_attention_heads": (True, True),
    "num_key_value_heads": (True, True),
    "head_dim": (False, True),  # passed on separately: it may be absent (hidden_size // heads)
    "hidden_act": (True, True),
    "rms_norm_eps": (True, True),
    "rope_parameters": (True, True),
    "tie_word_embeddings": (True, True),
    "sliding_window": (False, True),  # the layouts express it differently
    "attention_bias": (False, True),
    "mlp_bias": (False, True),
    "max_position_embeddings": (True, False),
    "initializer_range": (True, False),
    "use_cache": (True, False),
    "pad_token_id": (True, False),
    "bos_token_id": (True, False),
    "eos_token_id": (True, False),
    "attention_dropout": (True, False),
}
SHARED_FIELDS = tuple(f for f, (copied, _) in _DENSE_FIELDS.items() if copied)
ARCH_FIELDS = tuple(f for f, (_, arch) in _DENSE_FIELDS.items() if arch)
_MOE_HINTS = ("num_local_experts", "num_experts", "moe_intermediate_size", "n_routed_experts")


def parse_layer_spec(spec: str | Iterable[int] | None, num_layers: int) -> list[int] | None:
    """``"22-29"``, ``"0,4,8-11"``, ``"-8:"`` (the last 8) or a list of ints -> sorted unique indices.

    ``None`` means every layer. Raises ValueError naming the bad part.
    """
    if spec is None:
        return None
    out: set[int] = set()
    if isinstance(spec, str):
        s = spec.strip()
        if s.endswith(":") and s[:-1].lstrip("-").isdigit():
            start = int(s[:-1])
            start = start + num_layers if start < 0 else start
            if not 0 <= start < num_layers:
                raise ValueError(f"moe_layers {spec!r}: start {start} is outside 0..{num_layers - 1}")
            return list(range(start, num_layers))
        for part in filter(None, (p.strip() for p in s.split(","))):
            lo, sep, hi = part.partition("-")
            try:
                rng = range(int(lo), int(hi) + 1) if sep else [int(part)]
            except ValueError:
                raise ValueError(
                    f"moe_layers {spec!r}: cannot read {part!r}; use e.g. '22-29', '0,4,8-11' or '-8:'"
                ) from None
            if sep and int(hi) < int(lo):
                raise ValueError(f"moe_layers {spec!r}: range {part!r} is empty (write low-high)")
            out.update(rng)
    else:
        out.update(int(i) for i in spec)
    if not out:
        raise ValueError(f"moe_layers {spec!r} selects no layer; pass None for all layers")
    bad = sorted(i for i in out if not 0 <= i < num_layers)
    if bad:
        raise ValueError(f"moe_layers {spec!r}: layers {bad} do not exist (model has 0..{num_layers - 1})")
    return sorted(out)


def _check_dense(config: PreTrainedConfig, model: PreTrainedModel | None = None) -> str:
    mt = getattr(config, "model_type", None)
    if any(getattr(config, h, None) for h in _MOE_HINTS):
        raise ValueError(
            f"model_type {mt!r} is already a Mixture-of-Experts model; up-cycling needs a dense causal LM "
            f"(one of {', '.join(SUPPORTED_DENSE)})"
        )
    if mt and mt != "gemma" and mt.startswith(("gemma", "recurrent_gemma", "paligemma")):
        raise ValueError(
            f"model_type {mt!r}: Gemma 2/3-family models cannot be up-cycled exactly into Mixtral/Qwen2-MoE: "
            "their pre/post-FFN norms, logit soft-capping (and Gemma 3's q/k norms) have no place in those "
            "layouts. Gemma (1st generation, model_type 'gemma') up-cycles exactly; so do Llama/Mistral/Qwen2 "
            "(e.g. `neko base smollm2`)."
        )
    if mt == "gemma" and getattr(config, "use_bidirectional_attention", False):
        raise ValueError(
            "gemma checkpoint has use_bidirectional_attention=True; up-cycling needs a causal LM"
        )
    if mt not in SUPPORTED_DENSE:
        raise ValueError(
            f"model_type {mt!r} cannot be up-cycled: supported dense causal LMs are {', '.join(SUPPORTED_DENSE)}"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"model_type {mt!r} is an encoder-decoder; up-cycling needs a decoder-only causal LM"
        )
    if model is not None and not type(model).__name__.endswith("ForCausalLM"):
        raise ValueError(
            f"{type(model).__name__} is not a causal LM head model; load the checkpoint with "
            "AutoModelForCausalLM (up-cycling needs the LM head)"
        )
    if getattr(config, "mlp_bias", False):
        raise ValueError(f"{mt} checkpoint has mlp_bias=True; MoE expert tensors have no biases")
    if mt in ("llama", "gemma") and getattr(config, "attention_bias", False):
        raise ValueError(
            f"{mt} checkpoint has attention_bias=True (q/k/v *and* o_proj biases); no stock MoE layout has an "
            "o_proj bias, so it cannot be up-cycled exactly"
        )
    return mt


def upcycle_config(
    dense_config: PreTrainedConfig,
    num_experts: int = 8,
    num_experts_per_tok: int = 2,
    moe_layers: str | Iterable[int] | None = None,
    layout: Layout = "auto",
) -> MixtralConfig | Qwen2MoeConfig:
    """The MoE config an up-cycled ``dense_config`` gets (MixtralConfig or Qwen2MoeConfig); no weights."""

    mt = _check_dense(dense_config)
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if not 1 <= num_experts_per_tok <= num_experts:
        raise ValueError(
            f"num_experts_per_tok must be in 1..num_experts ({num_experts}), got {num_experts_per_tok}"
        )
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} unknown; choose one of {LAYOUTS}")
    n_layers = dense_config.num_hidden_layers
    layers = parse_layer_spec(moe_layers, n_layers)
    partial = layers is not None and len(layers) < n_layers
    if layout == "auto":
        layout = "qwen2_moe" if (mt == "qwen2" or partial) else "mixtral"
    if layout == "mixtral" and mt == "qwen2":
        raise ValueError(
            "qwen2 has q/k/v biases that Mixtral attention lacks; use layout='qwen2_moe' (the default)"
        )
    if layout == "mixtral" and partial:
        raise ValueError(
            "Mixtral cannot mix dense and MoE layers; use layout='qwen2_moe' (the default for moe_layers)"
        )

    kw = {f: copy.deepcopy(getattr(dense_config, f)) for f in SHARED_FIELDS if hasattr(dense_config, f)}
    if mt == "gemma":
        kw["tie_word_embeddings"] = False  # the head keeps the unscaled matrix (see dense_state_dict)
    head_dim = (
        getattr(dense_config, "head_dim", None)
        or dense_config.hidden_size // dense_config.num_attention_heads
    )
    if layout == "mixtral":
        cfg = MixtralConfig(
            **kw,
            head_dim=head_dim,
            # Llama has no sliding window; Mistral's applies to every layer, exactly as in Mixtral.
            sliding_window=getattr(dense_config, "sliding_window", None) if mt == "mistral" else None,
            num_local_experts=num_experts,
            num_experts_per_tok=num_experts_per_tok,
        )
    else:
        if mt == "qwen2":
            sliding = dict(
                use_sliding_window=bool(getattr(dense_config, "use_sliding_window", False)),
                sliding_window=getattr(dense_config, "sliding_window", None),
                layer_types=list(dense_config.layer_types),
            )
        elif mt == "mistral" and getattr(dense_config, "sliding_window", None) is not None:
            sliding = dict(
                use_sliding_window=True,
                sliding_window=dense_config.sliding_window,
                layer_types=["sliding_attention"] * n_layers,
            )
        else:
            sliding = dict(use_sliding_window=False, layer_types=["full_attention"] * n_layers)
        moe_set = set(range(n_layers) if layers is None else layers)
        cfg = Qwen2MoeConfig(
            **kw,
            **sliding,
            # Not a Qwen2MoeConfig field, but its attention and rotary read config.head_dim when present.
            head_dim=head_dim,
            qkv_bias=(mt == "qwen2"),
            moe_intermediate_size=dense_config.intermediate_size,
            shared_expert_intermediate_size=0,
            num_experts=num_experts,
            num_experts_per_tok=num_experts_per_tok,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[i for i in range(n_layers) if i not in moe_set],
        )
    return cfg


def _router_weight(init: str, shape: tuple[int, int], std: float, gen: Any) -> Any:

    if init == "normal":
        return torch.randn(shape, generator=gen) * std
    if init == "orthogonal":
        e, h = shape
        # QR of a Gaussian gives orthonormal columns; with E <= H the E rows are orthonormal.
        a = torch.randn((max(e, h), min(e, h)), generator=gen)
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
        w = q.T if e <= h else q
        return w[:e, :h] * (std * math.sqrt(h))
    raise ValueError(f"router_init {init!r} unknown; choose one of {ROUTER_INITS}")


def _noisy(w: Any, noise_std: float, gen: Any) -> Any:

    if noise_std <= 0:
        return w.clone()
    scale = w.float().std().item()
    return w + (torch.randn(w.shape, generator=gen) * (noise_std * scale)).to(w.dtype)


def dense_state_dict(dense_model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The dense model's tensors in the Llama convention the MoE layouts compute with.

    Llama/Mistral/Qwen2: the state dict as is. Gemma: RMSNorm weights as ``1 + w`` (float32 sum, as
    Gemma's forward does), the token embeddings times Gemma's sqrt(hidden) scale (rounded to the
    weight dtype, as its forward does), and ``lm_head.weight`` the unscaled matrix when the head was
    tied to it."""

    src = dict(dense_model.state_dict())
    cfg = dense_model.config
    if cfg.model_type != "gemma":
        return src
    out = {}
    for k, v in src.items():
        if k.endswith("norm.weight"):
            v = (1.0 + v.float()).to(v.dtype)
        out[k] = v
    emb = src["model.embed_tokens.weight"]
    out["model.embed_tokens.weight"] = emb * torch.tensor(cfg.hidden_size**0.5).to(emb.dtype)
    if getattr(cfg, "tie_word_embeddings", False) or "lm_head.weight" not in src:
        out["lm_head.weight"] = emb.clone()
    return out


def upcycle_model(
    dense_model: PreTrainedModel,
    num_experts: int = 8,
    num_experts_per_tok: int = 2,
    router_init: RouterInit = "normal",
    router_std: float | None = None,
    noise_std: float = 0.0,
    moe_layers: str | Iterable[int] | None = None,
    seed: int = 0,
    layout: Layout = "auto",
) -> PreTrainedModel:
    """Dense Llama/Mistral/Qwen2/Gemma ``*ForCausalLM`` -> MoE model with ``num_experts`` copies of each FFN.

    Returns ``MixtralForCausalLM`` (Llama/Mistral/Gemma, all layers) or ``Qwen2MoeForCausalLM`` (Qwen2, or a
    partial ``moe_layers`` selection such as ``"22-29"`` / ``"-8:"``), in the dense model's dtype, in
    eval mode like ``from_pretrained``. With ``noise_std=0`` it computes the dense model's function.
    Every target tensor is assigned and shape-checked; nothing is left at random init except routers.
    """

    if router_init not in ROUTER_INITS:
        raise ValueError(f"router_init {router_init!r} unknown; choose one of {ROUTER_INITS}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    dcfg = dense_model.config
    _check_dense(dcfg, dense_model)
    cfg = upcycle_config(dcfg, num_experts, num_experts_per_tok, moe_layers, layout)
    std = dcfg.initializer_range if router_std is None else float(router_std)
    if std < 0:
        raise ValueError(f"router_std must be >= 0, got {std}")
    cfg.neko_upcycle = {
        "source_model_type": dcfg.model_type,
        "source": str(getattr(dcfg, "_name_or_path", "") or ""),
        "router_init": router_init,
        "router_std": std,
        "noise_std": float(noise_std),
        "seed": int(seed),
    }
    if dcfg.model_type == "gemma":
        cfg.neko_upcycle["folded"] = [
            "RMSNorm weights stored as 1 + w",
            "sqrt(hidden_size) embedding scale in embed_tokens; lm_head untied (the unscaled matrix)",
        ]
    attn = getattr(dcfg, "_attn_implementation", None)
    dtype = next(dense_model.parameters()).dtype
    with torch.device("meta"):
        moe = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)
    gen = torch.Generator().manual_seed(int(seed))

    src = dense_state_dict(dense_model)
    target_shapes = {k: v.shape for k, v in moe.state_dict().items()}
    mlp_only = set(getattr(cfg, "mlp_only_layers", []) or [])
    new: dict[str, Any] = {}
    used: set[str] = set()
    for key, shape in target_shapes.items():
        parts = key.split(".")
        if ".mlp." in key and parts[1] == "layers" and int(parts[2]) not in mlp_only:
            i = int(parts[2])
            pre = f"model.layers.{i}.mlp."
            names = [pre + n + ".weight" for n in ("gate_proj", "up_proj", "down_proj")]
            gate, up, down = (src[n] for n in names)
            used.update(names)
            leaf = key[len(pre) :]
            if leaf == "experts.gate_up_proj":
                gu = torch.cat([gate, up], dim=0)  # (2I, H): MoE experts chunk gate first, then up
                val = torch.stack([_noisy(gu, noise_std, gen) for _ in range(num_experts)])
            elif leaf == "experts.down_proj":
                val = torch.stack([_noisy(down, noise_std, gen) for _ in range(num_experts)])
            elif leaf == "gate.weight":
                val = _router_weight(router_init, (num_experts, cfg.hidden_size), std, gen).to(dtype)
            elif leaf.startswith("shared_expert"):
                # Zero-width shared expert (and a zero gate): contributes exactly nothing.
                val = torch.zeros(shape, dtype=dtype)
            else:
                raise AssertionError(f"unmapped MoE tensor {key}")
        elif key in src:
            val = src[key].clone()
            used.add(key)
        elif key == "lm_head.weight" and cfg.tie_word_embeddings:
            val = src["model.embed_tokens.weight"].clone()
        else:
            raise ValueError(f"up-cycling found no source tensor for {key}; is the checkpoint complete?")
        if tuple(val.shape) != tuple(shape):
            raise ValueError(f"{key}: source shape {tuple(val.shape)} != target shape {tuple(shape)}")
        new[key] = val.to(dtype)
    leftover = sorted(set(src) - used - {"lm_head.weight"})
    if leftover:
        raise ValueError(
            f"up-cycling would drop dense tensors {leftover[:5]}; unsupported architecture variant"
        )

    moe.load_state_dict(new, strict=True, assign=True)
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: rebuild that module off meta,
    # with the model's own class, so every rope_type (default, llama3, yarn ...) is handled by transformers.
    rotary = moe.model.rotary_emb
    moe.model.rotary_emb = type(rotary)(config=moe.config)
    stray = [n for n, t in [*moe.named_parameters(), *moe.named_buffers()] if t.is_meta]
    if stray:
        raise AssertionError(f"tensors left uninitialised after up-cycling: {stray[:5]}")
    if cfg.tie_word_embeddings:
        moe.tie_weights()
    if getattr(dense_model, "generation_config", None) is not None:
        moe.generation_config = copy.deepcopy(dense_model.generation_config)
    moe.eval()
    return moe


def upcycle_checkpoint(src_dir: str | Path, out_dir: str | Path, **kwargs: Any) -> Path:
    """Load a dense checkpoint directory, up-cycle it (``upcycle_model`` kwargs) and save model + tokenizer.

    Written into a temporary sibling directory and renamed into place, so ``out_dir`` is either the
    complete checkpoint or absent. Other files next to the weights (``neko_prompts.json`` ...) are copied.
    """

    src, out = Path(src_dir), Path(out_dir)
    if not (src / "config.json").is_file():
        raise ValueError(f"{src} is not a model directory (no config.json); pass a save_pretrained folder")
    check_new_dir(out)
    _check_dense(AutoConfig.from_pretrained(src))  # fail before loading weights
    with weights_only_errors(src):
        dense = AutoModelForCausalLM.from_pretrained(src, dtype="auto")  # keep the checkpoint's dtype
    moe = upcycle_model(dense, **kwargs)
    del dense
    with atomic_dir(out) as tmp:
        moe.save_pretrained(tmp)
        tok_files = list(src.glob("tokenizer*")) + list(src.glob("special_tokens_map.json"))
        if tok_files:
            AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        for extra in src.glob("neko_*.json"):
            shutil.copy2(extra, tmp / extra.name)
    return out
