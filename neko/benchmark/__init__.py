"""`neko data build`: the embedded multi-task correction benchmark, made by real recognizers.

:mod:`.text` (clean English and split hygiene) -> :mod:`.plan` (seeded per-row settings) ->
:mod:`.runner` (parallel, resumable execution; atomic output and manifest). :mod:`.corrupt` holds
the rule-based grammar/coherence corruptions and the codespell typos.
"""

from neko.benchmark.plan import BuildConfig
from neko.benchmark.runner import BuildResult, build_benchmark

__all__ = ["BuildConfig", "BuildResult", "build_benchmark"]
