"""Run a checkpoint's pickle with the unpickler ``weights_only`` asks for."""

from __future__ import annotations

import warnings
from typing import Any, Callable

from .rebuild import Rebuilder
from .unpickler import FullUnpickler, SafeUnpickler

__all__ = ["run_unpickler"]


def run_unpickler(data: bytes, rebuilder: Rebuilder, *, weights_only: bool, encoding: str = "utf-8",
                  persistent_load: Callable[[Any], Any] | None = None, materializer: Any = None) -> Any:
    """Unpickle ``data``; then warn about what ``materializer`` had to change.

    ``weights_only=True`` uses :class:`SafeUnpickler`, which runs no code from
    the file; ``False`` uses :class:`FullUnpickler`, which runs the pickle.
    """
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
