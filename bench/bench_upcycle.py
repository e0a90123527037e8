"""Training-step cost of up-cycled models vs the dense base, measured in one run on one batch.

    python bench/bench_upcycle.py                      # real SmolLM2 base (neko base smollm2)
    python bench/bench_upcycle.py --tiny               # seconds, for a smoke test

Rows: the dense base; the base up-cycled to E experts top-K in every layer (Mixtral layout); the
same in the Qwen2-MoE layout (to isolate what the layout itself costs); and partial MoE (only the
``--partial`` layers sparse, Qwen2-MoE layout). Each row: total and active parameters, median
forward+backward seconds per step (no optimizer), tokens/s, and the ratio to dense measured in the
same run. Before timing, every up-cycled model is checked to reproduce the dense logits.
"""

from __future__ import annotations

import argparse
import statistics
import time


def _params(model) -> tuple[int, int]:
    """(total, active per token): active counts top-K of E experts in each sparse layer."""
    total = sum(p.numel() for p in model.parameters())
    cfg = model.config
    e = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    if not e:
        return total, total
    k = cfg.num_experts_per_tok
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    return total, total - expert + expert * k // e


def _step_times(model, ids, steps: int) -> tuple[list[float], list[float]]:
    """Wall seconds and process CPU seconds per step. On a shared machine wall time mostly measures the
    neighbours; CPU seconds (all threads of this process) stay comparable across rows."""
    import torch

    model.train()
    labels = ids.clone()
    wall, cpu = [], []
    for i in range(steps + 1):
        model.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        if i > 0:  # first step warms up allocator and kernels
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        assert torch.isfinite(loss)
    model.zero_grad(set_to_none=True)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2", help="Base name for obtain_base or a checkpoint directory.")
    ap.add_argument("--tiny", action="store_true", help="Use a tiny random Llama instead (smoke test).")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--partial", default="-8:", help="moe_layers for the partial row ('' to skip).")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from neko.model.upcycle import upcycle_model

    torch.set_num_threads(args.threads)
    if args.tiny:
        from neko.model.tiny import tiny_llama

        dense = tiny_llama()
        if args.partial == "-8:":
            args.partial = "-1:"  # tiny has 2 layers
    else:
        from pathlib import Path

        from neko.model.offline_base import obtain_base

        path = Path(args.base) if Path(args.base).is_dir() else obtain_base(args.base)
        dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    dense.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, dense.config.vocab_size, (args.batch, args.seq), generator=g)
    probe = ids[:1, :32]
    with torch.no_grad():
        ref = dense(probe).logits

    variants = [("dense", None, {})]
    variants.append((f"{args.experts}x top-{args.top_k}, all layers (Mixtral)", None, {}))
    variants.append(
        (f"{args.experts}x top-{args.top_k}, all layers (Qwen2-MoE)", None, {"layout": "qwen2_moe"})
    )
    if args.partial:
        variants.append(
            (f"{args.experts}x top-{args.top_k}, layers {args.partial} (Qwen2-MoE)", args.partial, {})
        )

    rows = []
    for name, layers, kw in variants:
        if name == "dense":
            model = dense
        else:
            t0 = time.perf_counter()
            model = upcycle_model(dense, args.experts, args.top_k, moe_layers=layers, **kw)
            build = time.perf_counter() - t0
            with torch.no_grad():
                err = (model(probe).logits - ref).abs().max().item()
            print(f"{name}: up-cycled in {build:.1f} s, max |logit - dense| = {err:.2e}", flush=True)
        total, active = _params(model)
        wall, cpu = _step_times(model, ids, args.steps)
        rows.append((name, total, active, statistics.median(wall), statistics.median(cpu)))
        print(f"{name}: wall {[round(t, 2) for t in wall]} cpu {[round(t, 2) for t in cpu]}", flush=True)
        if model is not dense:
            del model

    toks = args.batch * args.seq
    dense_t = rows[0][3]
    print(
        f"\nforward+backward, batch {args.batch} x {args.seq} tokens, fp32, {torch.get_num_threads()} threads"
    )
    print(f"{'model':<44} {'params':>8} {'active':>8} {'s/step':>7} {'tok/s':>7} {'x dense':>7}")
    for name, total, active, med, _best in rows:
        print(
            f"{name:<44} {total / 1e6:>7.0f}M {active / 1e6:>7.0f}M {med:>7.2f} {toks / med:>7.0f} {med / dense_t:>7.2f}"
        )


if __name__ == "__main__":
    main()
