"""pyrnn.jax against lax.scan: a jitted training step, and the cost of a call (issue #15).

    python bench/jax_step.py            # runs every case, each in its own process pinned to core 0
    python bench/jax_step.py CASE       # one case in this process (what the parent runs)

Training step: a 2-layer LSTM (H=256, input 64) over B=32, T=50, a Linear head,
MSE loss and an SGD update, all under one jax.jit of value_and_grad, float32,
1 thread (XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1,
pyrnn.set_num_threads(1)). Cases:
  scan   the layers as lax.scan (input projection as one GEMM, as pyrnn.bench's JAX peer)
  pyrnn  the layers as pyrnn.jax.lstm (XLA custom calls where built with them)
  pyrnn-callback  pyrnn.jax forced onto its jax.pure_callback fallback
Call overhead: one jitted pyrnn.jax.lstm forward against pyrnn.functional.forward on the
same arrays (T=5, B=1, H=8 and B=32, T=50, H=256), median of many calls.
Prints one line per case: name, median ms.
"""

import os
import subprocess
import sys
import time

CASES = ["scan", "pyrnn", "pyrnn-callback", "overhead"]
B, T, I, H, LAYERS = 32, 50, 64, 256, 2


def _median_ms(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def _params(jnp, rng):
    import numpy as np

    p = {}
    for layer in range(LAYERS):
        k = 1 / np.sqrt(H)
        n_in = I if layer == 0 else H
        for name, shape in (("W_ih", (4 * H, n_in)), ("W_hh", (4 * H, H)), ("b_ih", (4 * H,)), ("b_hh", (4 * H,))):
            p[f"{name}{layer}"] = jnp.asarray(rng.uniform(-k, k, shape), jnp.float32)
    p["W_out"] = jnp.asarray(rng.uniform(-0.1, 0.1, (H, 1)), jnp.float32)
    return p


def _scan_layer(jax, jnp, x, W_ih, W_hh, b_ih, b_hh):
    gi = (x.reshape(T * B, -1) @ W_ih.T + b_ih + b_hh).reshape(T, B, -1)

    def step(state, g):
        h, c = state
        i, f, gg, o = jnp.split(g + h @ W_hh.T, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((B, H), x.dtype)
    return jax.lax.scan(step, (zeros, zeros), gi)[1]


def train_step_ms(case):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import pyrnn
    import pyrnn.jax as rj

    pyrnn.set_num_threads(1)
    if case == "pyrnn-callback":
        rj._ffi_registered = lambda: False
    rng = np.random.default_rng(0)
    p = _params(jnp, rng)
    x = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((T, B, 1)), jnp.float32)

    def loss(p, x):
        for layer in range(LAYERS):
            w = [p[f"{n}{layer}"] for n in ("W_ih", "W_hh", "b_ih", "b_hh")]
            x = _scan_layer(jax, jnp, x, *w) if case == "scan" else rj.lstm(x, None, None, *w)[0]
        return jnp.mean((x @ p["W_out"] - target) ** 2)

    @jax.jit
    def step(p, x):
        value, grads = jax.value_and_grad(loss)(p, x)
        return value, jax.tree_util.tree_map(lambda a, g: a - 0.01 * g, p, grads)

    state = {"p": p}

    def run():
        value, state["p"] = step(state["p"], x)
        value.block_until_ready()

    return _median_ms(run, 20)


def overhead():
    import jax
    import jax.numpy as jnp
    import numpy as np

    import pyrnn
    import pyrnn.jax as rj
    from pyrnn import functional as F

    pyrnn.set_num_threads(1)
    rng = np.random.default_rng(0)
    out = []
    for b, t, h in ((1, 5, 8), (32, 50, 256)):
        arrays = [rng.standard_normal(s).astype(np.float32) * 0.1
                  for s in ((t, b, h), (4 * h, h), (4 * h, h), (4 * h,), (4 * h,))]
        jarrays = [jnp.asarray(a) for a in arrays]
        f = jax.jit(lambda x, *w: rj.lstm(x, None, None, *w))
        direct = _median_ms(lambda: F.forward("lstm", arrays[0], None, None, *arrays[1:], training=False), 200)
        via_jax = _median_ms(lambda: jax.block_until_ready(f(*jarrays)), 200)
        out.append((f"B={b} T={t} H={h}", direct, via_jax))
    return out


def main():
    if len(sys.argv) > 1:
        case = sys.argv[1]
        if case == "overhead":
            for shape, direct, via in overhead():
                print(f"overhead {shape}: pyrnn.functional {direct:.3f} ms, jit(pyrnn.jax.lstm) {via:.3f} ms, "
                      f"difference {1e3 * (via - direct):.0f} us")
        else:
            import pyrnn.jax as rj

            print(f"{case}: {train_step_ms(case):.1f} ms (backend {rj.backend() if case == 'pyrnn' else '-'})")
        return
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               OMP_NUM_THREADS="1")
    for case in CASES:
        subprocess.run(["taskset", "-c", "0", sys.executable, __file__, case], env=env, check=True)


if __name__ == "__main__":
    main()
