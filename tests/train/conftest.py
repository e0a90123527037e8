"""Fixtures for training tests: a real tiny tokenizer and small neko JSONL files."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import make_rows, write_rows


@pytest.fixture(scope="session")
def tok():
    from neko.model.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def train_file(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("data") / "train.jsonl", make_rows(48, seed=1))


@pytest.fixture(scope="session")
def dev_file(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("data") / "dev.jsonl", make_rows(9, seed=2))
