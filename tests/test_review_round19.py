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


def _binutils(tool, *args):
    """The output of a binutils tool run on the extension (skips where the tool is missing)."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} (binutils) is not installed")
    return subprocess.run([path, *args, _core.__file__], capture_output=True, text=True, check=True).stdout


@linux_only
def test_extension_exports_only_its_init_function():
    out = _binutils("nm", "-D", "--defined-only")
    names = sorted(line.split()[-1] for line in out.splitlines() if line.strip())
    assert names == ["PyInit__core"], f"_core exports {len(names)} symbols: {names[:10]}"


@linux_only
def test_no_gnu_unique_symbols():
    out = _binutils("readelf", "-sW", "--dyn-syms")
    assert [line for line in out.splitlines() if " UNIQUE " in line] == []


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


# ONNX export (second reader's review): the checks of eager forward also run while exporting, where the
# dynamo exporter runs no kernel and a bad example input otherwise gave a model that fails (or, at T=0,
# aborts the process) only in ONNX Runtime.

def _refused(dynamo):
    """The exception an export raises for a bad example: ours, or under dynamo=True torch.export's
    wrapper of it (TorchExportError, whose message holds ours)."""
    return Exception if dynamo else ValueError


def _onnx_export(model, args, dynamo):
    import io
    import warnings

    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(model.eval(), args, dynamo=True)
        torch.onnx.export(model.eval(), args, io.BytesIO(), dynamo=False)


@pytest.mark.parametrize("dynamo", [False, True])
def test_with_lengths_export_checks_shapes(dynamo):
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt

    model = pt.WithLengths(pt.GRU(3, 4))
    with pytest.raises(_refused(dynamo), match="3-D input"):
        _onnx_export(model, (torch.randn(5, 3), torch.tensor([3])), dynamo)
    with pytest.raises(_refused(dynamo), match=r"shape \(2,\)"):
        _onnx_export(model, (torch.randn(5, 2, 3), torch.tensor([5, 3, 2])), dynamo)
    with pytest.raises(_refused(dynamo), match=r"shape \(2,\)"):
        _onnx_export(model, (torch.randn(5, 2, 3), torch.tensor([[5, 3]])), dynamo)


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("cls", ["GRU", "LSTM"])
def test_export_checks_dtypes_and_empty_sequences(dynamo, cls):
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt

    model = getattr(pt, cls)(3, 4)
    x = torch.randn(5, 2, 3)
    h = torch.zeros(1, 2, 4)
    hx = (lambda a, b: (a, b)) if cls == "LSTM" else (lambda a, b: a)
    for args, label in (((x.double(),), "input dtype"), ((x.long(),), "input dtype"),
                        ((x, hx(h.double(), h)), "hx.* dtype"),
                        ((torch.randn(0, 2, 3),), "larger than 0|at least one time step")):
        with pytest.raises(_refused(dynamo), match=label):
            _onnx_export(model, args, dynamo)
    if cls == "LSTM":
        with pytest.raises(_refused(dynamo), match=r"hx\[1\] dtype"):
            _onnx_export(model, (x, (h, h.double())), dynamo)
    # a good example still exports
    _onnx_export(model, (x, hx(h, h)), dynamo)


@pytest.mark.parametrize("dynamo", [False, True])
def test_cell_export_checks_dtypes(dynamo):
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt

    cell = pt.GRUCell(3, 4)
    with pytest.raises(_refused(dynamo), match="hx dtype"):
        _onnx_export(cell, (torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.float64)), dynamo)
    with pytest.raises(_refused(dynamo), match="input dtype"):
        _onnx_export(cell, (torch.randn(2, 3).double(),), dynamo)


# NumPy cells (review): RNNCell.nonlinearity and GRUCell.reset_after set after construction were ignored by
# forward and freeze() but used by backward, whose gradients then belonged to another function (O(1) off).

@pytest.mark.parametrize("make, change, fresh", [
    (lambda: __import__("pyrnn").RNNCell(3, 4, dtype="float64", seed=0), ("nonlinearity", "relu"),
     lambda: __import__("pyrnn").RNNCell(3, 4, dtype="float64", seed=0, nonlinearity="relu")),
    (lambda: __import__("pyrnn").GRUCell(3, 4, dtype="float64", seed=0), ("reset_after", False),
     lambda: __import__("pyrnn").GRUCell(3, 4, dtype="float64", seed=0, reset_after=False)),
])
def test_cell_option_set_after_construction(make, change, fresh):
    import numpy as np

    rng = np.random.default_rng(1)
    x, h = rng.standard_normal((2, 3)) * 2, rng.standard_normal((2, 4))
    cell, ref = make(), fresh()
    setattr(cell, *change)
    assert getattr(cell, change[0]) == change[1] and repr(cell) == repr(ref)
    np.testing.assert_array_equal(cell(x, h), ref(x, h))
    np.testing.assert_allclose(cell.freeze()(x, h), ref.freeze()(x, h), rtol=0, atol=0)
    got, want = cell.backward(np.ones((2, 4))), ref.backward(np.ones((2, 4)))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # a change between forward and backward: backward differentiates what forward ran
    ref(x, h)
    cell(x, h)
    setattr(cell, change[0], not change[1] if isinstance(change[1], bool) else "tanh")
    for g, w in zip(cell.backward(np.ones((2, 4))), ref.backward(np.ones((2, 4)))):
        np.testing.assert_array_equal(g, w)


def test_cell_option_checked_when_set():
    import pyrnn

    cell, gru = pyrnn.RNNCell(3, 4), pyrnn.GRUCell(3, 4)
    for bad in ("sigmoid", None, 1):
        with pytest.raises(ValueError, match="Unknown nonlinearity"):
            cell.nonlinearity = bad
    with pytest.raises(TypeError, match="reset_after"):
        gru.reset_after = "no"
    assert cell.nonlinearity == "tanh" and gru.reset_after is True


def test_grads_entries_cannot_be_removed():
    """`layer.grads.clear()` left the next backward to fail with a bare KeyError; removals are refused,
    zero_grad() zeroes, and a frozen copy still has no gradients."""
    import numpy as np
    import pyrnn

    m = pyrnn.LSTM(3, 4)
    for remove in (lambda g: g.clear(), lambda g: g.pop("weight_ih_l0"), lambda g: g.popitem(),
                   lambda g: g.__delitem__("bias_hh_l0")):
        with pytest.raises(TypeError, match="zero_grad"):
            remove(m.grads)
    assert list(m.grads) == [name for name, _ in m.named_parameters()]
    y, _ = m(np.ones((2, 1, 3), np.float32))
    m.backward(np.ones_like(y))
    assert np.abs(m.grads["weight_ih_l0"]).sum() > 0
    m.zero_grad()
    assert all(not g.any() for g in m.grads.values())
    assert len(m.eval().freeze().grads) == 0
