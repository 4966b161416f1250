"""The user allowlist: add_safe_globals, safe_globals, get_safe_globals, clear_safe_globals.

Ports torch's test_safe_globals_for_weights_only and
test_safe_globals_context_manager_weights_only, plus what nbckpt promises
beyond torch: ``safe_globals`` restores exactly the previous state (torch's
removes entries that were already allowed before the block) and is confined to
the current thread / asyncio task.

Every check that a global "is allowed" is made by a real load, not only by
inspecting the list.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import io
import threading

import pytest

import nbckpt
from nbckpt.pickling.rebuild import Rebuilder
from nbckpt.pickling.unpickler import SafeUnpickler

MODULE = __name__

Point = collections.namedtuple("Point", ["x", "y"])


class Config:
    pass


def helper():
    return "helper ran"


class Outer:
    class Inner:
        pass


def point_checkpoint() -> bytes:
    buf = io.BytesIO()
    nbckpt.save({"p": Point(1, 2)}, buf)
    return buf.getvalue()


POINT_DATA = point_checkpoint()


def loads_point() -> bool:
    """True when a checkpoint holding a Point loads here, False when Point is refused."""
    try:
        out = nbckpt.load(io.BytesIO(POINT_DATA))
    except nbckpt.UnpicklingError as err:
        assert err.global_name == f"{MODULE}.Point"
        return False
    assert type(out["p"]) is Point and out["p"] == Point(1, 2)
    return True


def raw(module: str, name: str, tail: bytes = b".") -> bytes:
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + tail


def safe_loads(data: bytes):
    return SafeUnpickler(data, Rebuilder(None)).load()


class TestProcessWide:
    def test_add_get_clear(self):
        assert nbckpt.get_safe_globals() == []
        assert nbckpt.get_safe_globals_names() == []
        assert not loads_point()

        nbckpt.add_safe_globals([Point, Config])
        assert set(map(id, nbckpt.get_safe_globals())) == {id(Point), id(Config)}
        assert nbckpt.get_safe_globals_names() == sorted([f"{MODULE}.Point", f"{MODULE}.Config"])
        assert loads_point()

        nbckpt.add_safe_globals([Point])  # adding twice is harmless
        assert len(nbckpt.get_safe_globals()) == 2

        nbckpt.add_safe_globals(g for g in [helper])  # any iterable
        assert f"{MODULE}.helper" in nbckpt.get_safe_globals_names()

        nbckpt.clear_safe_globals()
        assert nbckpt.get_safe_globals() == []
        assert not loads_point()

    def test_names_use_qualname(self):
        nbckpt.add_safe_globals([Outer.Inner, print, collections.OrderedDict])
        assert nbckpt.get_safe_globals_names() == [
            "builtins.print", "collections.OrderedDict", f"{MODULE}.Outer.Inner"]

    def test_visible_from_other_threads(self):
        nbckpt.add_safe_globals([Point])
        seen = {}
        thread = threading.Thread(target=lambda: seen.update(ok=loads_point()))
        thread.start()
        thread.join(10)
        assert seen == {"ok": True}

    def test_refusal_message_names_the_calls(self):
        with pytest.raises(nbckpt.UnpicklingError) as info:
            nbckpt.load(io.BytesIO(POINT_DATA))
        message = str(info.value)
        assert f"nbckpt.add_safe_globals([{MODULE}.Point])" in message
        assert f"nbckpt.safe_globals([{MODULE}.Point])" in message


class TestTupleForm:
    def test_tuple_names_the_global_as_the_file_does(self):
        pkl = raw("legacy.location", "Point", b"K\x01K\x02\x86\x81.")
        with pytest.raises(nbckpt.UnpicklingError) as info:
            safe_loads(pkl)
        assert info.value.global_name == "legacy.location.Point"

        nbckpt.add_safe_globals([(Point, "legacy.location.Point")])
        assert nbckpt.get_safe_globals_names() == ["legacy.location.Point"]
        assert nbckpt.get_safe_globals() == [Point]
        out = safe_loads(pkl)
        assert type(out) is Point and out == Point(1, 2)
        # Only the given name is allowed, not the object's own one.
        assert not loads_point()

    def test_tuple_in_safe_globals(self):
        pkl = raw("renamed", "helper", b")R.")
        with nbckpt.safe_globals([(helper, "renamed.helper")]):
            assert safe_loads(pkl) == "helper ran"
        with pytest.raises(nbckpt.UnpicklingError, match="renamed.helper"):
            safe_loads(pkl)

    @pytest.mark.parametrize("entry, length", [((Point,), 1), ((Point, "a.b", "c"), 3), ((), 0)])
    def test_wrong_length(self, entry, length):
        with pytest.raises(ValueError, match=f"tuple of length {length}"):
            nbckpt.add_safe_globals([entry])
        with pytest.raises(ValueError, match=f"tuple of length {length}"):
            with nbckpt.safe_globals([entry]):
                pytest.fail("the block must not run")
        assert nbckpt.get_safe_globals() == []

    @pytest.mark.parametrize("name", [3, None, b"a.b", Point])
    def test_name_must_be_str(self, name):
        with pytest.raises(TypeError, match="dotted name as str, got"):
            nbckpt.add_safe_globals([(Point, name)])
        assert nbckpt.get_safe_globals() == []


class TestValidation:
    @pytest.mark.parametrize("entry", [3, None, "builtins.print", functools.partial(print), Config()],
                             ids=["int", "None", "str", "partial", "instance"])
    def test_objects_without_module_and_qualname(self, entry):
        with pytest.raises(TypeError, match="has no __module__/__qualname__"):
            nbckpt.add_safe_globals([entry])
        with pytest.raises(TypeError, match=r"pass \(object, 'module.name'\) instead"):
            with nbckpt.safe_globals([entry]):
                pytest.fail("the block must not run")

    def test_add_is_all_or_nothing(self):
        with pytest.raises(ValueError):
            nbckpt.add_safe_globals([Point, Config, (helper,)])
        assert nbckpt.get_safe_globals() == []
        assert not loads_point()


class TestSafeGlobalsContextManager:
    def test_is_temporary(self):
        assert not loads_point()
        with nbckpt.safe_globals([Point]):
            assert nbckpt.get_safe_globals_names() == [f"{MODULE}.Point"]
            assert nbckpt.get_safe_globals() == [Point]
            assert loads_point()
        assert nbckpt.get_safe_globals() == []
        assert not loads_point()

    def test_keeps_a_global_added_before_the_block(self):
        # torch's safe_globals removes it on exit; nbckpt restores the previous state.
        nbckpt.add_safe_globals([Point])
        with nbckpt.safe_globals([Point, Config]):
            assert loads_point()
        assert nbckpt.get_safe_globals_names() == [f"{MODULE}.Point"]
        assert loads_point()

    def test_nests(self):
        with nbckpt.safe_globals([Config]):
            with nbckpt.safe_globals([Point]):
                assert nbckpt.get_safe_globals_names() == sorted([f"{MODULE}.Config", f"{MODULE}.Point"])
                assert loads_point()
            assert nbckpt.get_safe_globals_names() == [f"{MODULE}.Config"]
            assert not loads_point()
            with nbckpt.safe_globals([Point]):
                with nbckpt.safe_globals([Point]):  # the same global twice
                    assert loads_point()
                assert loads_point()
            assert not loads_point()
        assert nbckpt.get_safe_globals() == []

    def test_restores_after_an_exception(self):
        with pytest.raises(KeyError):
            with nbckpt.safe_globals([Point]):
                assert loads_point()
                raise KeyError("boom")
        assert nbckpt.get_safe_globals() == []
        assert not loads_point()

    def test_add_inside_block_persists(self):
        with nbckpt.safe_globals([Config]):
            nbckpt.add_safe_globals([Point])
        assert nbckpt.get_safe_globals_names() == [f"{MODULE}.Point"]
        assert loads_point()

    def test_clear_inside_block_keeps_the_scoped_globals(self):
        nbckpt.add_safe_globals([Config])
        with nbckpt.safe_globals([Point]):
            nbckpt.clear_safe_globals()
            assert nbckpt.get_safe_globals_names() == [f"{MODULE}.Point"]
            assert loads_point()
        assert nbckpt.get_safe_globals() == []
        assert not loads_point()

    def test_confined_to_the_current_thread(self):
        inside = threading.Event()
        other_done = threading.Event()
        seen = {}

        def other():
            assert inside.wait(10)
            # While the main thread is inside its block, this thread does not see it.
            seen["loads"] = loads_point()
            seen["names"] = nbckpt.get_safe_globals_names()
            other_done.set()

        thread = threading.Thread(target=other)
        thread.start()
        try:
            with nbckpt.safe_globals([Point]):
                inside.set()
                assert other_done.wait(10)
                assert loads_point()  # still allowed here, after the other thread's load
        finally:
            inside.set()
            thread.join(10)
        assert seen == {"loads": False, "names": []}

    def test_other_thread_block_is_invisible_here(self):
        entered = threading.Event()
        release = threading.Event()
        seen = {}

        def other():
            with nbckpt.safe_globals([Point]):
                seen["inside"] = loads_point()
                entered.set()
                release.wait(10)

        thread = threading.Thread(target=other)
        thread.start()
        try:
            assert entered.wait(10)
            assert not loads_point()
            assert nbckpt.get_safe_globals() == []
        finally:
            release.set()
            thread.join(10)
        assert seen == {"inside": True}

    def test_confined_to_the_current_asyncio_task(self):
        async def main():
            inside = asyncio.Event()
            done = asyncio.Event()
            seen = {}

            async def scoped():
                with nbckpt.safe_globals([Point]):
                    inside.set()
                    await done.wait()
                    seen["scoped"] = loads_point()

            async def other():
                await inside.wait()
                seen["other"] = loads_point()
                done.set()

            await asyncio.gather(scoped(), other())
            return seen

        assert asyncio.run(main()) == {"scoped": True, "other": False}
        assert nbckpt.get_safe_globals() == []


class TestWhatAnEntryAllows:
    def test_function_may_be_called_only_when_allowed(self):
        pkl = raw(MODULE, "helper", b")R.")
        with pytest.raises(nbckpt.UnpicklingError, match=f"{MODULE}.helper"):
            safe_loads(pkl)
        nbckpt.add_safe_globals([helper])
        assert safe_loads(pkl) == "helper ran"

    def test_the_object_given_is_the_object_loaded(self):
        # The dotted name decides what the file may name; the object is what it gets.
        nbckpt.add_safe_globals([(Config, f"{MODULE}.Point")])
        out = safe_loads(raw(MODULE, "Point", b")\x81."))
        assert type(out) is Config


class TestMethodsBoundToClasses:
    """torch allowlists ``zoneinfo.ZoneInfo._unpickle``: a method bound to a class, reached in a
    protocol-2 pickle as ``getattr(ZoneInfo, "_unpickle")``. Such entries used to raise TypeError."""

    def test_named_by_their_class(self):
        import datetime
        import zoneinfo

        nbckpt.add_safe_globals([zoneinfo.ZoneInfo._unpickle, datetime.datetime.fromtimestamp,
                                 collections.OrderedDict.fromkeys, Outer.Inner])
        assert nbckpt.get_safe_globals_names() == [
            "collections.OrderedDict.fromkeys", "datetime.datetime.fromtimestamp",
            f"{MODULE}.Outer.Inner", "zoneinfo.ZoneInfo._unpickle"]
        assert zoneinfo.ZoneInfo._unpickle in nbckpt.get_safe_globals()

    def test_allowed_member_is_decided_by_the_dotted_name(self):
        import zoneinfo

        from nbckpt.pickling.allowlist import allowed_member

        assert allowed_member(zoneinfo.ZoneInfo, "_unpickle") == (False, None)
        with nbckpt.safe_globals([zoneinfo.ZoneInfo._unpickle]):
            allowed, obj = allowed_member(zoneinfo.ZoneInfo, "_unpickle")
            assert allowed and obj == zoneinfo.ZoneInfo._unpickle
            assert allowed_member(zoneinfo.ZoneInfo, "clear_cache") == (False, None)
            assert allowed_member(zoneinfo.ZoneInfo(key="UTC"), "_unpickle") == (False, None)  # not a class
            assert allowed_member(zoneinfo.ZoneInfo, 3) == (False, None)
        assert allowed_member(zoneinfo.ZoneInfo, "_unpickle") == (False, None)
        nbckpt.add_safe_globals([(Config, f"{MODULE}.Outer.Renamed")])
        assert allowed_member(Outer, "Renamed") == (True, Config)

    def test_tuple_form_for_a_bound_method(self):
        import zoneinfo

        entry = (zoneinfo.ZoneInfo._unpickle, "zoneinfo.ZoneInfo._unpickle")
        with nbckpt.safe_globals([entry]):
            assert nbckpt.get_safe_globals_names() == ["zoneinfo.ZoneInfo._unpickle"]
