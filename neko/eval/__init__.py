"""Evaluation: baselines (1-best, ROVER vote), prediction loading, per-task scoring reports, data stats.

``neko.eval.score.score_rows`` (``neko eval``), ``neko.eval.stats.dataset_stats`` (``neko data stats``),
``neko.eval.baselines.one_best`` / ``rover``, ``neko.eval.predictions.load_predictions``.
"""
