"""The one decision: may a ``weights_only`` load use global ``module.name``, and why?

Both the safe unpickler (:class:`~nbckpt.pickling.unpickler.SafeUnpickler`,
when it meets a GLOBAL) and the static scan (:func:`~nbckpt.pickling.scan.scan_pickle`,
which reports what a load would meet) call :func:`decide`; neither decides on
its own, so a scan never says "allowed" for what a load refuses, or the reverse.

The order is fixed:

1. ``builtins.getattr`` is *restricted*: protocol 2 names a nested class as
   ``getattr(Outer, "Nested")``, and only that use is allowed (an allowlisted
   member of an allowlisted class; see ``SafeUnpickler.restricted_getattr``).
2. Blocked globals (:func:`nbckpt.pickling.allowlist.blocked_reason`) are
   refused even when a user allowlisted them.
3. nbckpt's own allowlist (the rebuild functions of :mod:`.rebuild`).
4. The user's safe globals (``add_safe_globals`` / ``safe_globals``).
5. Everything else is refused.

    >>> from nbckpt.pickling.rebuild import Rebuilder
    >>> ours = Rebuilder(None).globals
    >>> decide("collections", "OrderedDict", ours).reason
    'nbckpt allowlist'
    >>> d = decide("os", "system", ours)
    >>> d.allowed, d.reason
    (False, "blocked: module 'os' can run code or reach the system")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from . import allowlist
from .rebuild import canonical_name

__all__ = ["Decision", "decide", "RESTRICTED_GETATTR"]

#: The one global allowed only for one use (fetching an allowlisted nested class).
RESTRICTED_GETATTR = "builtins.getattr"


@dataclass(frozen=True)
class Decision:
    """Whether ``name`` loads with ``weights_only=True``; ``kind`` is where the answer came from.

    ``kind`` is one of ``"restricted"``, ``"blocked"``, ``"nbckpt"``, ``"user"``,
    ``"unknown"``; ``obj`` is the object a load uses (None when refused or restricted).
    """

    name: str
    allowed: bool
    reason: str
    kind: str
    obj: Any = field(default=None, compare=False, repr=False)


def decide(module: str, name: str, ours: Mapping[str, Any]) -> Decision:
    """The decision for GLOBAL ``module name``; ``ours`` is nbckpt's allowlist (``Rebuilder.globals``)."""
    dotted = canonical_name(module, name)
    if dotted == RESTRICTED_GETATTR:
        return Decision(dotted, True, "restricted: only fetches an allowlisted nested class of an "
                                      "allowlisted class", "restricted")
    mod, _, short = dotted.rpartition(".")
    blocked = allowlist.blocked_reason(mod, short)
    if blocked is not None:
        return Decision(dotted, False, f"blocked: {blocked}", "blocked")
    if dotted in ours:
        return Decision(dotted, True, "nbckpt allowlist", "nbckpt", ours[dotted])
    allowed, obj = allowlist.user_global(dotted)
    if allowed:
        return Decision(dotted, True, "user allowlist (add_safe_globals / safe_globals)", "user", obj)
    return Decision(dotted, False, "not allowlisted", "unknown")
