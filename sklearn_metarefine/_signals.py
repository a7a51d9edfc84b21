"""SIGTERM handled as Ctrl-C by the command line, so that the same cleanup runs."""

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (``kill``, ``timeout``, a service
    manager, a CI job cancelled): raised where it was, as Ctrl-C raises
    :class:`KeyboardInterrupt`, so that temporary files are removed and
    worker processes stopped as after Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def terminated_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` (in the main
    thread only, where Python runs signal handlers, and unless a handler set
    outside Python is in place); the handler before is restored after it."""
    # None: a handler set outside Python, which could not be set back.
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is None
    ):
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def stopped(stop):
    """How the command says it was stopped by ``stop``, a KeyboardInterrupt."""
    return "Terminated" if isinstance(stop, Terminated) else "Interrupted"


def stop_status(stop):
    """128 + the signal's number, as a shell reports a process it stopped."""
    return 143 if isinstance(stop, Terminated) else 130
