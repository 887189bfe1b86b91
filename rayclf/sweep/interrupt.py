"""How a sweep learns that Ctrl-C or SIGTERM stopped a round: ``run_trials`` raises ``SweepInterrupted``.

Racing, bayes and stages take decisions from a round's results; a round cut short must take none, so the
interrupt travels up as an exception instead of a normal return.
"""

from __future__ import annotations


class SweepInterrupted(Exception):
    """A round (a Tune run) was stopped by Ctrl-C or SIGTERM before every trial in it finished."""
