"""Training: ``neko.train.loop.train(TrainConfig) -> TrainResult`` on Accelerate.

config (dataclasses, YAML, overrides) -> mixture + packing (the training rows: sampled per task,
tokenized with the task prompts, packed) -> modeling (base, up-cycling, routing, LoRA) -> plan (which rows
each process feeds at each step) -> loop (the loop, loss in loss.py) with checkpoint (atomic, exact
resume), monitor/stepstats (progress, JSONL logs), evaluate (dev loss + decodes) and export (final
model directory; every file they write gets the umask's mode, neko.io.settle_file_modes). See docs/training.md.
"""
