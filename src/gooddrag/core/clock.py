"""Seconds per phase of an edit without waiting for the device inside loops."""

from __future__ import annotations

import time
from typing import Any

import torch


class PhaseClock:
    """Seconds per phase without waiting for the device inside loops: on CUDA,
    events recorded on the stream and read once at the end (one sync); elsewhere
    ``perf_counter`` (the CPU runs synchronously)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.spans: list[tuple[str, Any, Any]] = []

    def now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def add(self, phase: str, start):
        """Count the time from ``start`` (a :meth:`now`) to now towards ``phase``; returns now."""
        end = self.now()
        self.spans.append((phase, start, end))
        return end

    def seconds(self) -> dict[str, float]:
        if self.cuda and self.spans:
            self.spans[-1][2].synchronize()
        out: dict[str, float] = {}
        for phase, a, b in self.spans:
            out[phase] = out.get(phase, 0.0) + (a.elapsed_time(b) / 1000 if self.cuda else b - a)
        return out
