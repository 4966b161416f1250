"""Location tags and ``map_location``: where each loaded storage goes.

Tags are torch's: ``cpu``, ``cuda`` (the current GPU) and ``cuda:N``. Host
arrays are NumPy arrays; ``cuda:N`` arrays are CuPy arrays on GPU N.
``map_location`` takes every form ``torch.load`` accepts, plus ``"auto"``:

- ``None``: each storage returns to the tag it was saved with;
- a string or anything whose ``str()`` is a tag (``torch.device("cpu")``):
  every storage goes there;
- a dict ``{"cuda:1": "cuda:0"}``: listed tags are remapped, others stay;
- a callable ``fn(storage, location)``: gets each storage as a host array and
  its saved tag, returns the array to use (or ``None`` for the default);
- ``"auto"``: the saved device when it is usable here, else the host.

    >>> DeviceMap.parse({"cuda:0": "cpu"}).target("cuda:0")
    'cpu'
    >>> DeviceMap.parse(None).target("cpu")
    'cpu'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import DeviceError
from .text import safe_repr

__all__ = ["DeviceMap", "parse_tag", "check_saved_tag", "devices", "canonical_tag", "parse_map_text", "MAP_TEXT_CHOICES"]

#: What :func:`parse_map_text` accepts, for help and error messages.
MAP_TEXT_CHOICES = ("cpu, cuda, cuda:N, auto (the saved device when usable, else cpu), or SOURCE=TARGET pairs "
                    "such as cuda:1=cuda:0,cuda:0=cpu")

# ASCII digits only (``\d`` also matches other scripts' digits), and few of them: int() of
# more than 4300 digits raises ValueError, and no machine has 10**9 GPUs.
_TAG = re.compile(r"(cpu|cuda|meta)(?::([0-9]{1,9}))?")
#: What torch writes as a storage's location: a backend name and an optional index
#: (``cuda:1``, ``xla:0``, ``privateuseone:0``). Anything else is not a device.
_SAVED_TAG = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(?::[0-9]{1,9})?")


def parse_tag(tag: str) -> tuple[str, int | None]:
    """``("cuda", 1)`` for ``"cuda:1"``; DeviceError for tags nbckpt cannot place.

        >>> parse_tag("cuda:1"), parse_tag("cpu")
        (('cuda', 1), ('cpu', None))
    """
    match = _TAG.fullmatch(tag.strip()) if isinstance(tag, str) else None
    if match is None:
        shown = safe_repr(tag, 80)  # a tag from a file may be 5000 digits long or hold ESC
        raise DeviceError(
            f"nbckpt cannot place arrays on {shown}: it loads to 'cpu' (NumPy) and 'cuda' "
            f"or 'cuda:N' (CuPy). Pass map_location='cpu' to load everything to the host.",
            location=tag[:100] if isinstance(tag, str) else shown,
        )
    kind, index = match.group(1), match.group(2)
    return kind, int(index) if index is not None else None


def check_saved_tag(location: str) -> None:
    """DeviceError unless ``location`` (a storage's saved location) is a device tag as torch writes it.

    The listing, ``verify`` and ``open`` check every location here, so a file whose
    location no device can have (``"cuda:"`` and 5000 digits, control characters) is
    refused before an array of it is read, whatever ``map_location`` is. Tags of
    other backends (``xla:0``, ``mps``) pass: ``map_location`` may send them to the host.

        >>> check_saved_tag("xla:0")
        >>> try:
        ...     check_saved_tag("cuda:" + "9" * 5000)
        ... except DeviceError as err:
        ...     print(str(err)[:30])
        a storage is saved on 'cuda:99
    """
    if type(location) is not str or _SAVED_TAG.fullmatch(location) is None:
        shown = safe_repr(location, 80)
        raise DeviceError(
            f"a storage is saved on {shown}, which is not a device tag (a backend name and an index of "
            f"at most 9 digits): the file is corrupt or forged", location=location[:100] if type(location) is str else shown)


def canonical_tag(tag: str) -> str:
    """The tag as nbckpt writes it (``cpu:0`` -> ``cpu``)."""
    kind, index = parse_tag(tag)
    if kind == "cpu" or index is None:
        return kind
    return f"{kind}:{index}"


def parse_map_text(text: str) -> str | dict[str, str]:
    """A ``map_location`` written as text (command lines, magics): a tag, ``"auto"``, or
    ``SOURCE=TARGET,SOURCE=TARGET``. ValueError for anything else.

        >>> parse_map_text("cuda:0=cpu, cuda:1=cuda:0"), parse_map_text("auto")
        ({'cuda:0': 'cpu', 'cuda:1': 'cuda:0'}, 'auto')
    """
    try:
        if "=" in text:
            mapping = {}
            for part in text.split(","):
                source, sep, target = (s.strip() for s in part.partition("="))
                if not (sep and source and target):
                    raise ValueError(part)
                mapping[canonical_tag(source)] = canonical_tag(target)
            return mapping
        text = text.strip()
        return "auto" if text == "auto" else canonical_tag(text)
    except (DeviceError, ValueError):
        raise ValueError(f"{text}: not a device or device map. Give {MAP_TEXT_CHOICES}.") from None


def devices() -> list[str]:
    """The devices arrays can be loaded onto here: ``["cpu"]`` plus each usable GPU.

        >>> devices()[0]
        'cpu'
    """
    from .backends import gpu_count

    return ["cpu"] + [f"cuda:{i}" for i in range(gpu_count())]


@dataclass(frozen=True)
class DeviceMap:
    """A parsed ``map_location``. ``function`` is set for the callable form."""

    mode: str  # "saved", "fixed", "dict", "callable" or "auto"
    fixed: str | None = None
    mapping: tuple[tuple[str, str], ...] = ()
    function: Callable[[Any, str], Any] | None = None

    @classmethod
    def parse(cls, map_location: Any) -> "DeviceMap":
        """Validate ``map_location`` once, before any byte is read."""
        if map_location is None:
            return cls("saved")
        if isinstance(map_location, dict):
            pairs = []
            for source, target in map_location.items():
                pairs.append((str(source), canonical_tag(str(target))))
            return cls("dict", mapping=tuple(pairs))
        if isinstance(map_location, (str, bytes)):
            text = map_location.decode() if isinstance(map_location, bytes) else map_location
            if text == "auto":
                return cls("auto")
            return cls("fixed", fixed=canonical_tag(text))
        if callable(map_location):
            return cls("callable", function=map_location)
        # torch.device and other device-like objects: their str() is the tag.
        return cls("fixed", fixed=canonical_tag(str(map_location)))

    def target(self, saved: str) -> str:
        """The tag a storage saved at ``saved`` goes to (not for the callable form)."""
        if self.mode == "fixed":
            return self.fixed  # type: ignore[return-value]
        if self.mode == "dict":
            for source, target in self.mapping:
                if source == saved:
                    return target
        return saved
