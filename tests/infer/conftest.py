"""Shared fixtures for the infer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from infer_helpers import make_model_dir


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two threads
    # wait on each other (measured 2x slower under load); the tests check behaviour, not speed.
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("mixtral"))


@pytest.fixture(scope="session")
def corrector(model_dir):
    from neko.infer.correct import Corrector
    from neko.infer.options import CorrectionOptions

    return Corrector.from_pretrained(
        model_dir, CorrectionOptions(max_new_tokens=12, batch_size=4, guard="off")
    )
