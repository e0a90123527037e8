import pytest

from neko.schema import Example, write_jsonl

WHISPER_ZEROSHOT_CONDITIONS = ("unseen voice slt", "unseen noise babble", "unseen channel telephone")
_SENTS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "time flies like an arrow",
    "all that glitters is not gold",
    "the early bird catches the worm",
]


def _rows(split: str) -> list[Example]:
    rows = []
    for i, s in enumerate(_SENTS):
        w = s.split()
        noisy = " ".join(w[:-1] + [w[-1][:-1] or w[-1]])
        rid = f"{split}-{i}"
        rows.append(Example(f"{rid}-asr", "asr", [noisy, s, noisy + " uh"], s, meta={"voice": "rms"}))
        rows.append(Example(f"{rid}-mt", "mt", [noisy, s], s, source_lang="English", target_lang="English"))
        rows.append(Example(f"{rid}-ocr", "ocr", s.replace("o", "0"), s))
        rows.append(Example(f"{rid}-gec", "tec-grammar", s.replace(" the ", " a "), s))
        rows.append(Example(f"{rid}-coh", "tec-coherence", s + " and", s))
        if split != "train":
            rows.append(Example(f"{rid}-typo", "typo", s.replace("e", "ee", 1), s))
        # Whisper-style rows: scored N-best lists that often agree up to case and punctuation
        hyps = [s.capitalize() + ".", s] if i % 2 == 0 else [noisy, s]
        meta = {
            "recognizer": "whisper-tiny.en",
            "condition": ("clean", "noise")[i % 2],
            "am_score": [-0.2, -0.3],
        }
        rows.append(Example(f"asr-whisper-{split}-{i}", "asr", hyps, s, meta=meta))
    return rows


def _zeroshot_rows() -> list[Example]:
    """Held-out conditions as ``neko data build`` writes them: PocketSphinx ASR in two unseen voices,
    Whisper ASR in three held-out conditions, MT rows through unseen pivots."""
    rows = []
    for i, s in enumerate(_SENTS):
        w = s.split()
        noisy = " ".join(w[1:]) or s
        voice = ("slt", "kal")[i % 2]
        meta = {"voice": voice, "zeroshot": True, "condition": f"unseen voice {voice}"}
        rows.append(Example(f"asr-zs-{i}", "asr", [noisy, s], s, meta=meta))
        rows.append(Example(f"mt-zs-{i}", "mt", [noisy, s], s, source_lang="English", target_lang="English"))
        cond = WHISPER_ZEROSHOT_CONDITIONS[i % 3]
        meta = {"recognizer": "whisper-tiny.en", "condition": cond, "zeroshot": True}
        rows.append(Example(f"asr-whisper-test_zeroshot-{i}", "asr", [noisy, s], s, meta=meta))
    return rows


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """A real-format benchmark directory (train/dev/test JSONL + the zero-shot file), small enough
    for CPU tests."""
    d = tmp_path_factory.mktemp("bench")
    for split in ("train", "dev", "test"):
        write_jsonl(_rows(split), d / f"{split}.jsonl")
    write_jsonl(_zeroshot_rows(), d / "test_zeroshot.jsonl")
    return d
