"""Review round 14: pickling and copying the public objects (layers, cells, frozen copies, ESN)."""

import copy
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyrnn
from pyrnn import _core
from pyrnn._cells import CELLS
from pyrnn.reservoir import ESN

# (protocols 0 and 1 only in a fresh interpreter: _run_isolated)
PROTOCOLS = range(2, pickle.HIGHEST_PROTOCOL + 1)


def _run_isolated(code):
    """Runs ``code`` in a fresh interpreter: protocols 0 and 1 aborted the whole process (pybind11's
    constructor threw through copyreg), which must fail this test, not end the test run."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_every_layer_and_cell_pickles_at_protocols_0_and_1():
    out = _run_isolated("""
        import pickle
        import numpy as np
        import pyrnn
        x = np.random.default_rng(0).standard_normal((4, 2, 5)).astype(np.float32)
        objs = [pyrnn.LSTM(5, 7, num_layers=2, proj_size=3, seed=0), pyrnn.GRU(5, 7, reset_after=False, seed=0),
                pyrnn.RNN(5, 7, nonlinearity="relu", seed=0), pyrnn.LayerNormLSTM(5, 7, seed=0),
                pyrnn.LayerNormGRU(5, 7, seed=0)]
        objs = [m.eval() for m in objs]
        objs += [m.freeze(p) for m in objs[:3] for p in (None, "int8", "bf16")]
        cells = [pyrnn.LSTMCell(5, 7, seed=0).eval(), pyrnn.GRUCell(5, 7, seed=0).eval()]
        cells += [c.freeze(p) for c in cells for p in (None, "int8", "bf16")]
        for proto in (0, 1):
            for m in objs:
                m2 = pickle.loads(pickle.dumps(m, protocol=proto))
                assert repr(m2) == repr(m) and getattr(m2, "cell", None) is getattr(m, "cell", None)
                assert all(np.array_equal(a, b) for a, b in zip(m(x)[0], m2(x)[0]))
            for c in cells:
                c2 = pickle.loads(pickle.dumps(c, protocol=proto))
                assert repr(c2) == repr(c)
                assert all(np.array_equal(a, b) for a, b in zip(c(x[0]), c2(x[0])))
        from pyrnn._cells import CELLS
        for proto in (0, 1):
            for cell in CELLS.values():
                assert pickle.loads(pickle.dumps(cell, protocol=proto)) is cell
                assert pickle.loads(pickle.dumps(cell.kind, protocol=proto)) == cell.kind
        print("done")
    """)
    assert "done" in out


def test_kernel_objects_refuse_pickling_with_a_type_error_at_every_protocol():
    _run_isolated("""
        import copy, pickle
        import numpy as np
        import pyrnn
        from pyrnn import functional as F
        rng = np.random.default_rng(0)
        W_ih, W_hh = (rng.standard_normal(s).astype(np.float32) for s in ((28, 5), (28, 7)))
        x = rng.standard_normal((3, 2, 5)).astype(np.float32)
        ln = pyrnn.LayerNormLSTM(5, 7)
        ln(x)
        objs = [F.pack_weights("lstm", W_ih, W_hh), F.forward("lstm", x, None, None, W_ih, W_hh, training=True)[3],
                pyrnn.LSTMCell(5, 7).freeze()._packed, ln._saved["ws"][0]]
        for o in objs:
            for proto in range(pickle.HIGHEST_PROTOCOL + 1):
                try:
                    pickle.dumps(o, protocol=proto)
                except TypeError as e:
                    assert "cannot pickle" in str(e) and type(o).__name__ in str(e), e
                else:
                    raise AssertionError(f"{type(o).__name__} pickled at protocol {proto}")
            for cp in (copy.copy, copy.deepcopy):
                try:
                    cp(o)
                except TypeError:
                    pass
                else:
                    raise AssertionError(f"{type(o).__name__} was copied")
    """)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_cell_table_entries_and_kinds_round_trip(proto):
    for cell in CELLS.values():
        assert pickle.loads(pickle.dumps(cell, protocol=proto)) is cell
        kind = pickle.loads(pickle.dumps(cell.kind, protocol=proto))
        assert isinstance(kind, _core.CellKind) and kind == cell.kind
    assert copy.deepcopy(CELLS["lstm"]) is CELLS["lstm"]


@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy"])
def test_esn_weights_stay_read_only_after_pickle_and_copy(how):
    rng = np.random.default_rng(0)
    u = rng.standard_normal((60, 2))
    esn = ESN(2, 20, seed=0, leak=0.5, bias_scaling=0.1)
    esn.fit(u, np.roll(u, -1, 0), washout=5)
    other = {"pickle": lambda o: pickle.loads(pickle.dumps(o)), "copy": copy.copy, "deepcopy": copy.deepcopy}[how](esn)
    states = other.states(u[:10])  # packs the weights
    np.testing.assert_array_equal(states, esn.states(u[:10]))
    np.testing.assert_array_equal(other.predict(u), esn.predict(u))
    for name in ("W_in", "W", "b"):
        w = getattr(other, name)
        assert not w.flags.writeable, name
        with pytest.raises(ValueError, match="read-only"):
            w[0] += 1.0  # accepted before, and ignored by the packed weights: stale states
    other.W = esn.W * 0.5  # assigning still works, and repacks
    assert not np.array_equal(other.states(u[:10]), states)
    np.testing.assert_array_equal(esn.states(u[:10]), states)


def _copies(obj):
    return [pickle.loads(pickle.dumps(obj, protocol=p)) for p in (2, pickle.HIGHEST_PROTOCOL)] + \
           [copy.copy(obj), copy.deepcopy(obj)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_copied_and_unpickled_modules_keep_the_canonical_dtype(dtype):
    # The cells' fast path compares dtypes with `is`; an unpickled dtype is another (equal) object,
    # which sent every step of a loaded model through the slow path (~1.4x slower frozen steps).
    cell = pyrnn.LSTMCell(5, 7, dtype=dtype, seed=0).eval()
    objs = [cell, cell.freeze(), pyrnn.GRU(5, 7, dtype=dtype), pyrnn.GRU(5, 7, dtype=dtype).freeze(),
            pyrnn.LayerNormLSTM(5, 7, dtype=dtype), pyrnn.Linear(5, 3, dtype=dtype)]
    x = np.random.default_rng(1).standard_normal((2, 5)).astype(dtype)
    for obj in objs:
        for other in _copies(obj):
            assert other.dtype is np.dtype(dtype), (obj, other.dtype)
    for other in _copies(cell.freeze()) + _copies(cell):
        for a, b in zip(other(x), cell.freeze()(x) if getattr(other, "frozen", False) else cell(x)):
            np.testing.assert_array_equal(a, b)


def test_frozen_copies_pack_their_own_weights():
    layer = pyrnn.LSTM(5, 7, num_layers=2, bidirectional=True, seed=0).eval()
    frozen = layer.freeze("int8")
    x = np.random.default_rng(2).standard_normal((4, 3, 5)).astype(np.float32)
    ref = frozen(x)[0]
    for other in _copies(frozen):
        assert other._packed is not frozen._packed and other.precision == "int8"
        assert all(not a.flags.writeable for _, a in other.named_parameters())
        np.testing.assert_array_equal(other(x)[0], ref)
    layer.weight_hh_l0[...] = 0  # the original's later training steps reach no frozen copy
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(frozen))(x)[0], ref)


def test_torch_frozen_and_quantized_modules_pickle_at_every_protocol():
    pytest.importorskip("torch")
    _run_isolated("""
        import pickle
        import torch
        import pyrnn.torch as pt
        torch.manual_seed(0)
        x = torch.randn(4, 2, 5)
        mods = [pt.LSTM(5, 7, num_layers=2).eval(), pt.GRUCell(5, 7).eval()]
        mods += [m.freeze(p) for m in mods for p in (None, "int8", "bf16")]
        mods.append(pt.quantize_dynamic(torch.nn.Sequential(pt.GRU(5, 7, reset_after=False))))
        for m in mods:
            inp = x[0] if "Cell" in repr(m) else x
            with torch.no_grad():
                ref = m(inp)
                for proto in range(pickle.HIGHEST_PROTOCOL + 1):
                    out = pickle.loads(pickle.dumps(m, protocol=proto))(inp)
                    assert torch.equal(out[0], ref[0]), (m, proto)
    """)

