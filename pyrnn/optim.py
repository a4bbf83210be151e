"""Small training utilities for NumPy loops over pyrnn layers.

Optimizers with PyTorch's update rules (:class:`SGD` with momentum,
:class:`RMSprop`, :class:`Adam`), gradient clipping (:func:`clip_grad_norm`,
:func:`clip_grad_value`) and the two losses the examples need
(:func:`softmax_cross_entropy`, :func:`mse_loss`). ``optim.Linear`` is
:class:`pyrnn.Linear` (the layer), kept here for existing code::

    lstm = pyrnn.LSTM(1, 64)
    fc = pyrnn.Linear(64, 1)
    opt = pyrnn.optim.Adam([lstm, fc], lr=1e-2)

    y, _ = lstm(x)
    pred = fc(y[-1])
    loss, dpred = pyrnn.optim.mse_loss(pred, target)
    opt.zero_grad()
    lstm.backward(dh_n=fc.backward(dpred)[None])   # dh_n: (num_layers, B, H)
    norm = pyrnn.optim.clip_grad_norm([lstm, fc], 1.0)
    opt.step()

Anything with ``named_parameters()`` and a ``grads`` dict keyed like it (the
layers, the cells, :class:`pyrnn.Linear`) is a *module* here; optimizers and
clipping take a module, or a list of modules and ``(param, grad)`` array
pairs. Updates are in place, so the layers see them at their next call.

This is deliberately not a framework: no autograd, no parameter groups, no
schedulers (set ``opt.lr`` yourself). Gradients are arrays, never None:
``zero_grad()`` zero-fills them (torch's ``zero_grad(set_to_none=False)``), so
a parameter that gets no gradient in a step still takes its momentum and weight
decay, where torch's default skips it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds  # NumPy >= 2.0
except ImportError:  # pragma: no cover - NumPy 1.x
    byte_bounds = np.byte_bounds  # type: ignore[attr-defined]

from ._module import ParameterIterator, is_parameter
from ._validation import check_bool
from .layers import Linear

__all__ = [
    "SGD",
    "RMSprop",
    "Adam",
    "clip_grad_norm",
    "clip_grad_value",
    "Linear",
    "softmax",
    "log_softmax",
    "softmax_cross_entropy",
    "mse_loss",
]


def _is_module(obj):
    return hasattr(obj, "named_parameters") and isinstance(getattr(obj, "grads", None), dict)


def _frozen(obj):
    """A frozen copy (``freeze()``): parameters read-only, no gradients."""
    return getattr(obj, "frozen", False) is True


def _entries(params, expected, lone=lambda p: False):
    """The entries of ``params``: a module or frozen copy (or what ``lone`` accepts) is one entry, else
    ``params`` is iterated. ``module.parameters()`` and frozen copies are refused; ``expected`` says
    what ``params`` may be, for the message."""
    if isinstance(params, ParameterIterator):
        raise TypeError("got module.parameters(), the weight arrays themselves (NumPy arrays carry no .grad): "
                        "pass the module, which holds its gradients in module.grads, or (param, grad) pairs")
    one = _is_module(params) or _frozen(params) or lone(params)
    if not one and (not isinstance(params, Iterable) or isinstance(params, (str, bytes))):
        raise TypeError(f"expected {expected}, got {type(params).__name__} {params!r:.80}")
    for item in [params] if one else params:
        if _frozen(item):
            raise TypeError(f"{type(item).__name__} is a frozen copy (freeze()), for inference: its weights cannot "
                            f"be trained; train the layer or cell it was frozen from, then freeze() again")
        yield item


def _check_pair(item):
    """A (param, grad) pair as given: not named_parameters()'s (name, weight), nor a weight as the gradient."""
    if isinstance(item[0], str):
        raise TypeError(f"got ({item[0]!r}, array), an entry of module.named_parameters(): (name, weight) is not "
                        f"a (param, grad) pair; pass the module, which holds its gradients in module.grads")
    if is_parameter(item[1]):
        raise TypeError("the second array of a (param, grad) pair is a module's parameter (a weight), not a "
                        "gradient: pass the module, or (param, module.grads[name]) pairs")
    return item[0], item[1]


