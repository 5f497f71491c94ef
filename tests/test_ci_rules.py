"""Under CI=true a skipped test fails (tests/conftest.py), except one marked ``may_skip_in_ci``;
tests.helpers.require() skips locally and fails under CI. Checked in a child pytest run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require

SELF_TEST = "GOODDRAG_CI_RULES_SELF_TEST"  # set only in the child run: there the tests below skip
ROOT = Path(__file__).resolve().parents[1]


def test_a_plain_skip():
    if os.environ.get(SELF_TEST):
        pytest.skip("something is missing")


def test_a_require():
    if os.environ.get(SELF_TEST):
        require(False, "the browser is missing")


@pytest.mark.may_skip_in_ci
def test_an_allowed_skip():
    if os.environ.get(SELF_TEST):
        pytest.skip("needs downloaded weights")


def _child(ci: str) -> subprocess.CompletedProcess:
    nodes = [f"tests/test_ci_rules.py::{name}" for name in ("test_a_plain_skip", "test_a_require", "test_an_allowed_skip")]
    env = os.environ | {SELF_TEST: "1", "CI": ci, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", *nodes],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(bool(os.environ.get(SELF_TEST)), reason="not inside the child run")
def test_skips_fail_under_ci_only(monkeypatch):
    ci = _child("true")
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "2 failed, 1 skipped" in ci.stdout, ci.stdout
    assert "skipped under CI=true, which counts as a failure: something is missing" in ci.stdout
    assert "the browser is missing (CI=true: a missing requirement is a failure" in ci.stdout
    # locally require() skips
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="the browser is missing"):
        require(False, "the browser is missing")
    require(True, "not raised")
