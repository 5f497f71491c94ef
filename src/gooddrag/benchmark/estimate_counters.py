"""The instrument of ``gooddrag bench estimate``: operators, FLOPs and device memory per phase.

:class:`Counters` is a ``TorchDispatchMode`` (it sees every aten operator an edit dispatches, after
autograd, on real and on fake tensors alike) that keeps, for the phase the edit is in:

* ``ops``: the operators dispatched (what ``research/speed.py --count-ops`` counts);
* ``flops``: ``torch.utils.flop_counter``'s formulas (2 per multiply-add: matmuls, convolutions and
  their backward passes, fused attention forward and backward);
* ``peak_bytes``: the most device memory live at once, counted the way
  ``torch.cuda.max_memory_allocated`` counts it: every storage on the device (weights, activations,
  what autograd saves, gradients, optimiser state) from the operator that makes it until the last
  tensor on it dies (a weakref finaliser on the storage), each rounded up to the CUDA caching
  allocator's 512-byte blocks (``round_to``). Storages on other devices (the estimator's stand-in
  for the host is ``meta``) are not counted.

Phases nest (``"drag"`` inside ``"denoise"``): the innermost one is charged, and each phase's peak
starts from the memory live when it begins, as ``reset_peak_memory_stats`` at every boundary does.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

logger = logging.getLogger(__name__)

aten = torch.ops.aten

CUDA_BLOCK = 512
"""The CUDA caching allocator rounds every allocation up to a multiple of 512 bytes."""


def _flop_formulas() -> dict:
    """torch's FLOP formulas, plus the CPU's fused attention (the kernel the estimator's CPU stand-in
    dispatches where CUDA runs flash / memory-efficient attention) counted with the same formulas."""
    table = dict(flop_registry)
    table[aten._scaled_dot_product_flash_attention_for_cpu] = flop_registry[aten._scaled_dot_product_flash_attention]
    table[aten._scaled_dot_product_flash_attention_for_cpu_backward] = flop_registry[
        aten._scaled_dot_product_flash_attention_backward]
    return table


FLOP_FORMULAS = _flop_formulas()

METADATA_OPS = frozenset({
    torch.ops.prim.device.default, torch.ops.prim.layout.default, aten.sym_size.default, aten.sym_size.int,
    aten.sym_stride.default, aten.sym_stride.int, aten.sym_numel.default, aten.sym_storage_offset.default,
    aten.is_contiguous.default, aten.is_contiguous.memory_format, aten.dim.default,
})
"""Queries of a tensor's metadata: fake tensors answer them through the dispatcher, real ones do
not, so they are not counted (as an operator, a FLOP or memory)."""


@dataclass
class PhaseFigures:
    """What one phase of an edit cost."""

    ops: int = 0
    flops: int = 0
    peak_bytes: int = 0
    start_bytes: int | None = None
    """Device bytes live when the phase was first entered."""
    first_call_bytes: int | None = None
    """Device bytes live when the phase's first UNet call began (:meth:`Counters.unet_call`): what
    stays live through the phase, before any step's own tensors."""
    seconds: float = 0.0
    """Wall time spent in the phase (by whatever ran it: fake tensors take their own time)."""

    def to_dict(self) -> dict[str, int]:
        return {"peak_bytes": self.peak_bytes, "flops": self.flops, "ops": self.ops}


@dataclass
class _Live:
    """Live storages on the counted device: key (the storage's address) -> bytes."""

    bytes_by_key: dict[int, int] = field(default_factory=dict)
    total: int = 0


class Counters(TorchDispatchMode):
    """Operators, FLOPs and peak device memory per phase (module docstring).

    ``device``: the device type whose storages count (``"cpu"`` for the estimator's stand-in, whose
    host is ``meta``); ``round_to``: allocation granularity in bytes (512: CUDA's; 1: exact bytes).
    Use as a context manager around the edit, with :meth:`phase` as the edit's phase hook; call
    :meth:`track_existing` first with the models (their weights are live before the edit starts).
    """

    def __init__(self, device: str = "cpu", round_to: int = CUDA_BLOCK):
        super().__init__()
        self.device = device
        self.round_to = round_to
        self.phases: dict[str, PhaseFigures] = {}
        self._stack: list[str] = ["other"]
        self._live = _Live()
        self._peak = 0  # running peak since the last phase boundary
        self._since = time.perf_counter()  # start of the running span of the innermost phase
        self.on_op = None  # optional callable(func) for progress reports

    # ------------------------------------------------------------------ memory
    def _bytes(self, storage: torch.UntypedStorage) -> int:
        n = storage.nbytes()
        return -(-n // self.round_to) * self.round_to

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != self.device or tensor.layout != torch.strided:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live.bytes_by_key:
            return
        n = self._bytes(storage)
        self._live.bytes_by_key[key] = n
        self._live.total += n
        self._peak = max(self._peak, self._live.total)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        n = self._live.bytes_by_key.pop(key, 0)
        self._live.total -= n

    def track_existing(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors made before the counters started (a model's parameters and buffers)."""
        for t in tensors:
            self._track(t)

    @property
    def live_bytes(self) -> int:
        """Device bytes live now."""
        return self._live.total

    # ------------------------------------------------------------------ phases
    def _figures(self) -> PhaseFigures:
        return self.phases.setdefault(self._stack[-1], PhaseFigures())

    def _flush_peak(self) -> None:
        fig = self._figures()
        fig.peak_bytes = max(fig.peak_bytes, self._peak)
        self._peak = self._live.total
        now = time.perf_counter()
        fig.seconds += now - self._since
        self._since = now

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge what runs inside to phase ``name`` (the innermost phase of nested ones)."""
        self._flush_peak()
        self._stack.append(name)
        fig = self._figures()
        if fig.start_bytes is None:
            fig.start_bytes = self._live.total
        try:
            yield
        finally:
            self._flush_peak()
            self._stack.pop()

    def unet_call(self) -> None:
        """Note a UNet call starting (a forward pre-hook calls this)."""
        fig = self._figures()
        if fig.first_call_bytes is None:
            fig.first_call_bytes = self._live.total

    def finish(self) -> dict[str, PhaseFigures]:
        """Close the running peak; returns the figures per phase."""
        self._flush_peak()
        return self.phases

    # ------------------------------------------------------------------ dispatch
    def _track_all(self, values) -> None:
        """Track the tensors among ``values`` (an operator's arguments or outputs: tensors, lists of
        them, other values)."""
        for v in values:
            if isinstance(v, torch.Tensor):
                self._track(v)
            elif isinstance(v, (list, tuple)):
                self._track_all(v)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in METADATA_OPS:
            return func(*args, **kwargs)
        self._track_all(args)
        if kwargs:
            self._track_all(kwargs.values())
        out = func(*args, **kwargs)
        fig = self._figures()
        fig.ops += 1
        formula = FLOP_FORMULAS.get(func._overloadpacket)
        if formula is not None:
            fig.flops += int(formula(*args, **kwargs, out_val=out))
        self._track_all(out if isinstance(out, (list, tuple)) else (out,))
        if self.on_op is not None:
            self.on_op(func)
        return out


def total(phases: dict[str, PhaseFigures]) -> PhaseFigures:
    """The whole edit: summed operators and FLOPs, the largest phase peak."""
    return PhaseFigures(
        ops=sum(p.ops for p in phases.values()),
        flops=sum(p.flops for p in phases.values()),
        peak_bytes=max((p.peak_bytes for p in phases.values()), default=0),
    )


__all__ = ["CUDA_BLOCK", "FLOP_FORMULAS", "METADATA_OPS", "Counters", "PhaseFigures", "total"]
