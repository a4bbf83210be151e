"""The NumPy modules' base class: parameters, gradients, modes and state dicts."""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Dict, List, NamedTuple

import numpy as np

from ._validation import check_dtype, to_numpy

# pyrnn.functional's argument names -> PyTorch's parameter names (before the _l0 / _l0_reverse suffix)
PARAM_NAMES = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh", "W_hr": "weight_hr"}


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, as torch's: the parameters the state_dict lacked and its
    names that are not parameters (both empty after a strict load)."""
    missing_keys: List[str]
    unexpected_keys: List[str]


# Every parameter array a user has been handed (named_parameters(), parameters(), module.weight_ih_l0),
# by id, so that pyrnn.optim's clipping recognises a weight passed where a gradient belongs
# (list(model.parameters()) + list(head.parameters()), torch's habit) instead of scaling the weights.
_HANDED_OUT: Dict[int, "weakref.ref[np.ndarray]"] = {}


def _forget(key, ref):
    if _HANDED_OUT.get(key) is ref:
        del _HANDED_OUT[key]


def _handed_out(a):
    """Records parameter array ``a`` (see is_parameter); returns it."""
    key = id(a)
    ref = _HANDED_OUT.get(key)
    if ref is None or ref() is not a:
        _HANDED_OUT[key] = weakref.ref(a, lambda r, key=key: _forget(key, r))
    return a


def is_parameter(a):
    """Whether ``a`` is a pyrnn module's parameter array (one handed out by a module)."""
    ref = _HANDED_OUT.get(id(a))
    return ref is not None and ref() is a


def check_mode(mode):
    """train()'s argument: a bool (as torch.nn.Module.train checks; bool('False') is True)."""
    if not isinstance(mode, (bool, np.bool_)):
        raise ValueError(f"training mode is expected to be boolean, got {type(mode).__name__} {mode!r}")
    return bool(mode)


class ParameterIterator:
    """What ``Module.parameters()`` returns: an iterator over the live parameter arrays, recognisable to
    pyrnn.optim, where torch's habit ``clip_grad_norm_(model.parameters(), ...)`` would clip the weights
    (a NumPy array has no ``.grad``; the gradients are in ``module.grads``)."""

    def __init__(self, arrays):
        self._it = iter(list(arrays))

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)


class Gradients(OrderedDict):
    """A module's ``grads``: its parameters' gradient arrays, by parameter name. Assigning an entry
    (``grads[name] = np.clip(grads[name], -1, 1)``, torch's ``p.grad = ...``) copies the values into
    the array that is there, checked for shape, so that :mod:`pyrnn.optim`, which holds those arrays,
    and the next ``backward``, which adds into them, see it (a new array in their place would be
    read by neither). New names are plain entries."""

    def copy(self):
        """A plain OrderedDict of the same arrays (a snapshot's assignments must not write through)."""
        return OrderedDict(self)

    __copy__ = copy

    def __setitem__(self, name, value):
        if name in self:
            if value is not self[name]:  # (grads[k] += g assigns the same array back)
                np.copyto(self[name], gradient_values(self[name], value, name), casting="unsafe")
        else:
            super().__setitem__(name, value)

    # Entries stay: backward adds into them and optimizers hold them (a removed one made the next
    # backward fail with a bare KeyError); torch's `p.grad = None` is zero_grad() here.
    def _refuse_removal(self, *args, **kwargs):
        raise TypeError("a module's grads keep their entries (backward adds into those arrays, and optimizers "
                        "hold them): zero them with module.zero_grad(), or copy with grads.copy()")

    __delitem__ = pop = popitem = clear = _refuse_removal  # type: ignore[assignment]


def gradient_values(g, value, name):
    """``value`` (an array or tensor of g's shape, floating point) as an array, to go into gradient array g."""
    a = to_numpy(value, f"grads[{name!r}]")
    if a.dtype.kind != "f":
        raise TypeError(f"grads[{name!r}] must be a floating-point array, got dtype {a.dtype}")
    if a.shape != g.shape:
        raise ValueError(f"grads[{name!r}] must have the parameter's shape {g.shape}, got {a.shape}")
    return a


