"""Argument checks that name the argument, its shape and the shape that was expected."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _fmt(shape, names: str | None) -> str:
    dims = ", ".join("?" if s is None else str(s) for s in shape)
    return f"({names}) = ({dims})" if names else f"({dims})"


def check_tensor(
    name: str,
    t,
    shape: tuple[int | None, ...],
    names: str | None = None,
    *,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
    optional: bool = False,
) -> None:
    """Raise ValueError unless ``t`` is a tensor of ``shape`` (``None`` matches any size) and an allowed dtype.

    ``names`` spells the axes for the message, for example ``"batch, length, channels"``.
    """
    if not _is_tensor(name, t, optional, lambda: _fmt(shape, names)):
        return
    if t.dim() != len(shape) or any(e is not None and e != s for e, s in zip(shape, t.shape)):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {_fmt(shape, names)}")
    _check_dtype(name, t, dtypes)


def _is_tensor(name: str, t, optional: bool, expected) -> bool:
    """False for an allowed None; raises ValueError for a missing or non-tensor argument (``expected()`` describes
    the shape wanted)."""
    if t is None:
        if optional:
            return False
        raise ValueError(f"{name} is required, expected a tensor of shape {expected()}")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return True


def _check_dtype(name: str, t: torch.Tensor, dtypes) -> None:
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} has dtype {t.dtype}, expected one of: {allowed}")


def check_same_device(**tensors) -> torch.device:
    """Raise ValueError if the given (non-None) tensors are on different devices; return the common device."""
    device = None
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {device}; all inputs must share a device")
    return device


def float_dtype_of(*tensors) -> torch.dtype:
    """The dtype to accumulate in: float32 for half/bfloat16/float32 inputs, float64 if any input is float64."""
    out = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            out = torch.float64
    return out


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    if by <= 0 or value % by != 0:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")


class TensorArgs:
    """The tensor arguments of one op function, each with its axes by name, checked together in one pass.

    Every axis name is bound to the size it has in the first argument that has it; later arguments must agree.
    ``check`` raises ValueError naming the argument for a shape that disagrees (the expected shape shows ``?`` for
    axes not yet bound), a dtype outside the allowed ones, a device other than the first argument's, a size-0 axis
    listed in ``nonzero`` or an axis that does not divide another as ``divisible`` requires; it returns the sizes
    in ``axis_names`` order and the device.

    Decoding steps call ``check`` once per layer and position, where a step costs its count of Python-level
    operations, so the spec is also compiled into one straight-line predicate (as ``dataclasses`` compiles its
    methods) that accepts good arguments in a handful of attribute reads and comparisons; only a call that it
    rejects runs the loop that finds and names the problem.

    Args:
        axes: argument name -> space-separated axis names, in the order the function takes the arguments.
        optional: arguments that may be None.
        dtypes: allowed dtypes per argument (default: the floating dtypes).
        nonzero: axes that must not have size 0.
        divisible: (axis, by_axis) pairs: ``axis`` must be a multiple of ``by_axis``.
    """

    def __init__(self, axes: dict[str, str], *, optional=(), dtypes: dict | None = None, nonzero=(), divisible=()):
        self.axes = dict(axes)
        self.optional = tuple(optional)
        self.dtypes = dict(dtypes or {})
        self.nonzero = tuple(nonzero)
        self.divisible = tuple(divisible)
        names: list[str] = []
        for spec in axes.values():
            names += [a for a in spec.split() if a not in names]
        self.axis_names = tuple(names)
        self._plan = []
        bound: set[str] = set()
        for name, spec in axes.items():
            dims = tuple(names.index(a) for a in spec.split())
            new = set(spec.split()) - bound
            bound |= new
            # Checks that become possible once this argument has bound its axes: nonzero first, then divisibility.
            after = [(names.index(a), None) for a in self.nonzero if a in new]
            after += [(names.index(a), names.index(by)) for a, by in self.divisible
                      if (a in new or by in new) and {a, by} <= bound]
            self._plan.append((name, dims, bool(new), name in self.optional, self.dtypes.get(name, FLOAT_DTYPES),
                               tuple(after)))
        if self._plan and self._plan[0][3]:
            raise ValueError("the first argument of a TensorArgs must not be optional")
        self._fast = self._compile()

    def without(self, axis: str, *, dtypes: dict | None = None, **replace: str) -> TensorArgs:
        """The same arguments with ``axis`` dropped (a sequence op's decoding step drops ``length``). ``replace``
        gives arguments other axes, an empty string drops an argument, new arguments come first; ``dtypes`` adds to
        the allowed dtypes per argument."""
        axes = {k: v for k, v in replace.items() if k not in self.axes}
        for name, spec in self.axes.items():
            spec = replace.get(name, " ".join(a for a in spec.split() if a != axis))
            if spec:
                axes[name] = spec
        return TensorArgs(axes, optional=self.optional, dtypes={**self.dtypes, **(dtypes or {})},
                          nonzero=self.nonzero, divisible=self.divisible)

    def check(self, *tensors) -> tuple[list, torch.device]:
        """``tensors`` in the order of ``axes``; returns (sizes in ``axis_names`` order, device)."""
        checked = self._fast(*tensors)
        return checked if checked is not None else self._check_one_by_one(tensors)

    def _check_one_by_one(self, tensors) -> tuple[list, torch.device]:
        sizes = [None] * len(self.axis_names)
        device = first = None
        for (name, dims, _, optional, dtypes, after), t in zip(self._plan, tensors):
            if t is None and optional:
                continue
            _is_tensor(name, t, optional, lambda name=name: self._expected(name, sizes))
            shape = t.shape
            if len(shape) != len(dims):
                self._bad_shape(name, shape, sizes)
            for d, s in zip(dims, shape):
                if sizes[d] is None:
                    sizes[d] = s
                elif sizes[d] != s:
                    self._bad_shape(name, shape, sizes)
            for a, by in after:
                self._after(name, sizes, a, by)
            _check_dtype(name, t, dtypes)
            if device is None:
                device, first = t.device, name
            elif t.device != device:
                raise ValueError(f"{name} is on {t.device} but {first} is on {device}; all inputs must share a device")
        return sizes, device

    def _compile(self):
        """The spec as one function of the tensors returning ([sizes], device), or None for anything it does not
        accept (a wrong shape, dtype or device, a None where a tensor is required, or a non-tensor)."""
        args = [f"t{i}" for i in range(len(self._plan))]
        lines = [f"def fast({', '.join(args)}):", "    try:"]
        lines.append("        " + " = ".join(f"a{d}" for d in range(len(self.axis_names))) + " = None")
        certain: set[int] = set()  # axes bound by a required argument already
        env = {}
        for i, (_, dims, _, optional, dtypes, after) in enumerate(self._plan):
            env[f"D{i}"] = dtypes
            ind = "        "
            if optional:
                lines.append(f"{ind}if t{i} is not None:")
                ind += "    "
            if all(d in certain for d in dims):
                expected = ", ".join(f"a{d}" for d in dims) + ("," if len(dims) == 1 else "")
                lines.append(f"{ind}if t{i}.shape != ({expected}): return None")
            else:
                lines.append(f"{ind}{', '.join(f'x{j}' for j in range(len(dims)))}, = t{i}.shape")
                for j, d in enumerate(dims):
                    lines.append(f"{ind}if a{d} is None: a{d} = x{j}")
                    lines.append(f"{ind}elif a{d} != x{j}: return None")
            for a, by in after:
                lines.append(f"{ind}if a{a} == 0: return None" if by is None else
                             f"{ind}if a{by} <= 0 or a{a} % a{by}: return None")
            lines.append(f"{ind}if t{i}.dtype not in D{i}: return None")
            lines.append(f"{ind}dev = t0.device" if i == 0 else f"{ind}if t{i}.device != dev: return None")
            if not optional:
                certain.update(dims)
        lines.append(f"        return [{', '.join(f'a{d}' for d in range(len(self.axis_names)))}], dev")
        lines.append("    except (AttributeError, TypeError, ValueError):")
        lines.append("        return None")
        exec("\n".join(lines), env)  # noqa: S102 - the source is built above from the spec's names only
        return env["fast"]

    def _after(self, name: str, sizes: list, a: int, by: int | None) -> None:
        if by is None:
            if sizes[a] == 0:
                axis = self.axis_names[a]
                raise ValueError(f"{name} has {axis} = 0 in shape {self._expected(name, sizes)}; {axis} must be at "
                                 "least 1")
        elif sizes[by] <= 0 or sizes[a] % sizes[by]:
            check_divisible(self.axis_names[a], sizes[a], self.axis_names[by], sizes[by])

    def _expected(self, name: str, sizes: list) -> str:
        axes = self.axes[name].split()
        dims = [sizes[self.axis_names.index(a)] for a in axes]
        return f"({', '.join(axes)}) = ({', '.join('?' if d is None else str(d) for d in dims)})"

    def _bad_shape(self, name: str, shape, sizes: list):
        raise ValueError(f"{name} has shape {tuple(shape)}, expected {self._expected(name, sizes)}")
