"""Smoke test of an installed pyrnn wheel (.ci/wheel, after `auditwheel repair`).

Run by the fresh environment's python, from a folder outside the source tree,
with only that environment's bin/ on PATH. Checks that:
- no compiler is reachable (the wheel must not need one);
- pyrnn is imported from that environment, not from a source checkout;
- the extension loads the OpenMP runtime vendored in pyrnn.libs/, not the system's;
- the kernels agree with the NumPy reference, forward and backward, for the LSTM, both
  GRUs and the RNN, at every ISA level this CPU has, and 1 and 2 threads agree bitwise;
- a forked child runs the kernels (the OpenMP pool survives fork);
- torch is absent and pyrnn works without it.
Exit status 0 when all hold; an AssertionError otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

COMPILERS = ("cc", "gcc", "g++", "c++", "clang", "clang++", "x86_64-linux-gnu-gcc", "x86_64-linux-gnu-g++")


def check_environment():
    found = {c: shutil.which(c) for c in COMPILERS if shutil.which(c)}
    assert not found, f"a compiler is on PATH: {found}"
    import pyrnn

    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    assert os.path.realpath(pyrnn.__file__).startswith(site), (pyrnn.__file__, site)
    assert os.path.realpath(pyrnn._core.__file__).startswith(site), pyrnn._core.__file__
    with open("/proc/self/maps") as maps:
        gomp = {line.split()[-1] for line in maps if "libgomp" in line}
    assert gomp, "no libgomp mapped after importing pyrnn"
    assert all(os.path.dirname(p) == os.path.join(site, "pyrnn.libs") for p in gomp), gomp
    assert "torch" not in sys.modules
    pyrnn.show_config()
    print("libgomp:", *sorted(gomp))
    return pyrnn


def check_kernels(pyrnn):
    import numpy as np
    from pyrnn import functional as F, reference as R

    rng = np.random.default_rng(0)
    T, B, I, H = 9, 5, 7, 13
    lengths = np.array([9, 3, 9, 1, 6])

    def arrays(gates):
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        W_ih = rng.uniform(-0.4, 0.4, (gates * H, I)).astype(np.float32)
        W_hh = rng.uniform(-0.4, 0.4, (gates * H, H)).astype(np.float32)
        b_ih = rng.uniform(-0.4, 0.4, gates * H).astype(np.float32)
        b_hh = rng.uniform(-0.4, 0.4, gates * H).astype(np.float32)
        h0 = rng.standard_normal((B, H)).astype(np.float32)
        return x, h0, W_ih, W_hh, b_ih, b_hh

    cases = {
        "lstm": (4, lambda m, x, h0, *w, **k: m.lstm_forward(x, h0, h0 * 0.5, *w, **k), "lstm_backward"),
        "gru": (3, lambda m, x, h0, *w, **k: m.gru_forward(x, h0, *w, **k), "gru_backward"),
        "gru_v3": (3, lambda m, x, h0, *w, **k: m.gru_forward(x, h0, *w, reset_after=False, **k), "gru_backward"),
        "rnn_tanh": (1, lambda m, x, h0, *w, **k: m.rnn_forward(x, h0, *w, **k), "rnn_backward"),
        "rnn_relu": (1, lambda m, x, h0, *w, **k: m.rnn_forward(x, h0, *w, nonlinearity="relu", **k),
                     "rnn_backward"),
    }
    for name, (gates, fwd, bwd) in cases.items():
        x, h0, *w = arrays(gates)
        got = fwd(F, x, h0, *w, lengths=lengths)
        want = fwd(R, x, h0, *w, lengths=lengths)
        for g, r in zip(got[:-1], want[:-1]):
            np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-5, err_msg=name)
        dy = rng.standard_normal(got[0].shape).astype(np.float32)
        dgot = getattr(F, bwd)(got[-1], dy=dy)
        dwant = getattr(R, bwd)(want[-1], dy=dy)
        for g, r in zip(dgot, dwant):
            np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4, err_msg=name + " backward")
        pyrnn.set_num_threads(1)
        one = fwd(F, x, h0, *w, lengths=lengths, training=False)
        pyrnn.set_num_threads(2)
        two = fwd(F, x, h0, *w, lengths=lengths, training=False)
        pyrnn.set_num_threads("auto")
        for a, b in zip(one[:-1], two[:-1]):
            assert np.array_equal(a, b), f"{name}: 1 and 2 threads differ"
    print(f"kernels match the reference at ISA {pyrnn.isa()}")


def check_fork(pyrnn):
    import numpy as np

    lstm = pyrnn.LSTM(8, 16)
    x = np.random.default_rng(1).standard_normal((20, 4, 8)).astype(np.float32)
    pyrnn.set_num_threads(2)  # the parent's OpenMP pool is running when it forks
    y_parent = lstm(x)[0]
    pid = os.fork()
    if pid == 0:  # the child: the same call must finish and agree
        ok = np.array_equal(lstm(x)[0], y_parent)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"forked child: status {status}"
    print("forked child ok")


def main():
    if len(sys.argv) > 1:  # a child run at one ISA level
        import pyrnn

        assert pyrnn.isa() == sys.argv[1], (pyrnn.isa(), sys.argv[1])
        check_kernels(pyrnn)
        return
    pyrnn = check_environment()
    check_kernels(pyrnn)
    check_fork(pyrnn)
    for level in pyrnn._config.config()["isa_supported"]:
        env = dict(os.environ, PYRNN_ISA=level)
        run = subprocess.run([sys.executable, __file__, level], env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"PYRNN_ISA={level}:\n{run.stdout}\n{run.stderr}"
        print(run.stdout.strip())
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
