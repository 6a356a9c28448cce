"""A function in a fresh spawned process: its result, its error as a message, and the timeout."""

import functools
import json
import time

from attnseg.benchmark.children import run_in_child


def test_child_returns_the_result_or_the_error():
    assert run_in_child(json.dumps, obj=[1, 2]) == "[1, 2]"
    outcome = run_in_child(json.loads, s="{")
    assert set(outcome) == {"error"} and outcome["error"].startswith("JSONDecodeError")


def test_child_past_its_timeout_is_killed():
    sleeper = functools.partial(time.sleep, 30)  # picklable, and leaves no grandchild behind when killed
    assert run_in_child(sleeper, timeout=0.5) == {"error": "timed out after 0.5 s"}
