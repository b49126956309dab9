""":func:`~hscl.losses.contrastive_loss` and :func:`~hscl.losses.supcon_loss` inside ``torch.compile``: the
whole call as one custom operator.

The eager loss reads its table shapes and value checks on the host (one synchronisation per call), builds
its column tables with data-dependent sizes, computes its gradient in the forward (an autograd Function)
and, with :class:`~hscl.hardening.AutoExponential`, updates Python state on every call. None of that can
be traced into a graph. Under ``torch.compile`` the call is therefore the custom operator ``hscl::loss``
(``torch.library.custom_op``, torch >= 2.4; ``hscl::loss_backward`` is the backward of
``reduction="none"``): Dynamo and AOTAutograd see one opaque node with a fake (meta) implementation for its
output shapes, and at run time the node runs the eager loss itself, so values, gradients, errors, warnings
and state changes are those of eager mode.

* The output (and the statistics) come back from the node; for the scalar reductions so does the gradient
  with respect to ``z`` (the eager loss computes it in its forward anyway), and the backward scales it.
  ``reduction="none"`` (a vector of data-dependent length: an unbacked size in the graph) recomputes the
  call in its backward, with the beta the forward used.
* The hyper-parameters are constants of the graph. ``None``, :class:`~hscl.hardening.Exponential` and
  :class:`~hscl.hardening.Threshold` are passed by value; any other hardening (an
  :class:`~hscl.hardening.AutoExponential`, a callable) is passed as a handle to the very object, which the
  node calls at run time (the graph is guarded on the object's identity), so its state changes each call
  as in eager mode.
* The kernels run the eager loss on detached leaves with autograd switched back on (:func:`_autograd_on`).
"""

from __future__ import annotations

import functools
import json
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from hscl.hardening import AutoExponential, Exponential, Threshold

#: torch.library.custom_op (torch >= 2.4); without it the loss is traced as plain Python (graph breaks)
AVAILABLE = hasattr(torch.library, "custom_op") and hasattr(torch.compiler, "is_compiling")

#: the eager functions the node runs, by name: ``"contrastive"`` and ``"supcon"``, registered by the modules that
#: define them (:func:`register`), so that this module imports none of them
_EAGER: dict[str, Callable] = {}

#: the hardening objects the compiled graphs call, by ``id`` (weak: a graph does not keep its object alive)
_OBJECTS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_KEPT: dict = {}  # those that cannot be weakly referenced (builtin functions)


def register(name: str, function: Callable) -> None:
    """Make ``function`` the eager call that the node runs for ``name`` (a key of :data:`ARGUMENTS`)."""
    _EAGER[name] = function


def _handle(obj: object) -> int:
    """``id(obj)``, with ``obj`` registered for the node to find. Dynamo runs this at trace time on the real
    object (a constant result, the graph guarded on the identity of ``obj``); it is never part of a graph."""
    try:
        _OBJECTS[id(obj)] = obj
    except TypeError:  # not weakly referable (a builtin function): kept
        _KEPT[id(obj)] = obj
    return id(obj)


def _options(function: str, kind: str, constants: dict, numbers: list) -> str:
    """The constants of a call (strings, flags, None; ``numbers``: the names of the numbers, passed apart
    because Dynamo may make them symbolic) as one string argument of the node. Run by Dynamo at trace time."""
    return json.dumps({"function": function, "hardening": kind, "kwargs": constants, "numbers": numbers})


if AVAILABLE:
    _handle = torch.compiler.assume_constant_result(_handle)
    _options = torch.compiler.assume_constant_result(_options)


def _object(handle: int):
    obj = _OBJECTS.get(handle, _KEPT.get(handle))
    if obj is None:
        raise RuntimeError(
            "hscl loss under torch.compile: the hardening object this graph was compiled for no longer exists "
            "(its id now names another object); call torch._dynamo.reset() after replacing a loss's hardening"
        )
    return obj


def _hardening(kind: str, value: float, handle: int, beta_used: Tensor | None = None):
    """The hardening argument of the eager call from its encoding (``beta_used``: the backward of an
    :class:`~hscl.hardening.AutoExponential`'s call uses the beta its forward chose, as an Exponential)."""
    if kind == "none":
        return None
    if kind == "exp":
        return Exponential(value)
    if kind == "threshold":
        return Threshold(value)
    obj = _object(handle)
    if beta_used is not None and isinstance(obj, AutoExponential):
        return Exponential(float(beta_used))
    return obj


