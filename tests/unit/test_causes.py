"""agent/core/causes.py: why a run's process ended, and the words Prefect shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

from agent.core.causes import Cause, Death, classify, exit_text, signal_name
from agent.core.states import Outcome
from agent.observe import metrics

OOM_TEXT = (
    "was killed by the OOM killer at its memory limit of 128MiB "
    "(was terminated by signal SIGKILL (9))"
)

# -- the cause and its words ---------------------------------------------------------------


def test_a_clean_exit_is_an_exit_code_of_zero() -> None:
    assert classify(0, None) == Death(Cause.EXIT_CODE, "exited with status code 0")


def test_a_failing_exit_is_an_exit_code_with_its_status() -> None:
    assert classify(3, None) == Death(Cause.EXIT_CODE, "exited with status code 3")


def test_a_signal_the_agent_did_not_send_is_named_with_its_number() -> None:
    assert classify(-15, None) == Death(Cause.SIGNAL, "was terminated by signal SIGTERM (15)")
    assert classify(-9, None) == Death(Cause.SIGNAL, "was terminated by signal SIGKILL (9)")


def test_an_oom_kill_names_the_memory_limit_and_the_signal() -> None:
    death = classify(-9, None, oom_kills=1, memory_limit="128MiB")
    assert death == Death(Cause.OOM, OOM_TEXT)


def test_an_oom_kill_without_a_known_limit_says_only_the_oom_killer() -> None:
    death = classify(-9, None, oom_kills=2)
    assert death == Death(
        Cause.OOM, "was killed by the OOM killer (was terminated by signal SIGKILL (9))"
    )


def test_a_flow_that_exited_after_a_failed_allocation_was_still_ended_by_its_limit() -> None:
    death = classify(1, None, oom_kills=1, memory_limit="64MiB")
    assert death.cause is Cause.OOM
    assert death.text == (
        "was killed by the OOM killer at its memory limit of 64MiB (exited with status code 1)"
    )


def test_an_oom_kill_of_a_child_does_not_fail_a_flow_that_exited_zero() -> None:
    death = classify(0, None, oom_kills=1, memory_limit="128MiB")
    assert death == Death(Cause.EXIT_CODE, "exited with status code 0")


def test_a_timeout_wins_over_an_oom_kill() -> None:
    death = classify(-9, None, oom_kills=1, memory_limit="128MiB", timeout=30.0)
    assert death == Death(
        Cause.TIMEOUT, "exceeded timeout_seconds=30 (was terminated by signal SIGKILL (9))"
    )


@pytest.mark.parametrize(("timeout", "shown"), [(30.0, "30"), (1.5, "1.5"), (0.25, "0.25")])
def test_a_timeout_shows_the_seconds_as_the_user_wrote_them(timeout: float, shown: str) -> None:
    death = classify(-15, None, timeout=timeout)
    assert death.cause is Cause.TIMEOUT
    assert death.text.startswith(f"exceeded timeout_seconds={shown} (")


def test_a_cancellation_is_cancelled_in_the_plain_words() -> None:
    death = classify(-15, None, oom_kills=1, cancelled=True)
    assert death == Death(Cause.CANCELLED, "was terminated by signal SIGTERM (15)")


def test_a_timeout_wins_over_a_cancellation() -> None:
    assert classify(-9, None, timeout=5, cancelled=True).cause is Cause.TIMEOUT


def test_no_recorded_exit_status_is_lost() -> None:
    assert classify(None, None) == Death(Cause.LOST, "exited without recording an exit status")


def test_a_run_no_agent_watched_is_lost_even_with_an_error_to_show() -> None:
    death = classify(None, "the flow run's process ended while no worker watched it", lost=True)
    assert death == Death(Cause.LOST, "the flow run's process ended while no worker watched it")


@pytest.mark.parametrize("returncode", [None, 1, -9])
def test_an_error_string_is_what_the_user_sees(returncode: int | None) -> None:
    error = "was not started: its start could not be recorded (spool full?)"
    assert classify(returncode, error).text == error


def test_an_error_with_a_signal_is_still_a_signal() -> None:
    assert classify(-9, "could not record output").cause is Cause.SIGNAL


def test_exit_text_is_the_plain_words_without_a_cause() -> None:
    assert exit_text(0, None) == "exited with status code 0"
    assert exit_text(-2, None) == "was terminated by signal SIGINT (2)"
    assert exit_text(None, None) == "exited without recording an exit status"
    assert exit_text(1, "boom") == "boom"


def test_a_signal_without_a_name_is_said_once_by_its_number() -> None:
    assert signal_name(9) == "SIGKILL"
    assert signal_name(200) is None
    assert exit_text(-200, None) == "was terminated by signal 200"


def test_an_exit_status_the_shim_could_not_record_is_lost_whatever_the_error_says() -> None:
    error = "its supervising shim ended with -9 before the flow did"
    assert classify(None, error) == Death(Cause.LOST, error)


# -- the metric's label values -------------------------------------------------------------


def test_every_cause_is_a_lowercase_label_value() -> None:
    values = [c.value for c in Cause]
    assert len(set(values)) == len(values)
    assert all(v == v.lower() and v.replace("_", "").isalpha() for v in values)


def test_every_outcome_and_cause_pair_is_a_series_of_the_finished_counter() -> None:
    for outcome in Outcome:
        for cause in Cause:
            labels = {"outcome": outcome.value, "cause": cause.value}
            value = REGISTRY.get_sample_value("agent_flow_runs_finished_total", labels)
            assert value is not None, labels
    (family,) = (m for m in metrics.FINISHED.collect())
    pairs = {
        (s.labels["outcome"], s.labels["cause"])
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert pairs == {(o.value, c.value) for o in Outcome for c in Cause}


def test_every_outcome_and_cause_pair_starts_at_zero_in_a_fresh_process() -> None:
    code = (
        "import json\n"
        "from agent.core.causes import Cause\n"
        "from agent.core.states import Outcome\n"
        "from prometheus_client.registry import REGISTRY\n"
        "from agent.observe import metrics  # noqa: F401  (defines them)\n"
        "print(json.dumps({f'{o.value}/{c.value}': REGISTRY.get_sample_value(\n"
        "    'agent_flow_runs_finished_total', {'outcome': o.value, 'cause': c.value})\n"
        "    for o in Outcome for c in Cause}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    values = json.loads(out.stdout)
    assert values == {f"{o.value}/{c.value}": 0.0 for o in Outcome for c in Cause}
