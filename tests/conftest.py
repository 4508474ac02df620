import pytest
import torch

import qlgrad  # noqa: F401  (registers the Autograd kernels for every test)
from helpers import load_hypothesis_profile

load_hypothesis_profile()


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