class Module:
    """Named parameters, gradients, train/eval and state dicts (as torch.nn.Module).

    The base of pyrnn's NumPy layers and cells: anything with ``named_parameters()``
    and a ``grads`` dict keyed like it is a module for :mod:`pyrnn.optim`.
    """

    def __init__(self, dtype):
        self.dtype = np.dtype(check_dtype(dtype).name)  # the canonical instance: `is` compares dtypes
        self._params = OrderedDict()
        self.__dict__["grads"] = Gradients()
        self.training = True

    def _add_param(self, name, shape, rng, bound):
        self._params[name] = rng.uniform(-bound, bound, shape).astype(self.dtype)
        self.grads[name] = np.zeros(shape, dtype=self.dtype)

    def named_parameters(self):
        """Yields (name, array): the live arrays, so in-place updates take effect."""
        for name, a in self._params.items():
            yield name, _handed_out(a)

    def parameters(self):
        """Yields the parameter arrays (live, as :meth:`named_parameters`)."""
        return ParameterIterator(_handed_out(a) for a in self._params.values())

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return _handed_out(params[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # Attributes fixed once set in the constructor: the parameters' shapes follow them (a layer's
    # hidden_size set to another value ran with the old one, then refused the gradient of its own output).
    _fixed: tuple[str, ...] = ()

    def __setattr__(self, name, value):
        if name in self._fixed and name in self.__dict__:
            old = self.__dict__[name]
            try:
                same = bool(value == old)
            except (TypeError, ValueError):
                same = False
            if not same:
                raise ValueError(f"{type(self).__name__}: {name} is fixed at construction ({old!r}; the parameters' "
                                 f"shapes follow it), got {value!r}: make a new {type(self).__name__}")
            return  # (an equal value of another type, 4.0 for 4, keeps the value as it is)
        # A parameter is a live array that the kernels, optimizers and state_dict share:
        # assigning one (lstm.weight_hh_l0 = new) copies the values into it, checked as
        # load_state_dict checks them, instead of hiding it behind an instance attribute.
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            self.load_state_dict({name: value}, strict=False)
            return
        if name == "grads" and "grads" in self.__dict__:
            self._set_grads(value)
            return
        object.__setattr__(self, name, value)

    def _set_grads(self, value):
        # module.grads = {...}: the values go into the gradient arrays in place (Gradients says why)
        grads = self.__dict__["grads"]
        if value is grads:
            return
        if not isinstance(value, Mapping):
            raise TypeError(f"{type(self).__name__}.grads: expected a mapping of parameter names to gradient "
                            f"arrays, got {type(value).__name__}")
        if set(value) != set(grads):
            raise ValueError(f"{type(self).__name__}.grads: expected the names {list(grads)}, got {list(value)}")
        arrays = {name: gradient_values(g, value[name], name) for name, g in grads.items()}  # all checked first
        for name, a in arrays.items():
            np.copyto(grads[name], a, casting="unsafe")

    def __getstate__(self):
        # What the last training-mode call kept for backward (C++ workspaces) is not
        # copied or pickled: a copy starts with no pending backward, like a fresh call.
        state = dict(self.__dict__)
        if "_saved" in state:
            state["_saved"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if not isinstance(self.__dict__.get("grads"), Gradients):  # (pickled before Gradients existed)
            self.__dict__["grads"] = Gradients(self.__dict__.get("grads", ()))
        # The canonical dtype instance again: an unpickled or copied one is equal but another object,
        # and the cells' fast path compares with `is` (a copied cell stepped 1.5x slower).
        self.__dict__["dtype"] = np.dtype(self.dtype.name)

    def train(self, mode=True):
        """Sets training mode (``mode=True``) or inference mode; returns the module."""
        self.training = check_mode(mode)
        return self

    def eval(self):
        """``train(False)``: inference mode (no dropout, nothing kept for backward); returns the module."""
        return self.train(False)

    def _accumulate(self, g, suffix=""):
        """Adds the parameter gradients of a functional.backward result to ``grads``."""
        for short, name in PARAM_NAMES.items():
            if g[short] is not None:
                self.grads[name + suffix] += g[short]

    def zero_grad(self):
        """Sets every array in ``grads`` to zero (in place)."""
        for g in self.grads.values():
            g[...] = 0

    def state_dict(self):
        """An OrderedDict of copies of the parameters, keyed as PyTorch keys them."""
        return OrderedDict((k, v.copy()) for k, v in self._params.items())

    def load_state_dict(self, state_dict, strict=True):
        """Copies NumPy arrays or torch tensors into the parameters (in place).

        Shapes must match exactly; values are converted to the layer's dtype.
        With strict=True the keys must match too. Returns ``IncompatibleKeys(missing_keys,
        unexpected_keys)``, a named tuple as torch's.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a mapping of names to arrays (a "
                            f"state_dict), got {type(state_dict).__name__}")
        missing = [k for k in self._params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self._params]
        if strict and (missing or unexpected):
            raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                             f"missing keys {missing}, unexpected keys {unexpected}")
        arrays = {}
        for k, v in state_dict.items():
            if k not in self._params:
                continue
            a = to_numpy(v, k)
            if a.dtype.kind != "f":
                raise TypeError(f"{k} must be a floating-point array, got dtype {a.dtype}")
            if a.shape != self._params[k].shape:
                raise ValueError(f"size mismatch for {k}: copying a param with shape {a.shape} from checkpoint, "
                                 f"the shape in current model is {self._params[k].shape}")
            arrays[k] = a
        for k, a in arrays.items():  # all checked before any is copied
            np.copyto(self._params[k], a, casting="unsafe")
        return IncompatibleKeys(missing, unexpected)
