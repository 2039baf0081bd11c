"""Fixtures shared by the unit tests of circuit/."""

import pytest

from fixtures.test_models import QWEN_FOLDER


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5-0.5B tokenizer (vendored files, offline). Read-only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN_FOLDER, local_files_only=True)
