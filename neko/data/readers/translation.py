"""Text-form translation N-best (decoded HypoTranslate / GenTranslate), JSON array or JSONL.

HypoTranslate and GenTranslate ship LLaMA-2-tokenised ``.pt`` tensors; decode them to text first
(with the LLaMA-2 tokenizer) and write one record per sentence in this shape::

    {"id": "fleurs-ja-en-0001",          optional; else <file stem>-<line>
     "task": "st",                       optional: "mt" (default) or "st", or any registered N-best task
     "source_lang": "ja",                ISO 639-1 code or English name ("Japanese")
     "target_lang": "en",
     "nbest": ["hyp 1", "hyp 2", ...],   target-language hypotheses, best first (beam order)
     "reference": "the translation",     optional at inference
     "source": "原文"}                   optional: the source sentence (or audio id), kept in meta

Language codes are written as English names (``ja`` -> ``Japanese``) because the paper's prompt
says "hypotheses in {target_lang} ... originally in {source_lang}"; unknown codes are kept as given.
"""

from __future__ import annotations

from typing import Any

from neko.data.readers.base import Reader, RowContext, as_object, optional_text, str_list_field, text_field

LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish", "et": "Estonian",
    "fa": "Persian", "fr": "French", "hi": "Hindi", "it": "Italian", "ja": "Japanese", "km": "Khmer",
    "ko": "Korean", "lv": "Latvian", "mn": "Mongolian", "nl": "Dutch", "pl": "Polish", "ps": "Pashto",
    "pt": "Portuguese", "ru": "Russian", "sl": "Slovenian", "sv": "Swedish", "ta": "Tamil", "tr": "Turkish",
    "cy": "Welsh", "ca": "Catalan", "id": "Indonesian", "zh": "Chinese", "gl": "Galician", "eo": "Esperanto",
}  # fmt: skip


def language_name(code_or_name: str) -> str:
    key = code_or_name.strip()
    return LANGUAGE_NAMES.get(key.lower().replace("_", "-").split("-")[0], key) if len(key) <= 3 else key


def _sniff(rec: dict[str, Any]) -> bool:
    return isinstance(rec.get("nbest"), list)


def _convert(rec: Any, ctx: RowContext) -> dict[str, Any]:
    rec = as_object(rec, ctx)
    task = rec.get("task", "mt")
    row: dict[str, Any] = {
        "task": task,
        "input": str_list_field(rec, "nbest", ctx),
        "output": optional_text(rec, "reference", ctx),
        "source_lang": language_name(text_field(rec, "source_lang", ctx)),
        "target_lang": language_name(text_field(rec, "target_lang", ctx)),
    }
    if rec.get("id") is not None:
        row["id"] = rec["id"]
    source = optional_text(rec, "source", ctx)
    if source is not None:
        row["meta"] = {"source": source}
    return row


READER = Reader(
    name="translation",
    description="text-form translation N-best {nbest, source_lang, target_lang, reference, source?, task?}",
    containers=("json",),
    sniff=_sniff,
    convert=_convert,
)
