"""pyrnn.torch under torch.nn.parallel.DistributedDataParallel (gloo, 2 processes on loopback).

Two processes, each training on its half of a batch, end with the parameters
of one process trained on the whole batch: DDP averages the C++ BPTT's
gradients across processes like any other module's.
"""

import datetime
import os
import socket
import sys
import time

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import pyrnn  # noqa: E402
import pyrnn.torch as pt  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

WORLD = 2
STEPS = 3
T, B, I, H = 5, 8, 3, 6
TIMEOUT_S = 90


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = pt.LSTM(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
        self.head = nn.Linear(2 * H, 1, dtype=torch.float64)

    def forward(self, x, lengths):
        _, (h_n, _) = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return self.head(torch.cat([h_n[-2], h_n[-1]], 1)).squeeze(1)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    target = torch.randn(B, generator=g, dtype=torch.float64)
    return x, lengths, target


def _train(model, x, lengths, target, steps=STEPS):
    """Adam on the mean squared error over the whole batch: each of the world's equal shards'
    mean loss, averaged by DDP, is the whole batch's mean loss."""
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x, lengths), target)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def _worker(rank, port, out_dir):
    """One DDP process: its shard of the batch (rows rank, rank + WORLD, ...)."""
    torch.set_num_threads(1)
    pyrnn.set_num_threads(1)
    if sys.platform.startswith("linux") and os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # this process only: gloo on loopback, whatever the hostname
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(_Model())
        x, lengths, target = _data()
        shard = slice(rank, None, WORLD)
        _train(model, x[:, shard], lengths[shard], target[shard])
        torch.save(model.module.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
        # Both ranks reach this point before either tears gloo down: a rank that
        # destroys its group while the other still talks to it can abort in
        # gloo's shutdown ("terminate called without an active exception", seen
        # once in a full CI run).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(out_dir):
    """Runs the WORLD workers; False if they did not finish within TIMEOUT_S (then killed)."""
    out_dir.mkdir()
    ctx = torch.multiprocessing.start_processes(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD,
                                                join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                return False
        return True
    finally:
        for p in ctx.processes:  # only ours, and only if still running (a failure or the timeout)
            if p.is_alive():
                p.kill()
                p.join(5)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_matches_single_process(tmp_path):
    # One more try, on a new port, if the first does not finish: once in a full CI run (2026-12-04)
    # the two workers did not finish within 90 s, where they take 11-16 s; nine reruns, in CI's
    # environment and here, passed. A DDP bug (a parameter without a gradient on one rank) would
    # hang both tries.
    out = tmp_path / "try1"
    if not _run_workers(out):
        out = tmp_path / "try2"
        if not _run_workers(out):
            pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s, twice")

    torch.manual_seed(0)
    single = _Model()
    _train(single, *_data())
    want = single.state_dict()
    for rank in range(WORLD):
        got = torch.load(out / f"rank{rank}.pt", weights_only=True)
        assert list(got) == list(want)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-9,
                                       msg=lambda m, name=name, rank=rank: f"rank {rank} {name}: {m}")
    torch.manual_seed(0)
    start = _Model().state_dict()  # and training moved them
    assert not torch.allclose(want["rnn.weight_hh_l0"], start["rnn.weight_hh_l0"])
