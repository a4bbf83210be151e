"""Float32 accuracy of pyrnn.torch against float64 torch.nn, beside torch.nn's own float32.

One layer, I = H = 64, B = 16, the same weights (PyTorch's initialisation times
`scale`), inputs ~N(0, 4); the largest absolute error of the output, of the
parameter gradients and of dx for a random cotangent. "forget bias" adds to the
LSTM's forget-gate bias (the GRU's update gate), holding those gates near 1 over
long sequences, where the gates' rounding accumulates.

    python bench/accuracy_vs_torch.py
"""
import torch

import pyrnn.torch as pt

CASES = [("LSTM", 1, 100, 0.0), ("GRU", 1, 100, 0.0), ("LSTM", 4, 100, 0.0), ("GRU", 4, 100, 0.0),
         ("LSTM", 1, 1000, 8.0), ("LSTM", 1, 1000, 14.0), ("GRU", 1, 1000, -10.0)]


def main():
    torch.set_num_threads(1)
    H = 64
    for cls, scale, T, gate_bias in CASES:
        torch.manual_seed(0)
        ref = getattr(torch.nn, cls)(H, H)
        with torch.no_grad():
            for p in ref.parameters():
                p.mul_(scale)
            ref.bias_ih_l0[H:2 * H] += gate_bias  # LSTM: forget gate; GRU: update gate
        ours = getattr(pt, cls)(H, H)
        ours.load_state_dict(ref.state_dict())
        ref64 = getattr(torch.nn, cls)(H, H).double()
        ref64.load_state_dict(ref.state_dict())
        x = torch.randn(T, 16, H) * 2
        xs = [x.clone().requires_grad_(True) for _ in range(3)]
        ys = [ref(xs[0])[0], ours(xs[1])[0], ref64(xs[2].double())[0]]
        g = torch.randn_like(ys[0])
        for y in ys:
            y.backward(g.to(y.dtype))

        def err(a, b):
            return float((a.detach().double() - b.detach().double()).abs().max())

        def grads(m):
            return torch.cat([p.grad.flatten() for p in m.parameters()])

        print(f"{cls} scale={scale} T={T} gate bias {gate_bias:+}: "
              f"y pyrnn {err(ys[1], ys[2]):.2e} torch32 {err(ys[0], ys[2]):.2e} | "
              f"dW pyrnn {err(grads(ours), grads(ref64)):.2e} torch32 {err(grads(ref), grads(ref64)):.2e} "
              f"(largest |dW| {float(grads(ref64).abs().max()):.1e}) | "
              f"dx pyrnn {err(xs[1].grad, xs[2].grad):.2e} torch32 {err(xs[0].grad, xs[2].grad):.2e}")


if __name__ == "__main__":
    main()
