import numpy as np
import pytest

import pyrnn
from pyrnn import _core

ISA_LEVELS = list(_core.isa_supported())


@pytest.fixture(params=ISA_LEVELS)
def isa(request, monkeypatch):
    """Runs the test once per ISA level this CPU supports (PYRNN_ISA forced)."""
    monkeypatch.setenv("PYRNN_ISA", request.param)
    return request.param


@pytest.fixture
def threads():
    """Lets a test change pyrnn's thread count; restores it afterwards."""
    before = pyrnn.thread_setting()
    yield pyrnn.set_num_threads
    pyrnn.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    """The `slow` end-to-end tests first (otherwise in collection order): with pytest-xdist's workers
    (the README's `-n 2`) a long test that starts last leaves one worker running it alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
