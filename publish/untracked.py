"""Keep objects that can never be part of a reference cycle out of the cycle collector.

CPython's cycle collector walks every object it tracks: each young pass walks the new
ones, and each full pass everything not frozen (``app.heap``). It tracks every instance
of a class with ``__slots__`` or a ``__dict__``, whether or not it could ever be in a
cycle. For a tuple whose items are all atomic (strings, numbers) the collector sees
that itself and stops tracking it; for an instance it never does.

``untrack`` does for such an instance what the collector does for those tuples: it calls
the C API's ``PyObject_GC_UnTrack`` through ``ctypes.pythonapi``, a ``PyDLL``, so the
call holds the GIL throughout and no collection in another thread can run beside it. It
is for immutable values whose fields hold only objects that cannot refer back to them
(``str``, ``int``, ``None``, enum members), so no cycle can ever pass through them and
reference counting alone frees them. The cost of a mistake is a leak, never a crash: an
untracked object in a cycle is just never collected. The one user is
``publish.position.Position``. A server holding 100,000 open positions otherwise has
100,000 more objects for the collector: walked by young passes until the heap keeper
(``app.heap``) freezes them, and then by every whole-heap reclaim, which fell due each
time the positions doubled (43 and 69 ms of a held event loop at 102,000 and 179,000
frozen objects in the order-entry server on the 2-core benchmark VM, freeing nothing).

Where the interpreter has no ``ctypes.pythonapi`` (not CPython) it does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _untracker() -> Callable[[object], None]:
    api = getattr(ctypes, "pythonapi", None)
    if api is None:
        return lambda _: None
    # A prototype (PYFUNCTYPE: the GIL held, as for pythonapi) rather than the library's
    # function with ``argtypes`` set: the same call, half the cost (316 against 643 ns
    # a call on the benchmark VM).
    prototype = ctypes.PYFUNCTYPE(None, ctypes.py_object)
    return prototype(("PyObject_GC_UnTrack", api))


untrack: Callable[[object], None] = _untracker()
"""Stop the cycle collector from tracking ``obj`` (a no-op if it is not tracked). O(1):
a C call, ~0.3 µs through ctypes."""
