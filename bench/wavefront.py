#!/usr/bin/env python
"""#14 experiment: a wavefront across two stacked LSTM layers (inference).
Sequential: layer 1 over all T, then layer 2, each call on 2 threads.
Wavefront: layer 1 on chunk k (1 thread, Python thread A) alongside layer 2 on
chunk k-1 (1 thread, Python thread B); state carried between chunks."""
import queue
import threading
import time

import numpy as np
import pyrnn
from pyrnn import functional as F

T, H = 200, 256
rng = np.random.default_rng(0)

def make(B):
    Ws = []
    for l in range(2):
        W_ih = (rng.standard_normal((4 * H, H)) / 16).astype(np.float32)
        W_hh = (rng.standard_normal((4 * H, H)) / 16).astype(np.float32)
        b = (rng.standard_normal(4 * H) / 16).astype(np.float32)
        Ws.append((W_ih, W_hh, b, F.pack_weights("lstm", W_ih, W_hh)))
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    return x, Ws

def layer(x, W, h, c):
    W_ih, W_hh, b, p = W
    y, h, c, _ = F.lstm_forward(x, h, c, W_ih, W_hh, b, b, training=False, packed=p)
    return y, h, c

def sequential(x, Ws):
    B = x.shape[1]
    z = np.zeros((B, H), np.float32)
    y1, _, _ = layer(x, Ws[0], z, z)
    y2, _, _ = layer(y1, Ws[1], z, z)
    return y2

def wavefront(x, Ws, C):
    B = x.shape[1]
    q = queue.Queue()
    out = [None] * ((T + C - 1) // C)
    def first():
        h = c = np.zeros((B, H), np.float32)
        for k in range(0, T, C):
            y, h, c = layer(x[k:k + C], Ws[0], h, c)
            q.put((k // C, y))
        q.put(None)
    def second():
        h = c = np.zeros((B, H), np.float32)
        while (item := q.get()) is not None:
            k, y1 = item
            out[k], h, c = layer(y1, Ws[1], h, c)
    ta, tb = threading.Thread(target=first), threading.Thread(target=second)
    ta.start(); tb.start(); ta.join(); tb.join()
    return np.concatenate(out)

def best(f, reps=15):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3, float(np.median(ts)) * 1e3

for B in (1, 8, 32):
    x, Ws = make(B)
    pyrnn.set_num_threads(2)
    ref = sequential(x, Ws)
    s = best(lambda: sequential(x, Ws))
    row = [f"B={B}: sequential 2 threads {s[0]:.2f} ms (median {s[1]:.2f})"]
    pyrnn.set_num_threads(1)
    s1 = best(lambda: sequential(x, Ws))
    row.append(f"sequential 1 thread {s1[0]:.2f}")
    for C in (5, 10, 25, 50):
        y = wavefront(x, Ws, C)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
        w = best(lambda: wavefront(x, Ws, C))
        row.append(f"wavefront C={C} {w[0]:.2f} (median {w[1]:.2f})")
    print("; ".join(row), flush=True)