def _pairs(params):
    """[(param, grad)] from a module, or an iterable of modules and (param, grad) pairs."""
    out = []
    for item in _entries(params, "a module, or a list of modules and (param, grad) pairs"):
        if _is_module(item):
            for name, p in item.named_parameters():
                out.append((p, item.grads[name]))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append(_check_pair(item))
        else:
            raise TypeError(f"expected a module (named_parameters() and grads) or a (param, grad) pair, "
                            f"got {type(item).__name__}")
    for p, g in out:
        if not isinstance(p, np.ndarray) or not isinstance(g, np.ndarray):
            raise TypeError(f"parameters and gradients must be NumPy arrays, got {type(p).__name__} and "
                            f"{type(g).__name__}")
        if p.shape != g.shape:
            raise ValueError(f"parameter of shape {p.shape} has a gradient of shape {g.shape}")
        if p.dtype.kind != "f" or g.dtype.kind != "f":
            raise TypeError(f"parameters and gradients must be floating point, got {p.dtype} and {g.dtype}")
        if not p.flags.writeable:
            raise ValueError("parameters must be writeable arrays (they are updated in place)")
        if not g.flags.writeable:
            raise ValueError("gradients must be writeable arrays (zero_grad() zeroes them in place)")
    if not out:
        raise ValueError("optimizer got an empty parameter list")
    return _tied(out)


def _memory_key(a):
    """Arrays with the same key are the same elements (views of one parameter are one parameter)."""
    return a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str


def _tied(pairs):
    """[(param, [grads])]: a parameter given in several (param, grad) pairs (a tied weight, e.g. an
    embedding and a readout sharing one matrix) is one parameter whose gradients are summed, as
    autograd sums a shared weight's: one update and one optimizer state, its decay applied once."""
    groups = {}
    for p, g in pairs:
        group = groups.setdefault(_memory_key(p), (p, []))[1]
        if any(_memory_key(h) == _memory_key(g) for h in group):
            # (torch warns of duplicate parameters; here each step would update it twice)
            raise ValueError("the same parameter (with the same gradient) is given twice (a module listed twice?): "
                             "it would be updated (or counted and clipped) twice")
        group.append(g)
    out = list(groups.values())
    # Overlapping distinct parameters, by a sweep over their byte ranges (not every pair: a clipping call
    # runs at every step, and a model may have a thousand parameters).
    params = [p for p, _ in out]
    bounds = [byte_bounds(p) for p in params]
    active: list = []
    for i in sorted(range(len(params)), key=lambda i: bounds[i][0]):
        active = [j for j in active if bounds[j][1] > bounds[i][0]]
        for j in active:
            if np.shares_memory(params[i], params[j]):
                raise ValueError(f"two parameters (shapes {params[j].shape} and {params[i].shape}) overlap in "
                                 f"memory without being the same array: give a shared weight as the same array "
                                 f"in every pair")
        active.append(i)
    return out


def _grads(params):
    """Gradient arrays from a module, or an iterable of modules, (param, grad) pairs and arrays, as
    groups: the gradients of one parameter (a tied weight's pairs) together, a lone array alone."""
    if isinstance(params, tuple) and len(params) == 2 and all(isinstance(a, np.ndarray) for a in params):
        # (param, grad) or two gradients? Clipping the parameter by mistake would corrupt it.
        raise TypeError("got a tuple of two arrays: pass a (param, grad) pair inside a list, [(param, grad)], "
                        "or the gradient arrays as a list, [g1, g2]")
    out = []
    for item in _entries(params, "a module, or a list of modules, (param, grad) pairs and gradient arrays",
                         lone=lambda p: isinstance(p, np.ndarray)):
        if isinstance(item, np.ndarray):
            if is_parameter(item):
                raise TypeError("got a module's parameter array (a weight, as list(module.parameters()) holds) "
                                "where a gradient was expected: NumPy arrays carry no .grad; pass the module, "
                                "which holds its gradients in module.grads, or the gradient arrays")
            out.append((None, item))
        elif _is_module(item):
            out.extend((p, item.grads[name]) for name, p in item.named_parameters())
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append(_check_pair(item))
        else:
            raise TypeError(f"expected a module, a (param, grad) pair or a gradient array, got {type(item).__name__}")
    for _, g in out:
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            raise TypeError("gradients must be floating-point NumPy arrays")
        if not g.flags.writeable:
            raise ValueError("gradients must be writeable arrays (clipping scales them in place)")
    groups = [gs for _, gs in _tied([(p, g) for p, g in out if p is not None])] + [[g] for p, g in out if p is None]
    keys = [_memory_key(g) for gs in groups for g in gs]
    if len(set(keys)) != len(keys):
        raise ValueError("the same gradient array is given twice (a module listed twice, or a module and one of "
                         "its gradients?): its norm would count twice and it would be scaled twice")
    return groups


