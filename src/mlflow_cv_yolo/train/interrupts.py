"""Ctrl-C and SIGTERM that are not lost.

Python raises KeyboardInterrupt wherever the main thread happens to be. When that is
inside a `__del__` or weakref callback (SQLAlchemy's event registry has one that runs
during training), the interpreter prints "Exception ignored in ..." and carries on,
so a session would train to the end with its Ctrl-C forgotten. The handler here also
records the signal, and training checks the record after every batch.
"""

from __future__ import annotations

import _thread
import ctypes
import signal
import sys
import threading

_requested = threading.Event()
_reason: list[str] = []  # why interrupt_main stopped the session, for the KeyboardInterrupt's message


def _handler(signum, frame) -> None:
    _requested.set()
    raise KeyboardInterrupt(_reason[0] if _reason else signal.Signals(signum).name)


def install() -> None:
    """Route SIGINT and SIGTERM (CI cancelling a job) to a KeyboardInterrupt that is
    remembered. A SIGINT the parent set to be ignored (`nohup`, a background job)
    stays ignored. Only the main thread may set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _handler)


def check(*_) -> None:
    """Raise KeyboardInterrupt if a signal arrived, even one whose first
    KeyboardInterrupt was swallowed. Takes any arguments: it is a trainer callback."""
    if _requested.is_set():
        raise KeyboardInterrupt("interrupted earlier; that KeyboardInterrupt was lost in a callback")


def interrupt_main(reason: str) -> None:
    """From another thread: stop the session as a Ctrl-C would (KeyboardInterrupt in
    the main thread, remembered for training's next batch check)."""
    _reason.append(reason)
    _requested.set()
    for sig in (signal.SIGINT, signal.SIGTERM):  # an ignored SIGINT (nohup) stays ignored
        if signal.getsignal(sig) not in (signal.SIG_IGN, signal.SIG_DFL, None):
            _thread.interrupt_main(sig)
            return


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies. An xdist worker whose
    controller was killed with SIGKILL then ends its run KILLED and exits, instead of
    training on for nobody."""
    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
