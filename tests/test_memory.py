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


_CAPPED = r"""
import resource, sys, numpy as np, pyrnn
from pyrnn import functional as F
cell, T, B, H, train, head = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1", \
    int(sys.argv[6])
pyrnn.set_num_threads(2)
G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
F.forward(cell, np.ones((2, 64, 4), np.float32), None, None, np.ones((G * 64, 4), np.float32),
          np.ones((G * 64, 64), np.float32))  # warm: threads started, code paged in
x = np.full((T, B, 4), 0.1, np.float32)
W_ih, W_hh = np.full((G * H, 4), 0.01, np.float32), np.full((G * H, H), 0.01, np.float32)
vm = int(open("/proc/self/statm").read().split()[0]) * 4096
resource.setrlimit(resource.RLIMIT_AS, (vm + head * 2**20, resource.RLIM_INFINITY))
try:
    y, h, c, ws = F.forward(cell, x, None, None, W_ih, W_hh, training=train)
    if train:
        F.backward(ws, y, None, None)
    print("OK")
except MemoryError:
    print("MemoryError")
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or bool(os.environ.get("PYRNN_SANITIZED")),
                    reason="needs Linux's /proc and RLIMIT_AS (AddressSanitizer reserves address space)")
@pytest.mark.parametrize("cell, T, B, H, train", [("lstm", 1, 2**19, 16, "0"), ("gru", 2, 2**18, 40, "1")])
def test_address_space_limit_gives_memory_error_not_abort(cell, T, B, H, train):
    """Under an address-space cap (ulimit -v) a call that does not fit raises MemoryError at every
    cap: the per-thread buffers that grow with the batch are allocated before the threads start
    (a std::bad_alloc inside an OpenMP region ended the process, at caps of +400 to +500 MiB here)."""
    import subprocess
    import sys

    seen = set()
    for head in range(60, 1400, 80):
        r = subprocess.run([sys.executable, "-c", _CAPPED, cell, str(T), str(B), str(H), train, str(head)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() in ("OK", "MemoryError"), (head, r.returncode, r.stderr[-300:])
        seen.add(r.stdout.strip())
        if r.stdout.strip() == "OK":
            break
    assert seen == {"OK", "MemoryError"}  # the sweep crossed from too small to enough


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or bool(os.environ.get("PYRNN_SANITIZED")),
                    reason="needs Linux's /proc and RLIMIT_AS (AddressSanitizer reserves address space)")
def test_a_failed_allocation_frees_the_cache_and_retries():
    """A call that fits once pyrnn's idle cached blocks are released does not raise MemoryError."""
    import subprocess
    import sys

    code = r"""
import resource, numpy as np, pyrnn
pyrnn.set_num_threads(1)
m = pyrnn.LSTM(8, 256)
def step(T, B):
    y = m(np.zeros((T, B, 8), np.float32))[0]; m.backward(y); m.zero_grad()
step(2, 4)
vm = int(open("/proc/self/statm").read().split()[0]) * 4096
resource.setrlimit(resource.RLIMIT_AS, (vm + 700 * 2**20, resource.RLIM_INFINITY))
step(100, 512)  # its blocks stay cached (~516 MiB), each more than twice what the next step asks for
assert pyrnn.cache_info()["cached_bytes"] > 400 * 2**20
step(40, 512)
print("OK")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-500:]


CACHE_RSS_SCRIPT = """
import os, sys
import numpy as np
import pyrnn
from pyrnn import functional as F

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

pyrnn.set_num_threads(int(sys.argv[1]))
pyrnn.set_cache_limit(128)
rng = np.random.default_rng(0)
I, H = 8, 64
W_ih = (rng.standard_normal((4 * H, I)) * 0.1).astype(np.float32)
W_hh = (rng.standard_normal((4 * H, H)) * 0.1).astype(np.float32)
np.ones(1 << 22).sum()  # (a large NumPy free first: glibc then raises its mmap threshold)
base, peak = rss(), 0.0
for B in range(400, 1600):  # a new batch size, so new block sizes, every call
    F.forward("lstm", np.zeros((1, B, I), np.float32), None, None, W_ih, W_hh, training=False)
    peak = max(peak, rss() - base)
cached = pyrnn.cache_info()["cached_bytes"] / 2**20
pyrnn.empty_cache()
print(peak, cached, rss() - base)
"""


@pytest.mark.skipif(bool(os.environ.get("PYRNN_SANITIZED")),
                    reason="AddressSanitizer's quarantine holds freed memory on purpose")
@pytest.mark.parametrize("threads", [1, 2])
def test_cache_limit_bounds_rss_and_empty_cache_returns_it(threads):
    # The cached blocks lay in glibc's heap, which kept what the cache dropped: with a 1 GiB
    # limit RSS grew 1.3-2.2 GiB, and empty_cache() returned under half of it.
    import subprocess
    import sys
    _rss_bytes()  # (skips without /proc)
    out = subprocess.run([sys.executable, "-c", CACHE_RSS_SCRIPT, str(threads)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    peak, cached, after = map(float, out.stdout.split())
    assert 64 < cached <= 128
    assert peak < 128 + 64, (peak, cached)
    assert after < 32, (peak, cached, after)
