"""The napari manifest: one file (the packaged napari.yaml is the root one), valid for npe2, with
categories, and every command importable and of the kind its contribution needs."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import laugen_napari

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = Path(laugen_napari.__file__).parent / "napari.yaml"


def test_one_manifest_file():
    root = ROOT / "napari.yaml"
    assert root.is_file() and PACKAGED.is_file()
    assert root.read_bytes() == PACKAGED.read_bytes()
    # a link, not a copy: the two can never drift apart again
    assert PACKAGED.is_symlink() and os.path.samefile(root, PACKAGED)


def test_npe2_validates_the_manifest_with_categories():
    from npe2 import PluginManifest
    from npe2.manifest.schema import Category

    manifest = PluginManifest.from_file(PACKAGED)
    manifest.validate_imports()  # every python_name resolves
    assert manifest.name == "laugen-napari"
    assert {str(c) for c in manifest.categories} == {"Image Processing", "Segmentation", "Utilities"}
    assert all(isinstance(c, Category) for c in manifest.categories)
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"LAUGEN augment", "LAUGEN export", "LAUGEN segment", "LAUGEN train"}


def test_the_installed_entry_point_finds_the_manifest():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "laugen-napari"]
    assert len(eps) == 1
    module, _, resource = eps[0].value.partition(":")
    path = Path(importlib.import_module(module).__file__).parent / resource
    assert path.read_bytes() == (ROOT / "napari.yaml").read_bytes()


def test_widget_commands_are_dock_classes():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(PACKAGED)
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    for contribution in manifest.contributions.widgets:
        module, _, name = commands[contribution.command].partition(":")
        obj = getattr(importlib.import_module(module), name)
        assert callable(obj), contribution.command
