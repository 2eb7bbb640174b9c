"""Thread safety of pipelines and sessions: each holds a re-entrant lock while it works.

A pipeline's modules, its scheduler's step state and its per-call attributes (guidance, timestep, interrupt) are
shared by every call, so calls on one pipeline run one at a time: two threads editing two sessions on one pipeline
wait for each other instead of racing. A session's edit, undo, choose, branch and save likewise never interleave.
The locks live outside the objects, so pipelines and sessions stay copyable and picklable.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref

_LOCKS: "weakref.WeakKeyDictionary[object, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def lock_of(owner: object) -> threading.RLock:
    """The re-entrant lock of ``owner`` (created on first use, dropped with ``owner``)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(owner)
        if lock is None:
            lock = _LOCKS[owner] = threading.RLock()
        return lock


def serialised(*attributes: str):
    """Decorates a method to run holding the lock of ``self``, then those of the attributes named (always in this
    order, so that two methods never wait for each other's locks)."""

    def decorate(method):
        @functools.wraps(method)
        def locked(self, *args, **kwargs):
            with contextlib.ExitStack() as held:
                for owner in (self, *(getattr(self, name) for name in attributes)):
                    held.enter_context(lock_of(owner))
                return method(self, *args, **kwargs)

        return locked

    return decorate
