"""load_kinds finds the built-in kinds and survives broken third-party entry points.

The broken plugins are real distributions: a ``*.dist-info`` directory with an
``entry_points.txt`` on ``sys.path``, which is all importlib.metadata reads.
"""

import logging
import sys
import textwrap

import pytest

from meshfed.mixer.handlers.api import ENTRY_POINT_GROUP, HandlerKind, load_kinds

BUILT_IN = {
    "denier",
    "listchecker",
    "memquota",
    "noop",
    "prometheus",
    "redisquota",
    "statsd",
    "stdio",
}


def test_built_in_kinds_are_entry_points():
    kinds = load_kinds()
    assert set(kinds) >= BUILT_IN
    for name in BUILT_IN:
        assert isinstance(kinds[name], HandlerKind)
        assert kinds[name].name == name


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    (tmp_path / "brokenplug.py").write_text(
        textwrap.dedent(
            """
            from meshfed.mixer.handlers.noop import NoopKind

            class Renamed(NoopKind):
                name = "something-else"

            class BadTemplates(NoopKind):
                name = "badtemplates"
                templates = frozenset({"nosuchtemplate"})

            class Exploding(NoopKind):
                @property
                def name(self):
                    raise RuntimeError("boom")

            class Impostor(NoopKind):
                name = "denier"

            renamed = Renamed()
            impostor = Impostor()
            bad_templates = BadTemplates()
            exploding = Exploding()
            not_a_kind = object()
            fine = NoopKind()
            """
        )
    )
    (tmp_path / "raisesonimport.py").write_text("raise ImportError('needs libfoo')\n")
    (tmp_path / "exitsonimport.py").write_text("import sys\nsys.exit(3)\n")
    dist = tmp_path / "brokenplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""
            [{ENTRY_POINT_GROUP}]
            missingmodule = brokenplug_nope:KIND
            missingattr = brokenplug:NOPE
            raises = raisesonimport:KIND
            exits = exitsonimport:KIND
            notakind = brokenplug:not_a_kind
            renamed = brokenplug:renamed
            badtemplates = brokenplug:bad_templates
            exploding = brokenplug:exploding
            denier = brokenplug:impostor
            noop = brokenplug:fine
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for mod in ("brokenplug", "raisesonimport", "exitsonimport"):
        sys.modules.pop(mod, None)


def test_broken_entry_points_are_logged_and_skipped(broken_plugins, caplog):
    caplog.set_level(logging.ERROR)
    kinds = load_kinds()
    assert set(kinds) >= BUILT_IN
    for bad in (
        "exits",
        "missingmodule",
        "missingattr",
        "raises",
        "notakind",
        "renamed",
        "badtemplates",
    ):
        assert bad not in kinds
    assert "exploding" not in kinds
    text = caplog.text
    assert "'raises'" in text and "needs libfoo" in text
    assert "'exits'" in text and "SystemExit(3)" in text
    assert "'renamed'" in text and "something-else" in text
    assert "nosuchtemplate" in text
    assert "'exploding'" in text and "boom" in text
    assert "'notakind'" in text and "not a HandlerKind" in text
    # a plugin claiming a built-in's name never shadows it, whatever the sys.path order
    assert "'denier' from brokenplug:impostor (brokenplug) skipped: the name is taken" in text
    assert type(kinds["denier"]).__module__ == "meshfed.mixer.handlers.denier"
    assert type(kinds["noop"]).__module__ == "meshfed.mixer.handlers.noop"
    assert kinds["noop"] is not sys.modules["brokenplug"].fine
