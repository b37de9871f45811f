"""Run-directory helpers shared by the training loops."""

import os
import signal

from nclm.train.run_dir import StopSignals


def test_stop_signals_record_instead_of_killing_and_restore():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals()
    os.kill(os.getpid(), signal.SIGTERM)  # would end the process without the handler
    assert stop.signal == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal == signal.SIGINT
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) == before
