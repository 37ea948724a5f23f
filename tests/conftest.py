"""Shared fixtures: the embedded model, loaded once per test session."""

from __future__ import annotations

import pytest

from assistant_axis.models import DEFAULT_MODEL, load_model


@pytest.fixture(scope="session")
def fp32_model():
    """The embedded SmolLM2-135M-Instruct in float32 (exact comparisons)."""
    return load_model(DEFAULT_MODEL, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def bf16_model():
    """The embedded model in bfloat16, as the pipeline runs it on CPU."""
    return load_model(DEFAULT_MODEL, dtype="bfloat16", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(fp32_model):
    return fp32_model[1]
