"""Golden values of the engine on the tiny random model: any drift fails.

The runs are defined in tests/golden/cases.py; the stored values in tests/golden/tiny.json were
made by ``python -m tests.golden.regenerate`` (one command, which also rewrites shapes.json and
behaviour.json). A change of the engine that is meant to change its output (a new method
detail, a fixed bug) must regenerate them in the same commit, and say so; anything else that
moves these numbers is a regression. The shapes-64 golden run is compared in test_behaviour.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gooddrag import DragPipeline
from tests.golden import cases

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = "python -m tests.golden.regenerate"


def assert_matches_golden(got: dict, want: dict, what: str) -> None:
    """Every stored value equal to float noise (cases.TOLERANCE); counts and names exactly."""

    def check(ok, message):
        if not ok:
            raise AssertionError(message)

    def walk(a, b, path):
        if isinstance(b, dict):
            check(isinstance(a, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}")
            for k in b:
                walk(a[k], b[k], f"{path}.{k}")
        elif isinstance(b, list):
            check(isinstance(a, list) and len(a) == len(b), f"{path}: {a} != {b}")
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif isinstance(b, float):
            check(math.isclose(a, b, rel_tol=cases.TOLERANCE, abs_tol=cases.TOLERANCE), f"{path}: {a!r} != {b!r}")
        else:
            check(a == b, f"{path}: {a!r} != {b!r}")

    try:
        walk(got, want, what)
    except AssertionError as err:
        raise AssertionError(f"{err}\nThe engine's output changed. If that is meant, run `{REGENERATE}` "
                             "and commit the new tests/golden/*.json with the change that caused it.") from None


def load_golden(name: str) -> dict:
    data = json.loads((GOLDEN / name).read_text())
    data.pop("made_with", None)
    return data


@pytest.fixture(scope="module")
def fresh_tiny_pipe(tiny_model_dir):
    """Its own pipeline, so no other test's use of the session one can matter."""
    return DragPipeline.from_pretrained(str(tiny_model_dir), device="cpu")


@pytest.mark.parametrize("method", sorted(cases.TINY_RUNS))
def test_tiny_model_golden(fresh_tiny_pipe, tmp_path, method):
    run = cases.tiny_run(fresh_tiny_pipe, method, tmp_path / "lora")
    assert run.result.lora["source"] == "trained"
    assert_matches_golden(run.golden(), load_golden("tiny.json")[method], f"tiny.json:{method}")


def test_golden_check_catches_a_drift():
    want = load_golden("tiny.json")["gooddrag"]
    got = json.loads(json.dumps(want))
    got["latent_corner"][0][0][0] += 1e-3
    with pytest.raises(AssertionError, match=r"latent_corner\[0\]\[0\]\[0\].*\n.*tests.golden.regenerate"):
        assert_matches_golden(got, want, "x")
    got = json.loads(json.dumps(want))
    got["latent_corner"][0][0][0] += 1e-7  # float noise passes
    assert_matches_golden(got, want, "x")
