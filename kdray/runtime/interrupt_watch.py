"""`InterruptWatch`, the Tune callback of `kdray.runtime.interrupts.StudyGuard`. A module-level,
stateless class: Tune pickles its callbacks into the experiment state, and `Tuner.restore`
brings back this class by reference, so it always reads the live guard of the running study."""

from __future__ import annotations

import signal
import threading

from ray.tune import Callback

from kdray.runtime import interrupts


class InterruptWatch(Callback):
    """Chains the active StudyGuard in front of Tune's SIGINT handler when a Tune run starts,
    and keeps the guard told of the trials and their statuses."""

    def setup(self, **info):
        guard = interrupts._ACTIVE
        if guard is None or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGINT,
                      interrupts.guarded_handler(guard, signal.getsignal(signal.SIGINT)))

    def on_step_begin(self, iteration, trials, **info):
        if interrupts._ACTIVE is not None:
            interrupts._ACTIVE._trials = list(trials)
