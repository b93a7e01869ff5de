"""config.py: dataclasses to and from JSON; tagged unions decoded by "kind"; the legacy stage form."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from openimagen.config import ConfigError, from_dict, kind_of, load_json, save_json, tagged_members, to_dict


@dataclass(frozen=True)
class Circle:
    kind: ClassVar[str] = "circle"
    radius: float = 1.0


@dataclass(frozen=True)
class Polygon:
    kind: ClassVar[str] = "polygon"
    corners: tuple[tuple[float, float], ...] = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    sides: int | tuple[int, ...] = 3


@dataclass(frozen=True)
class Scene:
    name: str
    shape: Circle | Polygon
    extra: Circle | Polygon | None = None
    others: tuple[Circle | Polygon, ...] = ()
    tags: tuple[str, ...] = field(default_factory=tuple)


def test_tagged_union_round_trips_through_json(tmp_path):
    scene = Scene("s", Polygon(corners=((0.0, 0.0), (2.0, 1.0)), sides=(1, 2)), None,
                  (Circle(0.5), Polygon()), ("a", "b"))
    data = to_dict(scene)
    assert data["shape"]["kind"] == "polygon" and data["others"][0] == {"kind": "circle", "radius": 0.5}
    assert data["extra"] is None and data["tags"] == ["a", "b"]
    back = from_dict(Scene, json.loads(json.dumps(data)))
    assert back == scene
    assert isinstance(back.shape.corners[1], tuple) and back.shape.sides == (1, 2)  # lists became tuples
    save_json(scene, tmp_path / "config.json")
    assert from_dict(Scene, load_json(tmp_path / "config.json")) == scene
    # a tagged class alone carries its tag too; from_dict takes the union itself
    assert from_dict(Circle, to_dict(Circle(2.0))) == Circle(2.0)
    assert from_dict(Circle | Polygon, {"kind": "circle", "radius": 3}) == Circle(3)


def test_unknown_or_missing_kind_names_the_valid_kinds():
    with pytest.raises(ConfigError, match=r"scene\.shape has unknown kind 'square'; valid kinds are \['circle', "
                                          r"'polygon'\]"):
        from_dict(Scene, {"name": "s", "shape": {"kind": "square"}}, where="scene")
    with pytest.raises(ConfigError, match=r"config\.shape has no \"kind\"; valid kinds are"):
        from_dict(Scene, {"name": "s", "shape": {"radius": 1}})
    with pytest.raises(ConfigError, match=r"shape='circle' must be a table with a \"kind\" .* e\.g\. "
                                          r"shape=\{\"kind\": \"circle\""):
        from_dict(Scene, {"name": "s", "shape": "circle"})
    with pytest.raises(ConfigError, match="kind 'polygon' does not describe Circle"):
        from_dict(Circle, {"kind": "polygon"})


def test_unknown_keys_and_missing_fields_are_config_errors():
    with pytest.raises(ConfigError, match=r"config\.shape: unknown key\(s\) \['radiuss'\] for Circle; valid keys "
                                          r"are \['radius', 'kind'\]"):
        from_dict(Scene, {"name": "s", "shape": {"kind": "circle", "radiuss": 1}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\] for Scene"):
        from_dict(Scene, {"name": "s", "shape": {"kind": "circle"}, "colour": "red"})
    with pytest.raises(ConfigError, match="name"):
        from_dict(Scene, {"shape": {"kind": "circle"}})


def test_tags_are_class_level_only():
    from openimagen.diffusion import ScheduleConfig

    assert kind_of(Circle) == "circle" and kind_of(Scene) is None
    assert kind_of(ScheduleConfig) is None  # `kind` is a field there, written like any other
    assert "kind" in to_dict(ScheduleConfig(kind="linear")) and tagged_members(Circle | None) is None

    @dataclass(frozen=True)
    class Untagged:
        x: int = 0

    with pytest.raises(TypeError, match="ClassVar `kind`"):
        tagged_members(Circle | Untagged)


def test_stage_config_unet_is_typed_and_legacy_folders_still_read():
    from openimagen.nn import PRESETS, EfficientUNetConfig, UNetConfig
    from openimagen.stage import StageConfig

    assert UNetConfig is EfficientUNetConfig  # the old name still imports
    from openimagen.nn.layout import TextLayoutConfig

    cfg = StageConfig(resolution=16, unet=PRESETS["tiny"](extras=(TextLayoutConfig(grid=4),)), noise_level=0.3)
    data = to_dict(cfg)
    assert data["unet"]["kind"] == "efficient" and "unet_kind" not in data
    assert data["unet"]["extras"] == [{"kind": "layout", "grid": 4, "layers": 2}]
    assert from_dict(StageConfig, data) == cfg and cfg.unet_kind == "efficient" and cfg.extras[0].grid == 4
    legacy = dict(data, unet={k: v for k, v in data["unet"].items() if k != "kind"}, unet_kind="efficient")
    assert from_dict(StageConfig, legacy) == cfg
    # older still: the text layout as two U-Net fields, the noise level as lowres_aug
    unet = {k: v for k, v in data["unet"].items() if k != "extras"}
    older = {k: v for k, v in data.items() if k != "noise_level"}
    assert from_dict(StageConfig, dict(older, lowres_aug=0.3, unet=dict(unet, layout_grid=4, layout_layers=2))) == cfg
    plain = StageConfig(resolution=16, unet=PRESETS["tiny"](), noise_level=0.3)
    assert from_dict(StageConfig, dict(older, lowres_aug=0.3, unet=dict(unet, layout_grid=0, layout_layers=2))) == plain
    with pytest.raises(ConfigError, match="'lowres_aug' is the old name of 'noise_level'"):
        from_dict(StageConfig, dict(data, lowres_aug=0.3))
    with pytest.raises(ConfigError, match="give the text layout once"):
        from_dict(StageConfig, dict(data, unet=dict(data["unet"], layout_grid=4)))
    with pytest.raises(ConfigError, match=r"unknown kind 'clip'; valid kinds are \['efficient', 'if', 'sd'\]"):
        from_dict(StageConfig, dict(data, unet=dict(data["unet"], kind="clip")))
    with pytest.raises(ConfigError, match="StageConfig.unet must be one of"):
        StageConfig(resolution=16, unet=data["unet"])  # a dict: decode it with from_dict first


def test_text_encoder_specs_round_trip_for_every_kind():
    from openimagen.text import (
        MiniLMEncoderConfig, PrecomputedEncoderConfig, T5EncoderConfig, TextEncoderConfig, text_encoder_config,
    )

    for cfg in (MiniLMEncoderConfig(), T5EncoderConfig("google/t5-v1_1-xxl", if_style=True, variant="fp16"),
                PrecomputedEncoderConfig(dim=8)):
        assert from_dict(TextEncoderConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    # a spec written before clean_caption and variant existed reads with their defaults
    old = {"kind": "t5", "name_or_path": "t5-small", "max_length": 77, "if_style": False}
    assert to_dict(text_encoder_config(old)) == dict(old, clean_caption=False, variant=None)
    assert to_dict(MiniLMEncoderConfig()) == {"kind": "minilm", "max_length": 32}  # cascade.json's shape
