"""Seeded random LPIPS(alex) weights and inputs, from numpy alone (no gooddrag, no torchvision),
so the reference outputs of the real ``lpips`` package can be made once in another environment
(make_lpips_golden.py) and compared in every test run (tests/test_benchmark.py).

numpy's ``default_rng`` streams are stable across numpy versions, and the same numbers are
recorded in lpips_alex.json as checksums, so a changed stream shows up as such.
"""

from __future__ import annotations

import numpy as np

# torchvision AlexNet ``features`` conv layers: index -> weight shape
ALEX_CONVS = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
LPIPS_CHANNELS = (64, 192, 384, 256, 256)
INPUT_SHAPES = ((2, 3, 64, 64), (1, 3, 100, 76))  # two batches; the second not square, not a multiple of 4


def alex_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision key names (``features.{i}.weight`` / ``.bias``), He-scaled normal weights, small biases."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, shape in ALEX_CONVS.items():
        fan_in = shape[1] * shape[2] * shape[3]
        out[f"features.{i}.weight"] = (rng.standard_normal(shape) * (2 / fan_in) ** 0.5).astype(np.float32)
        out[f"features.{i}.bias"] = (rng.standard_normal(shape[0]) * 0.05).astype(np.float32)
    return out


def lin_weights(seed: int = 1) -> dict[str, np.ndarray]:
    """The lpips package's head key names (``lin{k}.model.1.weight``), non-negative like the trained ones."""
    rng = np.random.default_rng(seed)
    return {f"lin{k}.model.1.weight": rng.random((1, c, 1, 1)).astype(np.float32)
            for k, c in enumerate(LPIPS_CHANNELS)}


def input_pairs(seed: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """Image pairs in [-1, 1]; in each pair the second is the first plus noise (realistic distances)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for shape in INPUT_SHAPES:
        a = rng.uniform(-1, 1, shape)
        b = np.clip(a + rng.normal(0, 0.3, shape), -1, 1)
        pairs.append((a.astype(np.float32), b.astype(np.float32)))
    return pairs


def checksums() -> dict[str, float]:
    """Sums of every array above (float64), to recognise the same numbers."""
    arrays = alex_weights() | lin_weights()
    for k, (a, b) in enumerate(input_pairs()):
        arrays[f"input{k}.a"], arrays[f"input{k}.b"] = a, b
    return {name: float(np.asarray(v, dtype=np.float64).sum()) for name, v in sorted(arrays.items())}
