"""Run a checkpoint's pickle with the unpickler ``weights_only`` asks for.

With ``weights_only=True``, a pickle that is a flat dict of tensors (what
``torch.save(model.state_dict())`` and :func:`nbckpt.save` of a dict of arrays
write) goes through :func:`.fastpath.load_flat_dict`, which makes the same calls
as :class:`SafeUnpickler` in one step per tensor; every other pickle, and any
that does not match exactly, runs in the VM.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from typing import Any, Callable

from .fastpath import load_flat_dict
from .rebuild import Rebuilder
from .unpickler import FullUnpickler, SafeUnpickler

__all__ = ["run_unpickler"]


def run_unpickler(data: bytes, rebuilder: Rebuilder, *, weights_only: bool, encoding: str = "utf-8",
                  persistent_load: Callable[[Any], Any] | None = None, materializer: Any = None) -> Any:
    """Unpickle ``data``; then warn about what ``materializer`` had to change.

    ``weights_only=True`` uses :class:`SafeUnpickler`, which runs no code from
    the file; ``False`` uses :class:`FullUnpickler`, which runs the pickle.
    """
    with gc_paused():
        result = load_flat_dict(data, rebuilder, persistent_load=persistent_load) if weights_only else None
        if result is None:
            unpickler_cls = SafeUnpickler if weights_only else FullUnpickler
            result = unpickler_cls(data, rebuilder, encoding=encoding, persistent_load=persistent_load).load()
    moved = getattr(materializer, "moved", None)
    if moved:
        listed = ", ".join(f"{saved} -> {target}" for saved, target in moved.items())
        warnings.warn(f"map_location='auto' moved storages that cannot be used here: {listed}",
                      stacklevel=4)
    raw = getattr(materializer, "raw_dtypes", None)
    if raw:
        warnings.warn(
            f"CuPy has no {', '.join(sorted(raw))}: those arrays hold their raw bits as unsigned "
            f"integers on the GPU (load them with map_location='cpu' for typed arrays)",
            stacklevel=4,
        )
    return result


@contextlib.contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector for the duration of the block.

    A load allocates one container per tensor and keeps them all: the
    collector would scan the growing heap again and again (measured: 30% of
    the CPU time of loading 20,000 arrays) and free nothing. Reference
    counting still frees everything as usual; cycles made meanwhile are
    collected at the next collection after the block.

        >>> with gc_paused():
        ...     gc.isenabled()
        False
        >>> gc.isenabled()
        True
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
