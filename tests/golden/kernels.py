"""The CPU kernel sets a user's x86-64 machine may run the tests with, as environment variables.

torch's CPU wheel picks its kernels at run time from three libraries, each by the CPU it finds:
ATen's own vectorised kernels (``ATEN_CPU_CAPABILITY``), MKL's BLAS for matmuls
(``MKL_ENABLE_INSTRUCTIONS``) and oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA``). Capping all three
makes this machine compute as an older one does; capping ATen alone does not (a machine with AVX2
and no AVX-512 differs from ``ATEN_CPU_CAPABILITY=avx2`` here in the matmuls and convolutions).
A cap above what the CPU has is ignored, so every profile runs anywhere.
"""

from __future__ import annotations

PROFILES: dict[str, dict[str, str]] = {
    "native": {},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
"""Name -> environment. ``default`` is the oldest x86-64 kernel set torch ships (SSE4.2)."""


def shell_prefix(name: str) -> str:
    """``VAR=value ...`` for a shell command line (.ci/run's second pass uses ``default``)."""
    return " ".join(f"{k}={v}" for k, v in PROFILES[name].items())
