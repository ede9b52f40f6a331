"""One settings model: every entry point takes its defaults and checks from GenerationSettings."""

from __future__ import annotations

import argparse
import json

import pytest

from laugen_napari.cli import main
from laugen_napari.cli.generate import add_generate_options
from laugen_napari.settings import GenerationSettings, SettingsError, parse_numbers, setting_fields, settings_from_args


def _cli_defaults(command: str = "generate") -> argparse.Namespace:
    from laugen_napari.cli import build_parser

    parser = build_parser()
    sub = {"generate": ["generate", "i.nii", "m.nii", "-o", "x"], "dataset": ["dataset", "m.csv", "-o", "x"]}[command]
    return parser.parse_args(sub)


@pytest.mark.parametrize("command", ["generate", "dataset"])
def test_cli_defaults_equal_the_model_defaults(command):
    args = _cli_defaults(command)
    api = GenerationSettings()
    for f in setting_fields():
        cli = getattr(args, f.name)
        assert (tuple(cli) if isinstance(cli, list) else cli) == getattr(api, f.name), f.name


def test_every_field_has_a_cli_option_with_unit_and_help():
    parser = argparse.ArgumentParser()
    add_generate_options(parser)
    text = parser.format_help()
    for f in setting_fields():
        assert f.flag in text, f.flag
        assert f.param.help
        if f.param.unit:
            assert f"[{f.param.unit}]" in text


def test_transform_defaults_equal_the_model_defaults():
    import inspect

    from laugen_napari.transforms import LongitudinalAugment

    sig = inspect.signature(LongitudinalAugment.__init__)
    api = GenerationSettings()
    shared = [f.name for f in setting_fields() if f.name in sig.parameters]
    assert {"kind", "trajectory", "frames", "slope_range", "sigma_mm", "rate", "midpoint", "spread_mm"} <= set(shared)
    for name in shared:
        default = sig.parameters[name].default
        assert (tuple(default) if isinstance(default, list) else default) == getattr(api, name), name


@pytest.mark.parametrize("changes, field", [
    ({"frames": 1}, "frames"), ({"frames": 2.5}, "frames"), ({"frames": 100_000}, "frames"), ({"sigma_mm": 0}, "sigma_mm"),
    ({"sigma_mm": float("nan")}, "sigma_mm"), ({"slope_range": (0.5, 0.1)}, "slope_range"),
    ({"slope_range": (0.1, float("inf"))}, "slope_range"), ({"kind": "spiral"}, "kind"),
    ({"kind": "directional"}, "direction"), ({"kind": "directional", "direction": (0, 0, 0)}, "direction"),
    ({"kind": "gaussian"}, "center"), ({"trajectory": "custom"}, "values"),
    ({"trajectory": "custom", "values": (0, 1), "frames": 3}, "values"), ({"values": (0, 1)}, "values"),
    ({"rate": -1.0, "trajectory": "gompertz"}, "rate"), ({"labels": (0, 1)}, "labels"), ({"series": 0}, "series"),
    ({"device": "tpu"}, "device"), ({"label_interpolation": "cubic"}, "label_interpolation"),
])
def test_validation_names_the_field_not_a_flag(changes, field):
    with pytest.raises(SettingsError) as info:
        GenerationSettings(**changes).validate()
    message = str(info.value)
    assert message.startswith(f"{field}:"), message
    assert "--" not in message


def test_record_round_trip_reproduces_settings(tmp_path):
    from conftest import SAMPLE_IMAGE, SAMPLE_MASK

    settings = GenerationSettings(trajectory="gompertz", frames=3, slope_range=(0.3, 0.3), sigma_mm=3.0, labels=(2,),
                                  seed=4, device="cpu").validate()
    assert GenerationSettings.from_record(json.loads(json.dumps(settings.to_record()))) == settings
    out = tmp_path / "s"
    assert main(["generate", str(SAMPLE_IMAGE), str(SAMPLE_MASK), "-o", str(out), "--trajectory", "gompertz", "--frames", "3",
                 "--slope-range", "0.3", "0.3", "--sigma-mm", "3", "--labels", "2", "--seed", "4", "--device", "cpu",
                 "-q"]) == 0
    record = json.loads((out / "series.json").read_text())
    assert GenerationSettings.from_record(record["options"]) == settings
    with pytest.raises(SettingsError, match="^sigma: not a generation setting"):
        GenerationSettings.from_record({"sigma": 2}, strict=True)


def test_custom_frames_come_from_values():
    parser = argparse.ArgumentParser()
    add_generate_options(parser)
    s = settings_from_args(parser.parse_args(["--trajectory", "custom", "--values", "0, 0.5;1"]))
    assert s.frames == 3 and s.values == (0.0, 0.5, 1.0)


def test_gompertz_is_the_same_everywhere():
    s = GenerationSettings(trajectory="gompertz").validate()
    from laugen_napari.core.trajectory import DEFAULT_RATE

    assert s.effective_rate() == DEFAULT_RATE["gompertz"]
    assert s.trajectory_model().rate == DEFAULT_RATE["gompertz"]


@pytest.mark.parametrize("text, cast, expected", [
    ("0, 0.5;1 2", float, [0.0, 0.5, 1.0, 2.0]), ("1,2,", int, [1, 2]), (" 3 ", int, [3]), ((1, 2.0), int, [1, 2]),
])
def test_parse_numbers(text, cast, expected):
    assert parse_numbers(text, cast) == expected


@pytest.mark.parametrize("text, cast", [("1,x", float), ("nan", float), ("1.5", int), ("", float), ("inf", int)])
def test_parse_numbers_refuses_clearly(text, cast):
    with pytest.raises(SettingsError, match="^labels:"):
        parse_numbers(text, cast, name="labels")


def test_applies_follows_kind_and_trajectory():
    s = GenerationSettings()
    assert not s.applies("direction") and not s.applies("center") and not s.applies("values")
    assert s.replace(kind="gaussian").applies("spread_mm")
    custom = s.replace(trajectory="custom")
    assert custom.applies("values") and not custom.applies("slope_range") and not custom.applies("seed")
    assert s.replace(trajectory="gompertz").applies("rate") and not s.applies("rate")
    labels = {f.name: f.label for f in setting_fields()}
    assert labels["frames"] == "frames" and labels["sigma_mm"] == "sigma (mm)"