def _check_hyper(name, value, low=0.0, high=None, low_open=False, allow_inf=False, high_closed=False):
    expected = (f"a {'' if allow_inf else 'finite '}number {'>' if low_open else '>='} {low:g}"
                + (f" and {'<=' if high_closed else '<'} {high:g}" if high is not None else ""))
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or (
            math.isinf(value) and not (allow_inf and value > 0)):
        raise ValueError(f"Invalid {name}: {value!r} (expected {expected})")
    if value < low or (low_open and value == low) or (high is not None and (value > high if high_closed else
                                                                            value >= high)):
        raise ValueError(f"Invalid {name}: {value} (expected {expected})")
    return float(value)


class Optimizer:
    """Base class: ``step()``, ``zero_grad()``, ``state_dict()``, ``load_state_dict()``.

    ``params``: a module, or a list of modules and ``(param, grad)`` pairs.
    ``lr`` is a plain attribute: change it between steps for a schedule.
    """

    _state_keys: tuple = ()

    def __init__(self, params, lr, **hyper):
        checked = self._checked_hyper(lr=lr, **hyper)
        self._groups = _pairs(params)  # [(param, [grads])]: a tied weight's gradients are summed
        self.__dict__.update(checked)
        self.step_count = 0
        self.state = [{k: np.zeros_like(p) for k in self._state_keys} for p, _ in self._groups]

    def __setstate__(self, state):
        if "_pairs" in state:  # (pickled before a tied weight's pairs were grouped: one group per pair)
            state["_groups"] = [(p, [g]) for p, g in state.pop("_pairs")]
        self.__dict__.update(state)

    @staticmethod
    def _checked_hyper(lr):
        """The hyperparameters as attributes, checked: the one check of the constructor and of
        :meth:`load_state_dict` (subclasses take theirs by keyword)."""
        return {"lr": _check_hyper("learning rate", lr)}

    @property
    def params(self):
        """The parameter arrays it updates, in order."""
        return [p for p, _ in self._groups]

    def zero_grad(self):
        """Sets every gradient to zero (in place): torch's ``zero_grad(set_to_none=False)``."""
        for _, gs in self._groups:
            for g in gs:
                g[...] = 0

    def step(self):
        """Updates every parameter in place from its gradient (a tied weight's gradients summed)."""
        self.step_count += 1
        for (p, gs), st in zip(self._groups, self.state):
            g = gs[0] if len(gs) == 1 else sum(gs[1:], gs[0].copy())
            self._update(p, g, st)

    def _update(self, p, g, st):  # pragma: no cover - abstract
        raise NotImplementedError

    def _hyper(self):
        return {"lr": self.lr}

    def state_dict(self):
        """{'type', 'step_count', 'hyper', 'state': [per-parameter dict of arrays]} (copies)."""
        return {"type": type(self).__name__, "step_count": self.step_count, "hyper": self._hyper(),
                "state": [{k: v.copy() for k, v in st.items()} for st in self.state]}

    def load_state_dict(self, state):
        """Restores a :meth:`state_dict` (the step count, the moments, and the hyperparameters).

        Everything is checked (hyperparameters as the constructor checks them) before anything is set."""
        name = type(self).__name__
        if not isinstance(state, Mapping):
            raise TypeError(f"{name}.load_state_dict: expected a mapping (a state_dict()), got {type(state).__name__}")
        missing = [k for k in ("type", "step_count", "hyper", "state") if k not in state]
        if missing:
            raise ValueError(f"{name}.load_state_dict: the state_dict lacks the keys {missing}")
        if state["type"] != name:
            raise ValueError(f"state_dict is for {state['type']}, not {name}")
        step_count = state["step_count"]
        if isinstance(step_count, (bool, np.bool_)) or not isinstance(step_count, numbers.Integral):
            raise TypeError(f"step_count must be an int, got {type(step_count).__name__} {step_count!r}")
        if step_count < 0:
            raise ValueError(f"step_count must be >= 0, got {step_count}")
        hyper = state["hyper"]
        if not isinstance(hyper, Mapping):
            raise TypeError(f"state_dict['hyper'] must be a mapping of hyperparameters, got {type(hyper).__name__}")
        if set(hyper) != set(self._hyper()):
            raise ValueError(f"state_dict['hyper'] must have the keys {sorted(self._hyper())} of {name}, got "
                             f"{sorted(map(str, hyper))}")
        checked = self._checked_hyper(**hyper)
        states = state["state"]
        if not isinstance(states, (list, tuple)):
            raise TypeError(f"state_dict['state'] must be a list (a dict of arrays per parameter), got "
                            f"{type(states).__name__}")
        if len(states) != len(self.state):
            raise ValueError(f"state_dict has {len(states)} parameters, the optimizer {len(self.state)}")
        arrays = []
        for mine, theirs in zip(self.state, states):
            if not isinstance(theirs, Mapping):
                raise TypeError(f"each entry of state_dict['state'] must be a dict of arrays, got "
                                f"{type(theirs).__name__}")
            if set(mine) != set(theirs):
                raise ValueError(f"state_dict has keys {sorted(map(str, theirs))}, expected {sorted(mine)}")
            for k, v in theirs.items():
                a = np.asarray(v)
                if a.dtype.kind not in "fiu":  # (copyto's unsafe casting dropped imaginary parts, parsed strings)
                    raise TypeError(f"state '{k}' must be a real numeric array, got dtype {a.dtype}")
                if a.shape != mine[k].shape:
                    raise ValueError(f"state '{k}' has shape {a.shape}, expected {mine[k].shape}")
                arrays.append((mine[k], a))
        for dst, a in arrays:
            np.copyto(dst, a, casting="same_kind")
        self.step_count = int(step_count)
        self.__dict__.update(checked)

    def __repr__(self):
        hyper = ", ".join(f"{k}={v}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({len(self._groups)} parameters, {hyper})"


class SGD(Optimizer):
    """Stochastic gradient descent with (Nesterov) momentum, as torch.optim.SGD.

    ``g += weight_decay * p``; ``buf = momentum * buf + (1 - dampening) * g``
    (``buf = g`` at the first step); ``p -= lr * (g + momentum * buf if nesterov else buf)``.
    """

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                         weight_decay=weight_decay)

    @staticmethod
    def _checked_hyper(lr, momentum, dampening, nesterov, weight_decay):
        h = {"lr": _check_hyper("learning rate", lr), "momentum": _check_hyper("momentum value", momentum),
             "dampening": _check_hyper("dampening", dampening), "nesterov": check_bool("nesterov", nesterov),
             "weight_decay": _check_hyper("weight_decay value", weight_decay)}
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        return h

    def _hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def _update(self, p, g, st):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = st["momentum_buffer"]
            if self.step_count == 1:
                buf[...] = g
            else:
                buf *= self.momentum
                buf += (1.0 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class RMSprop(Optimizer):
    """RMSProp (Hinton's lecture 6e), as torch.optim.RMSprop.

    ``v = alpha * v + (1 - alpha) * g**2``; with ``centered``, ``m = alpha * m + (1 - alpha) * g``
    and ``v - m**2`` replaces ``v``; ``p -= lr * g / (sqrt(v) + eps)`` (through a momentum buffer
    when ``momentum > 0``).
    """

    _state_keys = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                         centered=centered)

    @staticmethod
    def _checked_hyper(lr, alpha, eps, weight_decay, momentum, centered):
        return {"lr": _check_hyper("learning rate", lr),
                "alpha": _check_hyper("alpha value", alpha, high=1.0, high_closed=True),
                "eps": _check_hyper("epsilon value", eps),
                "weight_decay": _check_hyper("weight_decay value", weight_decay),
                "momentum": _check_hyper("momentum value", momentum), "centered": check_bool("centered", centered)}

    def _hyper(self):
        return {"lr": self.lr, "alpha": self.alpha, "eps": self.eps, "weight_decay": self.weight_decay,
                "momentum": self.momentum, "centered": self.centered}

    def _update(self, p, g, st):
        if self.weight_decay:
            g = g + self.weight_decay * p
        v = st["square_avg"]
        v *= self.alpha
        v += (1.0 - self.alpha) * g * g
        if self.centered:
            m = st["grad_avg"]
            m *= self.alpha
            m += (1.0 - self.alpha) * g
            denom = np.sqrt(v - m * m) + self.eps
        else:
            denom = np.sqrt(v) + self.eps
        if self.momentum:
            buf = st["momentum_buffer"]
            buf *= self.momentum
            buf += g / denom
            p -= self.lr * buf
        else:
            p -= self.lr * g / denom


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), as torch.optim.Adam.

    ``m = b1 * m + (1 - b1) * g``; ``v = b2 * v + (1 - b2) * g**2``;
    ``p -= lr / (1 - b1**t) * m / (sqrt(v / (1 - b2**t)) + eps)``. ``weight_decay``
    is L2 (added to g), as torch.optim.Adam; ``decoupled_weight_decay=True`` is AdamW
    (``p *= 1 - lr * weight_decay`` before the update).
    """

    _state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled_weight_decay)

    @staticmethod
    def _checked_hyper(lr, betas, eps, weight_decay, decoupled_weight_decay):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        return {"lr": _check_hyper("learning rate", lr),
                "betas": (_check_hyper("beta parameter at index 0", betas[0], high=1.0),
                          _check_hyper("beta parameter at index 1", betas[1], high=1.0)),
                "eps": _check_hyper("epsilon value", eps),
                "weight_decay": _check_hyper("weight_decay value", weight_decay),
                "decoupled_weight_decay": check_bool("decoupled_weight_decay", decoupled_weight_decay)}

    def _hyper(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                "decoupled_weight_decay": self.decoupled_weight_decay}

    def _update(self, p, g, st):
        b1, b2 = self.betas
        t = self.step_count
        if self.weight_decay:
            if self.decoupled_weight_decay:
                p *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * g * g
        step_size = self.lr / (1.0 - b1 ** t)
        denom = np.sqrt(v) / math.sqrt(1.0 - b2 ** t) + self.eps
        p -= step_size * m / denom


# --------------------------------------------------------------------- clipping


def clip_grad_norm(params, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Rescales the gradients in place so that their global norm is at most ``max_norm``.

    The norm is taken over all gradients together, as one vector (Pascanu et al.
    2013; ``torch.nn.utils.clip_grad_norm_``). ``params``: a module, or a list of
    modules, ``(param, grad)`` pairs and gradient arrays. Returns the total norm
    *before* clipping, as a float. ``norm_type`` may be ``float('inf')`` (or ``'inf'``, as torch).
    """
    max_norm = _check_hyper("max_norm", max_norm, allow_inf=True)  # (inf: measure the norm only, as torch)
    # (float() read True as the 1-norm and parsed '2')
    norm_type = math.inf if isinstance(norm_type, str) and norm_type == "inf" else _check_hyper(
        "norm_type", norm_type, low_open=True, allow_inf=True)
    error_if_nonfinite = check_bool("error_if_nonfinite", error_if_nonfinite)
    groups = _grads(params)
    if not groups:
        return 0.0
    # (a tied weight's norm is its summed gradient's, as torch sees p.grad)
    grads = [gs[0] if len(gs) == 1 else sum(gs[1:], gs[0].astype(np.float64)) for gs in groups]
    if math.isinf(norm_type):
        # (np.max over the maxima: Python's max() kept a finite value over a NaN that came later)
        total = float(np.max([np.max(np.abs(g)) if g.size else 0.0 for g in grads]))
    else:
        total = sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type)) for g in grads) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite, so it cannot be "
                           f"clipped. To disable this error, set error_if_nonfinite=False")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 or not math.isfinite(total):
        for gs in groups:
            for g in gs:
                g *= coef
    return total


