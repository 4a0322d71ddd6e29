"""Tests of diffax.preemption: SIGTERM and Ctrl-C wait for a step boundary only inside the steps."""

import os
import signal

import pytest

from diffax import preemption


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


def test_inside_the_steps_sigterm_waits_for_should_stop():
    with preemption.PreemptionGuard() as guard:
        with pytest.raises(preemption.Preempted, match="outside the training steps"):
            with guard.deferred():
                assert not guard.should_stop(1)
                _sigterm()
                assert guard.should_stop(2)  # The loop saves at step 2 and raises itself.
    # Had the loop not raised, leaving the steps raises: evaluation never starts.


def test_outside_the_steps_sigterm_raises_at_once():
    with preemption.PreemptionGuard():
        with pytest.raises(preemption.Preempted) as raised:
            _sigterm()
        assert raised.value.step is None


def test_a_sigterm_before_the_steps_stops_them_from_starting():
    with preemption.PreemptionGuard() as guard:
        with pytest.raises(preemption.Preempted):
            _sigterm()
        with pytest.raises(preemption.Preempted):
            with guard.deferred():
                pytest.fail("the steps must not start after a SIGTERM")


def test_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionGuard():
        assert signal.getsignal(signal.SIGTERM) != before
    assert signal.getsignal(signal.SIGTERM) == before


def _sigint():
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_inside_the_steps_waits_for_should_stop_and_exits_130():
    with preemption.PreemptionGuard() as guard:
        with pytest.raises(preemption.Preempted, match="outside the training steps"):
            with guard.deferred():
                assert not guard.should_stop(1)
                _sigint()  # No KeyboardInterrupt: the loop saves at the next step boundary.
                assert guard.should_stop(2)
                stopped = guard.stopped(2)  # What the loop raises after saving step 2.
    assert stopped.exit_code == preemption.INTERRUPTED_EXIT_CODE == 130
    assert str(stopped) == "Interrupted (Ctrl-C): checkpoint saved at step 2; rerun to resume."
    assert preemption.Preempted(2).exit_code == preemption.PREEMPTED_EXIT_CODE == 75


def test_a_second_ctrl_c_stops_at_once_without_saving():
    with preemption.PreemptionGuard() as guard:
        with pytest.raises(KeyboardInterrupt):
            with guard.deferred():
                _sigint()
                _sigint()
                pytest.fail("the second Ctrl-C must stop at once")


def test_outside_the_steps_ctrl_c_stops_at_once_with_the_checkpoints_unchanged():
    with preemption.PreemptionGuard():
        with pytest.raises(preemption.Preempted) as raised:
            _sigint()
    assert raised.value.step is None and raised.value.exit_code == 130
    assert "checkpoints unchanged" in str(raised.value)


def test_the_previous_sigint_handler_comes_back():
    before = signal.getsignal(signal.SIGINT)
    with preemption.PreemptionGuard():
        assert signal.getsignal(signal.SIGINT) != before
    assert signal.getsignal(signal.SIGINT) == before
