"""Stopping a run on a signal (one process; several are tested in tests/test_multiprocess.py)."""

import signal

from nclm.train.stopping import StopSignals


def test_stop_signals_record_instead_of_killing_and_restore():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals()
    # raise_signal delivers to this (the main) thread before it returns; os.kill could hand the
    # signal to one of XLA's threads and the handler would run later
    signal.raise_signal(signal.SIGTERM)  # would end the process without the handler
    assert stop.signal == signal.SIGTERM and stop.should_stop(1)
    signal.raise_signal(signal.SIGINT)
    assert stop.signal == signal.SIGINT
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) == before
