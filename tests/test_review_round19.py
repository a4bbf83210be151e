"""The nineteenth session's fixes.

The extension exports its init function alone. On the 16-core machine of
issue #14 the toolchain (CXX=/opt/gcc/bin/g++) linked libstdc++ statically
into _core, which then exported 930 symbols, 106 of them STB_GNU_UNIQUE
(libstdc++'s locale facet ids). The dynamic linker binds unique symbols
process-wide even for a module loaded with RTLD_LOCAL, so torch and jaxlib,
imported after pyrnn, used pyrnn's copies of another libstdc++'s objects:
`import pyrnn; import torch` died with SIGSEGV (in torch.ops' lookup), and so
did `import pyrnn; import jax`. csrc/bindings/exports.map keeps every other
symbol local.
"""

import os
import shutil
import subprocess
import sys

import pytest

from pyrnn import _core

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF symbol tables: Linux builds")


@linux_only
def test_extension_exports_only_its_init_function():
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run([nm, "-D", "--defined-only", _core.__file__], capture_output=True, text=True,
                         check=True).stdout
    names = sorted(line.split()[-1] for line in out.splitlines() if line.strip())
    assert names == ["PyInit__core"], f"_core exports {len(names)} symbols: {names[:10]}"


@linux_only
def test_no_gnu_unique_symbols():
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed")
    out = subprocess.run([readelf, "-sW", "--dyn-syms", _core.__file__], capture_output=True, text=True,
                         check=True).stdout
    unique = [line for line in out.splitlines() if " UNIQUE " in line]
    assert unique == []


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_framework_imported_after_pyrnn(framework):
    pytest.importorskip(framework)
    code = ("import pyrnn, numpy as np\n"
            f"import {framework}\n"
            "y, _ = pyrnn.LSTM(3, 4)(np.ones((2, 1, 3), np.float32))\n"
            "print('ok', y.shape)\n")
    if framework == "torch":
        code += "import torch; print(float(torch.ones(3).sum()))\n"
    else:
        code += "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ok (2, 1, 4)" in r.stdout and "3.0" in r.stdout