@functools.lru_cache(maxsize=256)
def _config(options: str) -> dict:
    """``options`` decoded (read on every call of the node: cached; callers do not modify it)."""
    config = json.loads(options)
    config["reduction"] = config["kwargs"].get("reduction", "mean")
    return config


def _eager(z: Tensor, labels, memory_z, memory_labels, handle: int, options: str, numbers, beta_used=None):
    """The eager call the node stands for: ``(loss, LossStats or None)``."""
    config = _config(options)
    kwargs = {**config["kwargs"], **dict(zip(config["numbers"], numbers[:-1], strict=True))}
    if kwargs.get("chunk_size") is not None:
        kwargs["chunk_size"] = int(kwargs["chunk_size"])
    if config["function"] == "supcon":
        return _EAGER["supcon"](z, labels, **kwargs), None
    kwargs["hardening"] = _hardening(config["hardening"], numbers[-1], handle, beta_used)
    memory = None if memory_z is None else (memory_z, memory_labels)
    return _EAGER["contrastive"](z, labels, memory=memory, return_stats=True, **kwargs)


def _autograd_on():
    """Autograd inside the node: a custom operator's kernel runs with the autograd dispatch keys excluded
    (below the operator's own autograd formula), but the eager loss differentiates itself (its fused kernel
    computes the gradient in its forward; a callable hardening is differentiated by autograd), so the kernel
    turns them back on for its computation on detached leaves. A private torch API (present since 2.0)."""
    excluded = torch._C._dispatch_tls_local_exclude_set()
    on = excluded.remove(torch._C.DispatchKey.AutogradFunctionality).remove(torch._C.DispatchKey.ADInplaceOrView)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), on)


#: the :class:`~hscl.losses.LossStats` fields the node returns, in order (then ``pair_index``)
STATS = ("num_positives", "num_negatives", "num_kept", "valid", "fallback", "log_tilted_mean", "log_M", "anchor_loss")


