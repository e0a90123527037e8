"""Cost of task-guided routing: one training step (forward + backward), same weights and batch, for

  plain       stock transformers top-K routing (the reference, ratio 1.00)
  guided      NeKo task-guided routing (neko.model.routing hooks), packed rows mixing 5 tasks + padding
  dense-eq    a dense SwiGLU FFN with K x intermediate_size: the same active FFN FLOPs per token
              (= the ideal of K dense FFN passes; a perfect MoE kernel would match it)

Two scopes, both measured by default:
  layer   one sparse block (router + experts) vs one dense FFN: the worst case for routing overhead
  model   a small Mixtral causal LM vs the same LM with dense FFNs (attention, embeddings, loss included)

Variants are timed interleaved (round-robin, order alternating); ratios are the median of per-round
ratios (paired), the ratio of minima, and the paired ratio of process CPU time (robust when other jobs
share the cores: waiting for a core is not counted), so a busy shared CPU slows all of them alike. The routing-only
work (neko's hook, forward + backward) is also timed alone: it is the overhead's noise-free bound.
Target: guided <= 1.03 x plain.

  python bench/bench_routing.py                    # CPU defaults, ~1-2 min on 2 cores
  python bench/bench_routing.py --device cuda --dtype bf16 --shape 8x7b --scope layer
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

SHAPES = {
    # hidden, intermediate, experts, top_k, batch, seq, layers (model scope)
    "cpu": dict(hidden=384, intermediate=1024, experts=8, top_k=2, batch=4, seq=256, layers=2, vocab=2048),
    "8x7b": dict(
        hidden=4096, intermediate=14336, experts=8, top_k=2, batch=4, seq=2048, layers=2, vocab=32000
    ),
}
N_TASKS = 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _task_ids(batch: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    """Packed rows: random-length segments of random tasks, the last ~5% of each row padding (-1)."""
    ids = torch.full((batch, seq), -1, dtype=torch.long)
    for b in range(batch):
        pos, end = 0, int(seq * 0.95)
        while pos < end:
            n = int(torch.randint(16, max(17, seq // 4), (1,), generator=gen))
            ids[b, pos : min(end, pos + n)] = int(torch.randint(0, N_TASKS, (1,), generator=gen))
            pos += n
    return ids


class _LayerHost(nn.Module):
    """Gives one sparse block the ``.config`` neko's routing looks up."""

    def __init__(self, block: nn.Module, config) -> None:
        super().__init__()
        self.block, self.config = block, config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def build(scope: str, s: dict, impl: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    common = dict(
        hidden_size=s["hidden"],
        num_hidden_layers=s["layers"],
        num_attention_heads=max(1, s["hidden"] // 128),
        num_key_value_heads=max(1, s["hidden"] // 512),
        vocab_size=s["vocab"],
        max_position_embeddings=max(4096, s["seq"]),
    )
    moe_cfg = MixtralConfig(
        intermediate_size=s["intermediate"],
        num_local_experts=s["experts"],
        num_experts_per_tok=s["top_k"],
        **common,
    )
    moe_cfg._experts_implementation = impl
    dense_cfg = LlamaConfig(intermediate_size=s["top_k"] * s["intermediate"], **common)
    torch.manual_seed(0)
    if scope == "layer":
        block = MixtralSparseMoeBlock(moe_cfg)
        for p in block.parameters():
            nn.init.normal_(p, std=0.02)
        moe = _LayerHost(block, moe_cfg)
        dense = LlamaMLP(dense_cfg)
    else:
        moe = AutoModelForCausalLM.from_config(moe_cfg)
        moe.set_experts_implementation(impl)
        dense = AutoModelForCausalLM.from_config(dense_cfg)
    return moe.to(device, dtype).train(), dense.to(device, dtype).train()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU"
    )
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: 8x7b on GPU, cpu on CPU")
    ap.add_argument("--scope", choices=["layer", "model", "both"], default="both")
    ap.add_argument("--impl", default="grouped_mm", help="experts backend: grouped_mm | batched_mm | eager")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a shared CPU)"
    )
    args = ap.parse_args(argv)

    from neko.model.routing import enable_task_guided_routing, task_routing

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if on_gpu else "fp32")]
    s = dict(SHAPES[args.shape or ("8x7b" if on_gpu else "cpu")])
    s["batch"] = args.batch or s["batch"]
    s["seq"] = args.seq or s["seq"]
    gen = torch.Generator().manual_seed(0)
    task_ids = _task_ids(s["batch"], s["seq"], gen).to(device)
    tokens = s["batch"] * s["seq"]
    print(
        f"device={device} ({torch.get_num_threads()} threads)"
        if not on_gpu
        else f"device={torch.cuda.get_device_name()}",
        f"dtype={dtype} impl={args.impl} shape={s} tokens/step={tokens}",
    )

    rows = []
    for scope in ["layer", "model"] if args.scope == "both" else [args.scope]:
        moe, dense = build(scope, s, args.impl, device, dtype)
        enable_task_guided_routing(moe, tasks=[f"task{i}" for i in range(N_TASKS)])
        if scope == "layer":
            # requires grad, as hidden states inside a model do (backward then computes dX too)
            x = (
                torch.randn(s["batch"], s["seq"], s["hidden"], generator=gen)
                .to(device, dtype)
                .requires_grad_()
            )

            def run(model, x=x):
                x.grad = None
                return model(x).float().pow(2).mean()
        else:
            ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), generator=gen).to(device)
            mask = (task_ids >= 0).long()

            def run(model, ids=ids, mask=mask):
                return model(input_ids=ids, attention_mask=mask, labels=ids).loss

        def step(name, moe=moe, dense=dense, run=run):
            model = dense if name == "dense-eq" else moe
            model.zero_grad(set_to_none=True)
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "guided":
                with task_routing(moe, task_ids):
                    run(model).backward()
            else:
                run(model).backward()
            _sync(device)
            return time.perf_counter() - t0, time.process_time() - c0

        names = ["plain", "guided", "dense-eq"]
        times: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.warmup + args.reps):
            for n in names if r % 2 == 0 else names[::-1]:
                t, c = step(n)
                if r >= args.warmup:
                    times[n].append(t)
                    cpu[n].append(c)
        for n in names:
            # paired: ratio within each round, so a neighbour's job slowing one round cancels out
            paired = statistics.median(a / b for a, b in zip(times[n], times["plain"], strict=True))
            paired_cpu = statistics.median(a / b for a, b in zip(cpu[n], cpu["plain"], strict=True))
            med, lo = statistics.median(times[n]), min(times[n])
            rows.append((scope, n, med, lo, paired, lo / min(times["plain"]), paired_cpu, tokens / med))
        del moe, dense

    hook = _hook_cost(s, task_ids, device, dtype, args.reps)
    print(
        f"\n{'scope':<6} {'variant':<9} {'median s':>9} {'min s':>8} {'x plain':>8} {'x plain':>8} {'x plain':>9}"
        f" {'tokens/s':>9}"
    )
    print(f"{'':<6} {'':<9} {'':>9} {'':>8} {'(paired)':>8} {'(min)':>8} {'(cpu time)':>9} {'(median)':>9}")
    for scope, n, m, lo, ratio, ratio_lo, ratio_cpu, tps in rows:
        print(
            f"{scope:<6} {n:<9} {m:>9.4f} {lo:>8.4f} {ratio:>8.3f} {ratio_lo:>8.3f} {ratio_cpu:>9.3f} {tps:>9.0f}"
        )
    layer_plain = next((r[3] for r in rows if r[0] == "layer" and r[1] == "plain"), None)
    share = f" = {100 * hook / layer_plain:.2f}% of a plain layer step (min)" if layer_plain else ""
    print(f"routing-only work (neko hook, fwd+bwd, one layer): {1e3 * hook:.2f} ms{share}")
    for scope in dict.fromkeys(r[0] for r in rows):
        g = next(r for r in rows if r[0] == scope and r[1] == "guided")
        verdict = "OK" if g[4] <= 1.03 else "OVER TARGET"
        print(
            f"{scope}: task-guided vs plain {100 * (g[4] - 1):+.1f}% (paired median), {100 * (g[5] - 1):+.1f}% (min); "
            f"target <= +3%: {verdict}"
        )


def _hook_cost(s: dict, task_ids: torch.Tensor, device: torch.device, dtype: torch.dtype, reps: int) -> float:
    """Min time of the extra work task-guided routing adds per layer (masked top-(K-1), K-way softmax,
    merge with the plain choice) forward + backward, isolated from the noisy expert compute."""
    from neko.model.routing import task_guided_topk

    n = task_ids.numel()
    forced = (task_ids.reshape(-1) % s["experts"]).clamp(min=0)
    has = (task_ids.reshape(-1) >= 0).unsqueeze(-1)
    logits = torch.randn(n, s["experts"], device=device, dtype=dtype, requires_grad=True)
    plain_w = torch.rand(n, s["top_k"], device=device)
    plain_i = torch.randint(0, s["experts"], (n, s["top_k"]), device=device)
    best = float("inf")
    for _ in range(max(reps, 5) * 5):
        _sync(device)
        t0 = time.perf_counter()
        w, i = task_guided_topk(logits, forced, s["top_k"])
        w = torch.where(has, w, plain_w)
        torch.where(has, i, plain_i)
        w.sum().backward()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


if __name__ == "__main__":
    main()
