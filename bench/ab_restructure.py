"""A/B of two installed builds of pyrnn on the kernels alone (issue #12's check).

Build each into a folder (`pip install --no-build-isolation --no-deps --target
/tmp/before-site .` from a checkout of the old commit, likewise /tmp/after-site),
then run, alternating the order:
    taskset -c 0 python -S bench/ab_restructure.py before 1 > ab-before-1.txt
    taskset -c 0 python -S bench/ab_restructure.py after 1 > ab-after-1.txt
(-S: the folder, not an editable install, provides pyrnn). Prints
case|mode|ms (the minimum of at least 3 calls) per line.
"""
import sys, sysconfig, time
if len(sys.argv) != 3:
    sys.exit(__doc__)
if sys.argv[1] in ('before', 'after'):
    sys.path[:0] = ['/tmp/%s-site' % sys.argv[1], sysconfig.get_paths()['purelib']]
import numpy as np, pyrnn
from pyrnn import functional as F
pyrnn.set_num_threads(int(sys.argv[2]))
rng = np.random.default_rng(0)
cases = [("lstm", {}, 64, 50, 512, 0), ("lstm", {}, 32, 100, 256, 0), ("lstm", {}, 1, 150, 256, 0), ("lstm", {}, 16, 50, 512, 128),
         ("gru", {}, 32, 100, 256, 0), ("gru", {}, 1, 100, 512, 0), ("gru", {"reset_after": False}, 32, 100, 256, 0),
         ("rnn", {}, 16, 50, 1760, 0), ("lstm", {}, 50, 50, 128, 0)]
out = []
for cell, opts, B, T, H, P in cases:
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    W_ih = (rng.standard_normal((G * H, H)) * 0.05).astype(np.float32)
    W_hh = (rng.standard_normal((G * H, P or H)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(G * H) * 0.05).astype(np.float32)
    W_hr = (rng.standard_normal((P, H)) * 0.05).astype(np.float32) if P else None
    def fwd(): F.forward(cell, x, None, None, W_ih, W_hh, b, b, W_hr=W_hr, training=False, **opts)
    def fb():
        y, _, _, ws = F.forward(cell, x, None, None, W_ih, W_hh, b, b, W_hr=W_hr, training=True, **opts)
        F.backward(ws, np.ones_like(y))
    for name, fn in (("fwd", fwd), ("fwdbwd", fb)):
        fn(); fn()
        ts = []
        t_end = time.perf_counter() + 0.6
        while len(ts) < 3 or time.perf_counter() < t_end:
            t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
        out.append((f"{cell}{opts or ''} B={B} T={T} H={H}{' P=%d' % P if P else ''}", name, min(ts) * 1e3))
for r in out: print("%s|%s|%.3f" % r)
