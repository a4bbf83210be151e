"""Memory: long loops of calls keep the resident set flat, a dropped
workspace is freed, and calls too large for the machine fail before they
allocate anything."""

import gc
import os

import numpy as np
import pytest

import pyrnn
from pyrnn import functional as F


def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:
        pytest.skip("needs /proc/self/statm (Linux)")


@pytest.mark.skipif(bool(os.environ.get("PYRNN_SANITIZED")),
                    reason="AddressSanitizer's quarantine holds freed memory on purpose")
def test_thousands_of_calls_keep_rss_flat(threads, rng):
    threads(2)
    lstm = pyrnn.LSTM(16, 32, num_layers=2, bidirectional=True, seed=0)
    gru = pyrnn.GRU(16, 32, seed=0)
    cell = pyrnn.LSTMCell(16, 32, seed=0)
    x = rng.standard_normal((12, 8, 16)).astype(np.float32)
    lengths = rng.integers(1, 13, size=8)
    xs = rng.standard_normal((8, 16)).astype(np.float32)

    def work(n):
        h = c = None
        for i in range(n):
            for layer in (lstm, gru):
                layer.train()
                y, _ = layer(x, lengths=lengths if i % 2 else None)
                layer.backward(np.ones_like(y))
                layer.zero_grad()
                layer.eval()
                layer(x)
            cell.train()
            h, c = cell(xs, None if h is None else (h, c))
            cell.backward(np.ones_like(h))
            cell.zero_grad()

    work(200)  # warm-up: caches, pools and allocator arenas reach their working size
    gc.collect()
    before = _rss_bytes()
    work(2000)
    gc.collect()
    growth = _rss_bytes() - before
    assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 2000 iterations"


def test_dropped_workspace_is_freed(rng):
    x = rng.standard_normal((50, 32, 64)).astype(np.float32)
    W_ih = rng.standard_normal((256, 64)).astype(np.float32)
    W_hh = rng.standard_normal((256, 64)).astype(np.float32)
    pyrnn.empty_cache()
    y, h_n, c_n, ws = F.lstm_forward(x, None, None, W_ih, W_hh)
    assert ws.nbytes >= 50 * 32 * 64 * 4 * 4  # the saved gates at least
    del y, h_n, c_n
    held = pyrnn.cache_info()["cached_bytes"]
    del ws
    gc.collect()
    # the workspace's blocks went back to the cache (which frees them on demand)
    assert pyrnn.cache_info()["cached_bytes"] - held >= 50 * 32 * 64 * 4 * 4
    pyrnn.empty_cache()
    assert pyrnn.cache_info()["cached_bytes"] == 0


@pytest.mark.parametrize("api", ["functional", "layer", "torch"])
def test_calls_too_large_for_the_machine_fail_before_allocating(api, rng):
    """y alone would be T*B*H*4 bytes = 64 GiB: MemoryError at once, nothing allocated."""
    T, B, I, H = 2**11, 2**11, 1, 2**12
    x = np.full((T, B, I), 0.5, np.float32)
    if api == "functional":
        W_ih, W_hh = np.zeros((H, I), np.float32), np.zeros((H, H), np.float32)
        call = lambda: F.rnn_forward(x, None, W_ih, W_hh)  # noqa: E731
    elif api == "layer":
        layer = pyrnn.RNN(I, H)
        call = lambda: layer(x)  # noqa: E731
    else:
        torch = pytest.importorskip("torch")
        import pyrnn.torch as pt

        module, xt = pt.RNN(I, H), torch.from_numpy(x)
        call = lambda: module(xt)  # noqa: E731
    rss = _rss_bytes()
    with pytest.raises(MemoryError, match="GiB"):
        call()
    assert _rss_bytes() - rss < 64 * 2**20
