"""Scoring: named normalizers, corpus WER/CER, sacrebleu BLEU, N-best oracles, bootstrap CIs.

Import from the submodules (``neko.metrics.wer.corpus_wer``, ``neko.metrics.bleu.corpus_bleu``,
``neko.metrics.oracles``, ``neko.metrics.normalizers.get_normalizer``, ``neko.metrics.bootstrap``).
"""
