"""Config schema: YAML loading, typed validation, suggestions, overrides and path resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ROOT, load_config

from models.detectors.vae.params import VAEParams
from pipeline.core.errors import ConfigError
from pipeline.core.schema import Config


def write_cfg(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def config_error(tmp_path: Path, text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(write_cfg(tmp_path, text), overrides)
    return str(exc.value)


def test_minimal_valid_config_loads_with_defaults(tmp_path):
    path = write_cfg(tmp_path, "model: {name: vae3d}\n")
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert isinstance(cfg.model, VAEParams)
    assert cfg.model.name == "vae3d"
    assert cfg.model.latent_dim == VAEParams().latent_dim
    assert cfg.train.epochs == 50 and cfg.train.patch_size == 28
    assert cfg.extract.hu_window == (-1000.0, 400.0)
    assert cfg.source == path.resolve()


def test_full_sections_are_typed(tmp_path):
    cfg = load_config(write_cfg(tmp_path, """
run: {seed: 7, device: cpu}
train: {epochs: 3, lr: 1, batch_size: 4}
extract: {hu_window: [-900, 200], cube_size: 32}
model: {name: vae2d, latent_dim: 8, channels: [4, 8], strides: [2, 2]}
"""))
    assert cfg.run.seed == 7 and cfg.run.device == "cpu"
    assert cfg.train.epochs == 3
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0  # int accepted for float, converted
    assert cfg.extract.hu_window == (-900.0, 200.0)
    assert all(isinstance(v, float) for v in cfg.extract.hu_window)
    assert cfg.model.name == "vae2d" and cfg.model.latent_dim == 8 and cfg.model.channels == [4, 8]


def test_unknown_top_level_key(tmp_path):
    msg = config_error(tmp_path, "model: {name: vae3d}\ntrian: {epochs: 5}\n")
    assert "trian" in msg
    assert "unknown key" in msg
    assert "'train'" in msg  # nearest valid section suggested


CONFIG_ERRORS = [
    # (YAML body, substrings the one error message must contain)
    ("train: {epoch: 5}\n", ["train.epoch", "did you mean 'epochs'", "cfg.yaml"]),
    ("train: {epochs: five}\n", ["train.epochs", "integer"]),
    ('train: {epochs: "5"}\n', ["train.epochs"]),
    ("train: {epochs: true}\n", ["train.epochs"]),  # a bool is not an int
    ("split: {method: kfld}\n", ["split.method", "'kfold'"]),
    ("score: {mc_sample: 3}\ntrain: {epoch: 5}\n", ["train.epoch", "score.mc_sample"]),  # all errors reported
]
MODEL_ERRORS = [
    ("model: {name: vae3}\n", ["model.name", "did you mean 'vae3d'", "vae2d"]),
    ("model: {name: vae3d, latnt_dim: 8}\n", ["model.latnt_dim", "did you mean 'latent_dim'"]),
    ("model: {name: vae3d, channels: [4, eight], strides: [2, 2]}\n", ["model.channels[1]"]),
]


@pytest.mark.parametrize("body, expected", [("model: {name: vae3d}\n" + b, e) for b, e in CONFIG_ERRORS] + MODEL_ERRORS)
def test_config_errors_name_the_key_and_suggest(tmp_path, body, expected):
    msg = config_error(tmp_path, body)
    for part in expected:
        assert part in msg, (part, msg)


def test_set_overrides_take_effect_with_types(tmp_path):
    path = write_cfg(tmp_path, "model: {name: vae3d}\ntrain: {epochs: 50}\n")
    cfg = load_config(path, ["train.epochs=5", "extract.hu_window=[-900, 300]", "model.latent_dim=12", "run.device=cpu"])
    assert cfg.train.epochs == 5 and isinstance(cfg.train.epochs, int)
    assert cfg.extract.hu_window == (-900.0, 300.0)
    assert all(isinstance(v, float) for v in cfg.extract.hu_window)
    assert cfg.model.latent_dim == 12
    assert cfg.run.device == "cpu"


def test_set_overrides_are_validated(tmp_path):
    path = write_cfg(tmp_path, "model: {name: vae3d}\n")
    with pytest.raises(ConfigError, match=r"train\.epoch\b.*epochs"):
        load_config(path, ["train.epoch=5"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["train.epochs"])
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(path, ["train.epochs=five"])


def test_relative_paths_resolve_against_config_folder(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "configs" / "sub"
    cfg_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write_cfg(cfg_dir, "model: {name: vae3d}\ningest: {input: ../data/dicom}\nextract: {nodules: nodules.csv}\n")
    monkeypatch.chdir(elsewhere)
    assert Path(os.getcwd()).resolve() == elsewhere.resolve()
    cfg = load_config(path)
    assert cfg.ingest.input == (tmp_path / "configs" / "data" / "dicom").resolve()
    assert cfg.extract.nodules == (cfg_dir / "nodules.csv").resolve()
    # also when the config path itself is given relative to the cwd
    monkeypatch.chdir(tmp_path)
    cfg2 = load_config(Path("configs/sub/cfg.yaml"))
    assert cfg2.ingest.input == cfg.ingest.input


def test_absolute_path_is_kept(tmp_path):
    target = tmp_path / "abs" / "dicom"
    cfg = load_config(write_cfg(tmp_path, f"model: {{name: vae3d}}\ningest: {{input: '{target}'}}\n"))
    assert cfg.ingest.input == target


def test_strides_must_divide_patch_size(tmp_path):
    msg = config_error(tmp_path, "model: {name: vae3d, channels: [4, 8, 16], strides: [2, 2, 2]}\ntrain: {patch_size: 28}\n")
    assert "model.strides" in msg
    assert "28" in msg
    # the same strides are fine for a divisible patch size
    cfg = load_config(write_cfg(tmp_path, "model: {name: vae3d, channels: [4, 8, 16], strides: [2, 2, 2]}\n"
                                          "train: {patch_size: 24}\nextract: {cube_size: 32}\n", "ok.yaml"))
    assert cfg.model.strides == [2, 2, 2]


def test_channels_strides_length_mismatch(tmp_path):
    msg = config_error(tmp_path, "model: {name: vae3d, channels: [4, 8], strides: [2, 2, 1]}\n")
    assert "model.strides" in msg and "model.channels" in msg


def test_cross_check_hu_window_order(tmp_path):
    msg = config_error(tmp_path, "model: {name: vae3d}\nextract: {hu_window: [400, -1000]}\n")
    assert "extract.hu_window" in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write_cfg(tmp_path, "train: {epochs: [1\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write_cfg(tmp_path, "- a\n- b\n", "list.yaml"))


@pytest.mark.parametrize("name, model", [("ct_nodules.yaml", "blob3d"), ("ct_nodules_vae.yaml", "vae3d")])
def test_bundled_config_validates(name, model):
    path = ROOT / "configs" / name
    cfg = load_config(path)
    assert cfg.model.name == model
    assert cfg.train.patch_size == 28
    assert cfg.ingest.input == (ROOT / "sample_data" / "ct" / "LIDC-IDRI-0063").resolve()
    assert cfg.ingest.input.is_dir()
    assert cfg.extract.nodules.is_file()


def test_a_parameter_added_later_leaves_fingerprints_alone_at_its_default():
    """``model.trim`` (added after runs existed): at its default it is not in the section that stage
    fingerprints hash, so finished runs stay finished; set, it is; the resolved config always shows it."""
    base = ["model.name=synth2d", "model.channels=[8,16]", "model.strides=[2]"]
    cfg = load_config("configs/xray.yaml", base)
    assert "trim" not in cfg.section("model") and cfg.to_dict()["model"]["trim"] == 0.0
    assert cfg.section("model")["channels"] == [8, 16]
    assert load_config("configs/xray.yaml", base + ["model.trim=0.1"]).section("model")["trim"] == 0.1
