"""Image folders without a labels CSV (``ingest.images.labels_from: folders``, the ImageFolder /
Kermany chest X-ray layout), ``patient_regex``, and the config checks of both."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import validate
from PIL import Image

from pipeline.core.errors import ConfigError, StageError
from pipeline.runner import run_stages
from preprocessing.labels import patient_from_name, read_labels

KERMANY = r"^(person\d+|(?:NORMAL2-)?IM-\d+)"


def _png(path, seed: int = 0, size=(12, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8)).save(path)


def _tree(root, rels) -> None:
    for k, rel in enumerate(rels):
        _png(root / rel, seed=k)


def _cfg(tmp_path, images: dict, **split):
    raw = {"ingest": {"format": "images", "input": str(tmp_path / "img"),
                      "images": {"labels_from": "folders", "normal_classes": ["NORMAL"], **images}},
           "extract": {"cube_size": 8, "normalise": "minmax"}, "train": {"patch_size": 8}, "model": {"name": "pca2d"}}
    if split:
        raw["split"] = split
    return validate(raw, base_dir=tmp_path)


def test_split_level_gives_classes_labels_and_source_split(tmp_path):
    _tree(tmp_path / "img", ["train/NORMAL/b.png", "train/NORMAL/a.PNG", "Validation/PNEUMONIA/c.jpeg", "TEST/PNEUMONIA/d.png",
                             "test/NORMAL/e.png", "test/.hidden/f.png", "train/NORMAL/.g.png"])
    (tmp_path / "img" / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    table, errors, counts = read_labels(_cfg(tmp_path, {"extensions": [".png", ".jpeg"]}))
    assert errors == [] and counts == {"rows": 5, "left_out_by_label": 0}
    assert table["sample_id"].tolist() == ["TEST/PNEUMONIA/d.png", "Validation/PNEUMONIA/c.jpeg", "test/NORMAL/e.png",
                                           "train/NORMAL/a.PNG", "train/NORMAL/b.png"]
    assert table["source_split"].tolist() == ["test", "val", "test", "train", "train"]
    assert table["class"].tolist() == ["PNEUMONIA", "PNEUMONIA", "NORMAL", "NORMAL", "NORMAL"]
    assert table["label"].tolist() == [1, 1, 0, 0, 0]
    assert (table["patient_id"] == table["sample_id"]).all() and table["file"].map(lambda f: f.is_file()).all()


def test_without_split_level_source_split_is_empty_and_other_classes_are_left_out(tmp_path):
    _tree(tmp_path / "img", ["NORMAL/a.png", "PNEUMONIA/b.png", "normal/c.png", "COVID/d.png"])
    table, errors, counts = read_labels(_cfg(tmp_path, {"anomaly_classes": ["PNEUMONIA"]}))
    assert errors == [] and counts["left_out_by_label"] == 2  # 'normal' is not 'NORMAL'; COVID is neither class
    assert table[["sample_id", "class", "label", "source_split"]].values.tolist() == [["NORMAL/a.png", "NORMAL", 0, ""],
                                                                                     ["PNEUMONIA/b.png", "PNEUMONIA", 1, ""]]


def test_unknown_folder_and_missing_class_folder_are_per_file_errors(tmp_path):
    _tree(tmp_path / "img", ["NORMAL/a.png", "PNEUMONIA/b.png", "Pneumonia/c.png", "loose.png"])
    table, errors, _ = read_labels(_cfg(tmp_path, {"folder_classes": ["NORMAL", "PNEUMONIA"]}))
    assert table["sample_id"].tolist() == ["NORMAL/a.png", "PNEUMONIA/b.png"]
    assert [e[0] for e in errors] == ["image Pneumonia/c.png", "image loose.png"]
    assert "Pneumonia/c.png: unknown folder 'Pneumonia'" in errors[0][1]
    assert "loose.png: lies directly in the input folder, not in a class folder" in errors[1][1]


def test_bad_places_under_split_folders_are_per_file_errors(tmp_path):
    _tree(tmp_path / "img", ["train/NORMAL/a.png", "train/b.png", "test/NORMAL/x/c.png", "extra/NORMAL/d.png", "val/NORMAL/e.png"])
    table, errors, _ = read_labels(_cfg(tmp_path, {}))
    assert table["sample_id"].tolist() == ["train/NORMAL/a.png", "val/NORMAL/e.png"]
    problems = dict(errors)
    assert "top folder 'extra' is not a split folder, but other top folders are" in problems["image extra/NORMAL/d.png"]
    assert "nested too deep" in problems["image test/NORMAL/x/c.png"]
    assert "lies directly in the split folder 'train'" in problems["image train/b.png"]


def test_no_image_files_is_a_stage_error(tmp_path):
    (tmp_path / "img" / "NORMAL").mkdir(parents=True)
    (tmp_path / "img" / "NORMAL" / "readme.txt").write_text("x")
    with pytest.raises(StageError, match="no image files .* under .*img"):
        read_labels(_cfg(tmp_path, {}))


def test_kermany_patient_regex():
    assert [patient_from_name(n, KERMANY) for n in ("person1004_bacteria_2935.jpeg", "IM-0117-0001.jpeg", "NORMAL2-IM-1423-0001.jpeg")] == [
        "person1004", "IM-0117", "NORMAL2-IM-1423"]
    assert patient_from_name("scan_7.png", r"scan_\d") == "scan_7"  # no group: the whole match
    assert patient_from_name("other.jpeg", KERMANY) is None


def test_patient_regex_in_folders_mode_and_a_non_matching_name(tmp_path):
    _tree(tmp_path / "img", ["train/NORMAL/IM-0117-0001.png", "train/NORMAL/IM-0117-0002.png", "test/PNEUMONIA/odd.png",
                             "test/PNEUMONIA/person1004_bacteria_2935.png", "test/NORMAL/NORMAL2-IM-1423-0001.png"])
    table, errors, _ = read_labels(_cfg(tmp_path, {"patient_regex": KERMANY}))
    assert dict(zip(table["sample_id"], table["patient_id"])) == {
        "test/NORMAL/NORMAL2-IM-1423-0001.png": "NORMAL2-IM-1423", "test/PNEUMONIA/person1004_bacteria_2935.png": "person1004",
        "train/NORMAL/IM-0117-0001.png": "IM-0117", "train/NORMAL/IM-0117-0002.png": "IM-0117"}
    assert len(errors) == 1 and errors[0][0] == "image test/PNEUMONIA/odd.png"
    assert "'odd.png' does not match ingest.images.patient_regex" in errors[0][1] and KERMANY in errors[0][1]


def test_patient_regex_in_csv_mode(tmp_path):
    img = tmp_path / "img"
    _tree(img, ["person7_virus_1.png", "person7_virus_2.png", "x.png"])
    pd.DataFrame({"image": ["person7_virus_1.png", "person7_virus_2", "x.png"], "label": [0, 1, 0]}).to_csv(img / "labels.csv", index=False)
    cfg = _cfg(tmp_path, {"labels_from": "csv", "normal_classes": [0], "patient_regex": r"^(person\d+)_"})
    table, errors, _ = read_labels(cfg)
    assert table[["sample_id", "patient_id"]].values.tolist() == [["person7_virus_1.png", "person7"], ["person7_virus_2", "person7"]]
    assert [e[0] for e in errors] == ["image x.png"] and "labels.csv line 4: file name 'x.png' does not match" in errors[0][1]


@pytest.mark.parametrize("images, message", [
    ({"patient_regex": "(person"}, r"ingest.images.patient_regex: '\(person' is not a valid regular expression"),
    ({"labels_from": "csv", "patient_regex": "^(p)", "patient_column": "pid"}, "either patient_column .* or patient_regex .*, not both"),
    ({"split_column": "split"}, "ingest.images.split_column: a labels CSV key, not used with labels_from: folders"),
    ({"keep": ["age"]}, "ingest.images.keep: a labels CSV key, not used with labels_from: folders"),
    ({"labels_from": "csv", "folder_classes": ["NORMAL"]}, "ingest.images.folder_classes: only used with labels_from: folders"),
])
def test_config_errors(tmp_path, images, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, images)


def test_folders_mode_ignores_label_column_and_needs_no_labels_csv(tmp_path):
    cfg = _cfg(tmp_path, {"label_column": "diagnosis"})
    assert cfg.ingest.images.labels_from == "folders"
    from pipeline.core.inputs import input_paths

    assert [k for k, _ in input_paths(cfg)] == ["ingest.input"]


def test_ingest_stage_on_a_folder_layout_writes_the_labels_and_a_predefined_split(tmp_path):
    rels = ["train/NORMAL/IM-0001-0001.png", "train/NORMAL/IM-0002-0001.png", "train/NORMAL/IM-0003-0001.png",
            "val/NORMAL/IM-0004-0001.png", "test/NORMAL/IM-0005-0001.png", "test/PNEUMONIA/person1_virus_1.png",
            "test/PNEUMONIA/person1_virus_2.png", "test/PNEUMONIA/person2_bacteria_3.png"]
    _tree(tmp_path / "img", rels)
    cfg = _cfg(tmp_path, {"patient_regex": KERMANY}, method="predefined")
    manifest = run_stages(cfg, tmp_path / "run", ["ingest", "extract", "split"], log=lambda m: None)
    assert manifest.stages["ingest"]["counts"]["normal"] == 5 and manifest.stages["ingest"]["counts"]["anomalous"] == 3
    arrays = pd.read_csv(tmp_path / "run" / "arrays.csv", keep_default_na=False)
    assert arrays["sample_id"].tolist() == sorted(rels)
    assert dict(zip(arrays["sample_id"], arrays["label"])) == {r: int("PNEUMONIA" in r) for r in rels}
    assert arrays.loc[arrays["sample_id"].str.contains("person1_"), "patient_id"].tolist() == ["person1", "person1"]
    splits = pd.read_csv(tmp_path / "run" / "splits.csv")
    assert dict(zip(splits["sample_id"], splits["split"])) == {r: r.split("/")[0] for r in rels}
