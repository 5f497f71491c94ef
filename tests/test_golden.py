"""Golden values of the engine on the tiny random model: any drift fails.

The runs are defined in tests/golden/cases.py; the stored values in tests/golden/tiny.json were
made by ``python -m tests.golden.regenerate`` (one command, which also rewrites shapes.json and
behaviour.json). A change of the engine that is meant to change its output (a new method
detail, a fixed bug) must regenerate them in the same commit, and say so; anything else that
moves these numbers is a regression. The shapes-64 golden run is compared in test_behaviour.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gooddrag import DragPipeline
from tests.golden import cases

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = "python -m tests.golden.regenerate"


def assert_matches_golden(got: dict, want: dict, what: str, tolerances: dict | None = None) -> None:
    """Every stored float equal within its tolerance (``tolerances``: key -> absolute tolerance,
    cases.GOLDEN_TOLERANCES); every other value (counts, names, handles) exactly."""

    def check(ok, message):
        if not ok:
            raise AssertionError(message)

    def walk(a, b, path, tol):
        if isinstance(b, dict):
            check(isinstance(a, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}")
            for k in b:
                walk(a[k], b[k], f"{path}.{k}", (tolerances or {}).get(k, tol))
        elif isinstance(b, list):
            check(isinstance(a, list) and len(a) == len(b), f"{path}: {a} != {b}")
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]", tol)
        elif isinstance(b, float):
            ok = abs(a - b) <= tol if tol is not None else a == b
            check(ok, f"{path}: {a!r} != {b!r}" + (f" (tolerance {tol:g})" if tol is not None else ""))
        else:
            check(a == b, f"{path}: {a!r} != {b!r}")

    try:
        walk(got, want, what, None)
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
    assert_matches_golden(run.golden(), load_golden("tiny.json")[method], f"tiny.json:{method}",
                          cases.GOLDEN_TOLERANCES["tiny.json"])


def test_golden_check_catches_a_drift():
    want = load_golden("tiny.json")["gooddrag"]
    tolerances = cases.GOLDEN_TOLERANCES["tiny.json"]
    for key, change in (("latent_corner", 1e-3), ("latent_sum", 1e-2)):
        got = json.loads(json.dumps(want))
        if key == "latent_corner":
            got[key][0][0][0] += change
        else:
            got[key] += change
        with pytest.raises(AssertionError, match=key + r".*\n.*tests.golden.regenerate"):
            assert_matches_golden(got, want, "x", tolerances)
    got = json.loads(json.dumps(want))
    got["latent_corner"][0][0][0] += 1e-6  # float noise passes
    assert_matches_golden(got, want, "x", tolerances)
    got["handle_points"][0][0] += 1e-6  # a handle has no tolerance: exactly
    with pytest.raises(AssertionError, match=r"handle_points\[0\]\[0\]"):
        assert_matches_golden(got, want, "x", tolerances)
    got = json.loads(json.dumps(want))
    got["drag_steps"] += 1
    with pytest.raises(AssertionError, match="drag_steps"):
        assert_matches_golden(got, want, "x", tolerances)


def test_tolerances_cover_the_measured_spread_across_kernel_sets():
    """Each tolerance is at least MIN_SPREAD_MARGIN x the spread in spread.json, and everything
    compared exactly came out the same under every kernel set there."""
    spread = json.loads((GOLDEN / "spread.json").read_text())
    from tests.golden.kernels import PROFILES

    assert set(spread["kernel_sets"]) == set(PROFILES)
    for name, tolerances in cases.GOLDEN_TOLERANCES.items():
        runs = spread[name] if name != "shapes.json" else {"shapes": spread[name]}
        for run, values in runs.items():
            for key, value in values.items():
                where = f"{name}:{run}.{key}"
                if key in tolerances:
                    assert tolerances[key] >= cases.MIN_SPREAD_MARGIN * value, (where, value)
                else:
                    assert value in ("same", 0.0), (where, value)  # compared exactly


def test_make_test_runs_the_kernel_sensitive_tests_again_on_the_default_kernel_set():
    """`make test` (the README's test command, and all .ci/run calls) has a second pass on exactly
    the ``default`` kernel set of tests/golden/kernels.py."""
    from tests.golden.kernels import shell_prefix

    root = Path(__file__).parents[1]
    assert "make test\n" in (root / ".ci" / "run").read_text()
    make = (root / "Makefile").read_text()
    recipe = make.split("\ntest:", 1)[1]
    assert shell_prefix("default") in recipe
    for test in ("tests/test_golden.py", "tests/test_behaviour.py"):
        assert test in make
