import re

import pytest
import torch

import qlgrad
from helpers import load_hypothesis_profile
from qlgrad._deprecations import UPSTREAM_DEPRECATIONS

load_hypothesis_profile()


def pytest_configure(config):
    # After pyproject.toml's "error", so that these take precedence over it.
    for message, category in UPSTREAM_DEPRECATIONS:
        config.addinivalue_line("filterwarnings", f"ignore:{re.escape(message)}:{category.__name__}")


@pytest.fixture(params=[e for e in torch.backends.quantized.supported_engines if e != "none"])
def engine(request):
    """Run the test with each quantized engine this torch offers."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = request.param
    yield request.param
    torch.backends.quantized.engine = previous


@pytest.fixture
def fresh_cache():
    """An empty weight cache with the default limit, restored afterwards."""
    limit = qlgrad.cache_info().limit_bytes
    qlgrad.clear_cache()
    yield
    qlgrad.set_cache_limit(limit)
    qlgrad.clear_cache()
