"""bench/wild.py end to end at a tiny scale: it starts server.py, enrolls, streams probes and reports JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from web_helpers import PROJECT_DIR

pytestmark = [pytest.mark.dlib, pytest.mark.slow]  # a real server.py with the real model

SETTINGS = ("detector", "backbone", "people", "enroll", "frames", "seed")
SUMMARY = ("boxed_at_30px", "named_right_at_40px_and_more", "strangers_named_max")
SHARES = ("boxed", "named_right", "named_wrong", "strangers_named")


def test_a_small_run_reports_every_condition_as_json(celeba_dir):
    env = dict(os.environ, FACES_TEST_DATA=str(celeba_dir.parent))
    command = [sys.executable, "bench/wild.py", "--people", "2", "--enroll", "2", "--sizes", "80", "--tilts", "0",
               "--frames", "2", "--max-seconds", "120"]
    run = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]

    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(SETTINGS) <= result.keys() and set(SUMMARY) <= result["summary"].keys()
    assert (result["people"], result["enroll"], result["frames"], result["seed"]) == (2, 2, 2, 0)
    assert isinstance(result["detector"], str) and isinstance(result["backbone"], str)
    assert result["stopped"] is None and result["errors"] == 0

    [condition] = result["conditions"]
    assert (condition["size"], condition["tilt"]) == (80, 0)
    assert (condition["enrolled_probes"], condition["stranger_probes"]) == (2, 4)  # strangers: twice --people
    assert result["frames_sent"] == 6 * 2
    for key in SHARES:
        assert 0 <= condition[key] <= 1, key
    assert condition["boxed"] > 0  # the truth boxes line up with what the server boxes: frontal 80 px faces

    summary = result["summary"]
    assert summary["boxed_at_30px"] is None  # no 30 px condition was run
    for key in ("named_right_at_40px_and_more", "strangers_named_max"):
        assert 0 <= summary[key] <= 1, key
    assert summary["named_right_at_40px_and_more"] == condition["named_right"]
    assert "named right" in run.stderr  # the table went to stderr
