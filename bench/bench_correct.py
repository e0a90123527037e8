"""Batched correction (neko.infer.Corrector) vs a per-example ``generate`` loop, same model and inputs.

Usage: python bench/bench_correct.py [--items 32] [--max-new-tokens 32] [--batch-sizes 16,32] [--layers 4]

The model is random but SmolLM2-135M-shaped (hidden 576, 9 heads / 3 KV heads, intermediate 1536)
with fewer layers, once dense (Llama) and once as an 8-expert top-2 Mixtral, with the tiny offline
tokenizer. Random weights never emit EOS, so every item generates exactly ``max_new_tokens`` tokens
on both paths: the comparison is pure decoding throughput. Prompts are real neko prompts built from
data/benchmark/test.jsonl (or data/samples/neko.jsonl), cycled to ``--items``.
Both paths decode greedily with the KV cache; the table reports whether their outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_rows(n: int) -> list[dict]:
    for path in (REPO / "data/benchmark/test.jsonl", REPO / "data/samples/neko.jsonl"):
        if path.exists() and path.stat().st_size:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            break
    return [dict(rows[i % len(rows)], id=f"b{i}") for i in range(n)], path.relative_to(REPO)


def build_model(kind: str, layers: int, out: Path) -> Path:
    import torch

    from neko.model.tiny import tiny_llama, tiny_mixtral, tiny_tokenizer
    from neko.tasks import save_prompt_config

    shape = dict(
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        num_hidden_layers=layers,
        max_position_embeddings=2048,
        vocab_size=2048,
    )
    torch.manual_seed(0)
    model = tiny_mixtral(**shape) if kind == "mixtral" else tiny_llama(**shape)
    model.save_pretrained(out)
    tiny_tokenizer(vocab_size=2048, save_dir=out)
    save_prompt_config(out)
    return out


def per_example_loop(corrector, prepared, max_new_tokens: int) -> list[str]:
    """The reference: one generate() per item, no padding, same greedy settings."""
    import torch

    texts = []
    for p in prepared:
        ids = torch.tensor([p.input_ids])
        with torch.inference_mode():
            out = corrector.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=corrector.pad_id,
                eos_token_id=corrector.eos_ids,
            )
        gen = out[0, ids.shape[1] :].tolist()
        n = next((k for k, t in enumerate(gen) if t in corrector.eos_ids), len(gen))
        texts.append(corrector.tokenizer.decode(gen[:n], skip_special_tokens=True).strip())
    return texts


def main() -> None:
    import dataclasses

    import torch

    from neko.infer.correct import Corrector
    from neko.infer.options import CorrectionOptions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="16,32")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--models", default="llama,mixtral")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, source = load_rows(args.items)
    threads = torch.get_num_threads()
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads {threads}, prompts from {source}"
    )
    print(f"{args.items} items x {args.max_new_tokens} new tokens, {args.layers} layers, hidden 576\n")
    header = f"{'model':<16}{'method':<22}{'seconds':>9}{'items/s':>9}{'tok/s':>9}{'speed-up':>10}{'same output':>13}"
    print(header)
    print("-" * len(header))
    for kind in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = build_model(kind, args.layers, Path(tmp) / kind)
            opts = CorrectionOptions(max_new_tokens=args.max_new_tokens, guard="off")
            c = Corrector.from_pretrained(model_dir, opts)
            prepared = [c.prepare(r) for r in rows]
            assert all(p.error is None for p in prepared), [p.error for p in prepared if p.error]
            per_example_loop(c, prepared[:2], 4)  # warm-up
            t0 = time.perf_counter()
            ref = per_example_loop(c, prepared, args.max_new_tokens)
            t_ref = time.perf_counter() - t0
            name = f"{kind}-{args.layers}L"
            n_tok = args.items * args.max_new_tokens
            print(
                f"{name:<16}{'per-example generate':<22}{t_ref:>9.2f}{args.items / t_ref:>9.1f}{n_tok / t_ref:>9.0f}{1:>9.1f}x{'ref':>13}"
            )
            for bs in [int(b) for b in args.batch_sizes.split(",")]:
                c.options = dataclasses.replace(opts, batch_size=bs)
                t0 = time.perf_counter()
                got = [r.text for r in c.correct_batch(rows)]
                t = time.perf_counter() - t0
                same = sum(a == b for a, b in zip(got, ref, strict=True))
                print(
                    f"{name:<16}{f'neko batched bs={bs}':<22}{t:>9.2f}{args.items / t:>9.1f}{n_tok / t:>9.0f}"
                    f"{t_ref / t:>9.1f}x{f'{same}/{len(ref)}':>13}"
                )


if __name__ == "__main__":
    main()
