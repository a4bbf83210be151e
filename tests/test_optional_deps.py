"""pyrnn without its optional frameworks: the extension and the NumPy API import and run with torch
and jax unavailable (a fresh interpreter in which importing them fails), and only the adapters
that need them say so."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("torch", "jax", "jaxlib"):
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import pyrnn
    from pyrnn import functional as F

    layer = pyrnn.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    n = F.residual_nbytes("gru", x, None, None, np.zeros((12, 3), np.float32), np.zeros((12, 4), np.float32))
    assert n > 0 and y.shape == (5, 2, 8)
    pyrnn.show_config(file=open("/dev/null", "w"))
    for adapter in ("pyrnn.torch", "pyrnn.jax"):
        try:
            __import__(adapter)
        except ImportError as e:
            print(adapter, "ImportError:", e)
        else:
            raise SystemExit(adapter + " imported without its framework")
    assert not any(m.split(".")[0] in ("torch", "jax") for m in sys.modules)
    print("ok")
""")


def test_numpy_api_without_torch_and_jax():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
    assert "pyrnn.torch ImportError" in out.stdout and "pyrnn.jax ImportError" in out.stdout
    # the message names what to install
    assert "pyrnn[torch]" in out.stdout and "pyrnn[jax]" in out.stdout