def _forward(
    z: Tensor,
    labels: Tensor | None,
    memory_z: Tensor | None,
    memory_labels: Tensor | None,
    handle: int,
    options: str,
    numbers: list[float],
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """The node's kernel, the eager loss: ``(loss, d loss / d z or an empty tensor, the beta used,
    [*STATS, pair_index] or [] for SupCon)``."""
    scalar = _config(options)["reduction"] != "none"
    with _autograd_on(), torch.enable_grad():
        leaf = z.detach().requires_grad_(need_grad)
        loss, stats = _eager(leaf, labels, memory_z, memory_labels, handle, options, numbers)
        dz = torch.autograd.grad(loss, leaf)[0].contiguous() if need_grad and scalar else z.new_zeros(0)
    obj = _OBJECTS.get(handle) if handle else None
    value = float(obj.beta) if isinstance(obj, AutoExponential) else 0.0
    beta = torch.full((), value, dtype=torch.float64, device=z.device)  # a fill: no host-to-device copy
    if stats is None:
        return loss.detach(), dz, beta, []
    pairs = stats.pair_index
    pairs = pairs.clone() if pairs is not None else torch.zeros((0, 2), dtype=torch.long, device=z.device)
    return loss.detach(), dz, beta, [getattr(stats, name).detach().clone() for name in STATS] + [pairs]


def _forward_fake(z, labels, memory_z, memory_labels, handle, options, numbers, need_grad):
    """Output shapes: ``V*B`` statistics; ``reduction="none"`` gives ``(P,)`` pairs, P known at run time."""
    config = _config(options)
    reduction = config["reduction"]
    B, V, _ = z.shape
    dtype, long = (torch.float64 if z.dtype == torch.float64 else torch.float32), torch.long
    if reduction == "none":
        pairs = torch.library.get_ctx().new_dynamic_size()
        loss, pair_index = z.new_empty((pairs,), dtype=dtype), z.new_empty((pairs, 2), dtype=long)
    else:
        loss, pair_index = z.new_empty((), dtype=dtype), z.new_empty((0, 2), dtype=long)
    dz = z.new_empty(z.shape) if need_grad and reduction != "none" else z.new_empty(0)
    beta = z.new_empty((), dtype=torch.float64)
    if config["function"] == "supcon":
        return loss, dz, beta, []
    kinds = (long, long, long, torch.bool, torch.bool, dtype, dtype, dtype)
    return loss, dz, beta, [z.new_empty((B * V,), dtype=kind) for kind in kinds] + [pair_index]


def _backward(
    grad: Tensor,
    z: Tensor,
    labels: Tensor | None,
    memory_z: Tensor | None,
    memory_labels: Tensor | None,
    beta_used: Tensor,
    handle: int,
    options: str,
    numbers: list[float],
) -> Tensor:
    """``reduction="none"``: the call again (with the beta its forward chose), then autograd with ``grad``."""
    with _autograd_on(), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the forward warned already (a batch without a valid pair)
        leaf = z.detach().requires_grad_(True)
        loss, _ = _eager(leaf, labels, memory_z, memory_labels, handle, options, numbers, beta_used)
        return torch.autograd.grad(loss, leaf, grad.to(loss.dtype))[0].contiguous()


def _setup_context(ctx, inputs, output) -> None:
    z, labels, memory_z, memory_labels, handle, options, numbers, _ = inputs
    ctx.handle, ctx.options, ctx.numbers = handle, options, numbers
    ctx.scalar = _config(options)["reduction"] != "none"
    ctx.save_for_backward(output[1]) if ctx.scalar else ctx.save_for_backward(
        z, labels, memory_z, memory_labels, output[2]
    )


def _backward_rule(ctx, grad_loss, *_other_grads):
    nones = (None,) * 7
    if ctx.scalar:
        (dz,) = ctx.saved_tensors
        return ((dz * grad_loss).to(dz.dtype), *nones)
    z, labels, memory_z, memory_labels, beta_used = ctx.saved_tensors
    return (
        _backward_op(grad_loss, z, labels, memory_z, memory_labels, beta_used, ctx.handle, ctx.options, ctx.numbers),
        *nones,
    )


if AVAILABLE:
    _forward_op = torch.library.custom_op("hscl::loss", mutates_args=())(_forward)
    _forward_op.register_fake(_forward_fake)
    _backward_op = torch.library.custom_op("hscl::loss_backward", mutates_args=())(_backward)
    _backward_op.register_fake(lambda grad, z, *rest: torch.empty_like(z))
    _forward_op.register_autograd(_backward_rule, setup_context=_setup_context)


def _encode_hardening(hardening) -> tuple[str, float, int]:
    if hardening is None:
        return "none", 0.0, 0
    if type(hardening) is Exponential:  # by value: an equal new object does not recompile
        return "exp", float(hardening.beta), 0
    if type(hardening) is Threshold:
        return "threshold", float(hardening.tau), 0
    return "object", 0.0, _handle(hardening)  # the object itself: its state changes at run time


#: the arguments of each function after ``z``, ``labels``, ``memory`` and ``hardening``, in :func:`traced_call`'s order
ARGUMENTS = {
    "contrastive": (
        "positives",
        "negatives",
        "temperature",
        "M",
        "tau_plus",
        "normalize",
        "detach_weights",
        "reduction",
        "chunk_size",
    ),
    "supcon": ("temperature", "base_temperature", "normalize", "chunk_size"),
}


def traced_call(function: str, z: Tensor, labels: Tensor | None, memory, hardening, args: tuple) -> tuple:
    """A checked call of ``function`` (``"contrastive"``: :func:`~hscl.losses.contrastive_loss`, ``"supcon"``:
    :func:`~hscl.losses.supcon_loss`) as the node, traced by Dynamo: ``(loss, {LossStats field: tensor} or
    None)``. ``args``: the call's other arguments (numbers, strings, flags, None), named by :data:`ARGUMENTS`."""
    kwargs = dict(zip(ARGUMENTS[function], args, strict=True))
    kind, value, handle = _encode_hardening(hardening)
    constants = {key: v for key, v in kwargs.items() if v is None or isinstance(v, (str, bool))}
    names = sorted(key for key in kwargs if key not in constants)
    numbers = [float(kwargs[key]) for key in names] + [value]
    memory_z, memory_labels = (None, None) if memory is None else memory
    need_grad = torch.is_grad_enabled() and z.requires_grad
    options = _options(function, kind, constants, names)
    loss, _, _, stats = _forward_op(z, labels, memory_z, memory_labels, handle, options, numbers, need_grad)
    if function == "supcon":
        return loss, None
    fields = dict(zip(STATS, stats[:-1], strict=True))
    fields["pair_index"] = stats[-1] if kwargs.get("reduction") == "none" else None
    return loss, fields
