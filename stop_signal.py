"""SIGTERM / SIGINT during a training run (train_gpt2.py).

    stop = StopSignal(master).install()     # handlers on; restore() puts the old ones back
    stop.in_loop = True                     # from here a first signal only asks to stop
    sig = stop.agreed(dist, device)         # each step, on every rank: None | "SIGTERM" | "SIGINT"

The first signal inside the loop is recorded: the loop finishes the step, saves a checkpoint and
exits 0. A second signal, or one before the loop started, raises KeyboardInterrupt at once.
Outside the main thread (in-process callers) no handler is installed.
"""
import signal
import sys

SIGNALS = (None, "SIGTERM", "SIGINT")   # signal values, in the order the ranks agree on


class StopSignal:
    def __init__(self, master):
        self.master = master          # rank 0 says what it received on stderr
        self.signal = None            # the first signal's name
        self.in_loop = False
        self._old = {}

    def install(self):
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._on_signal)
        except ValueError:            # not the main thread
            self.restore()
        return self

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _on_signal(self, signum, frame):
        name, second = signal.Signals(signum).name, self.signal is not None
        self.signal = self.signal or name
        if second or not self.in_loop:        # second signal, or still setting up: stop now
            raise KeyboardInterrupt
        if self.master:
            print(f"received {name}: finishing the current step, then saving a checkpoint",
                  file=sys.stderr, flush=True)

    def agreed(self, dist, device):
        """The signal any rank received (a collective: every rank calls it each step), or None."""
        return SIGNALS[dist.max_(SIGNALS.index(self.signal), device)]