def clip_grad_value(params, clip_value):
    """Clips every gradient element to [-clip_value, clip_value] in place.

    A tied weight given in several ``(param, grad)`` pairs is clipped as torch clips its ``p.grad``,
    the sum: the clipped sum goes to its first gradient array, the others are zeroed (the
    optimizers sum them)."""
    clip_value = _check_hyper("clip_value", clip_value, allow_inf=True)
    for gs in _grads(params):
        if len(gs) > 1:
            total = sum(gs[1:], gs[0].copy())
            for g in gs[1:]:
                g[...] = 0
            gs[0][...] = total
        np.clip(gs[0], -clip_value, clip_value, out=gs[0])


# ----------------------------------------------------------------------- losses


def _real_array(name, a, kinds, expected):
    """``a`` as an array whose dtype kind is one of ``kinds`` (complex, string and object arrays were
    cast, parsed or failed inside a ufunc)."""
    a = np.asarray(a)
    if a.dtype.kind not in kinds:
        raise TypeError(f"{name} must be {expected}, got dtype {a.dtype}")
    return a


def _logits_along(logits, axis):
    """Real ``logits`` (integers as float64) and ``axis``, checked: an int naming a non-empty axis."""
    logits = _real_array("logits", logits, "fiu", "a real-valued array")
    if logits.dtype.kind != "f":
        logits = logits.astype(np.float64)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__} {axis!r}")
    if not -logits.ndim <= axis < logits.ndim:
        raise ValueError(f"axis {axis} is out of range for logits of shape {logits.shape}")
    if logits.shape[axis] == 0:
        raise ValueError(f"logits must have at least one entry along axis {axis}, got shape {logits.shape}")
    return logits, int(axis)


