"""Tests of diffax.preemption: SIGTERM waits for a step boundary only inside the steps."""

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