def log_softmax(logits, axis=-1):
    """log(softmax(logits)) along ``axis``, computed stably (the maximum subtracted first)."""
    logits, axis = _logits_along(logits, axis)
    z = logits - np.max(logits, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax(logits, axis=-1):
    """exp(logits) normalised to sum to 1 along ``axis``, computed stably."""
    logits, axis = _logits_along(logits, axis)
    z = np.exp(logits - np.max(logits, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


def softmax_cross_entropy(logits, targets, mask=None):
    """Mean cross-entropy (nats) of integer ``targets`` [...] under ``softmax(logits)`` [..., C].

    ``logits``: floating point (``dlogits`` has their dtype). ``mask`` [...]
    (optional, 0/1 or finite weights >= 0, the targets' shape): the mean is over
    the masked-in positions; with none (or no targets) the loss is 0.0, its
    gradient zero. Returns ``(loss, dlogits)``, ``dlogits`` the gradient of the loss.
    """
    logits = _real_array("logits", logits, "f", "a floating-point array (dlogits has its dtype)")
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape [..., C] with C >= 1 classes, got shape {logits.shape}")
    targets = np.asarray(targets)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} do not match")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integers, got {targets.dtype}")
    C = logits.shape[-1]
    # (float16 works in float32: its sum of 65504 weights was inf, the loss 0.0 and the gradient zero)
    work = np.float32 if logits.dtype.itemsize < 4 else logits.dtype
    flat = logits.reshape(-1, C).astype(work, copy=False)
    t = targets.reshape(-1)
    if mask is None:
        w = np.ones(t.size)
    else:
        mask = _real_array("mask", mask, "biuf", "a real array (0/1 or weights)")
        if mask.shape != targets.shape:
            raise ValueError(f"mask of shape {mask.shape} does not match targets {targets.shape}")
        if not (np.all(np.isfinite(mask)) and np.all(mask >= 0)):  # (negative weights cancelled the loss)
            raise ValueError("mask must hold finite weights >= 0, got "
                             + ("NaN or inf" if not np.all(np.isfinite(mask)) else f"{mask.min()}"))
        w = mask.astype(np.float64).reshape(-1)
    # Targets under a zero weight are not read (padding, e.g. torch's ignore_index -100).
    bad = (w > 0) & ((t < 0) | (t >= C))
    if bad.any():
        raise ValueError(f"targets must be in [0, {C}) where the mask is not 0, got {t[bad][0]}"
                         + ("" if mask is not None else " (padding may hold any value under a zero mask)"))
    t = np.where(w > 0, t, 0)
    total = float(w.sum())
    if total <= 0:
        return 0.0, np.zeros_like(logits)
    logp = log_softmax(flat)
    nll = -logp[np.arange(t.size), t]
    loss = float(np.dot(nll.astype(np.float64), w)) / total
    d = np.exp(logp)
    d[np.arange(t.size), t] -= 1
    d *= (w / total).astype(work)[:, None]
    return loss, d.reshape(logits.shape).astype(logits.dtype, copy=False)


def mse_loss(pred, target):
    """mean((pred - target)**2); returns ``(loss, dpred)``. ``pred``: floating point (``dpred`` has
    its dtype), not empty; ``target``: real numbers of the same shape."""
    pred = _real_array("pred", pred, "f", "a floating-point array (dpred has its dtype)")
    target = _real_array("target", target, "fiu", "a real-valued array")
    if target.shape != pred.shape:  # broadcasting [B, 1] against [B] would average B*B pairs
        raise ValueError(f"mse_loss: pred {pred.shape} and target {target.shape} must have the same shape")
    if pred.size == 0:
        raise ValueError(f"mse_loss: pred and target are empty (shape {pred.shape}): no mean to take")
    diff = pred - target.astype(pred.dtype, copy=False)
    return float(np.mean(np.square(diff, dtype=np.float64))), (2.0 / diff.size) * diff
