"""2D image files: DICOM (real pydicom test files, compressed ones, a real chest radiograph),
PNG/TIFF, the labels CSV, and per-file errors through the ingest and extract stages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import validate
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.core.errors import ItemError
from preprocessing.arrays import extract
from preprocessing.grid_shards import read_all_grids
from preprocessing.images import ingest
from preprocessing.images2d import conform_channels, read_image
from preprocessing.labels import canonical_class


def _testfile(name: str):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available (it ships in the pydicom-data package: pip install pydicom-data)")
    return path


def write_dx(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs) -> None:
    """A minimal single-frame DX file with uint16 pixels and the given attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "anon"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


# ------------------------------------------------------------------------------------ DICOM


def test_real_chest_radiograph_monochrome1_window_and_missing_spacing():
    """RG1_UNCI.dcm (pydicom-data): a real CR chest radiograph, MONOCHROME1 with a window and
    PixelSpacing 0.000. Bright must mean dense, so low stored values (bone on MONOCHROME1) come out bright."""
    path = _testfile("RG1_UNCI.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    img = read_image(path)
    assert img.pixels.shape == (1, 1955, 1841) and img.pixels.dtype == np.float32
    assert 0 <= img.pixels.min() and img.pixels.max() <= 1
    raw = ds.pixel_array.astype(float)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = 1 - np.clip((raw - (c - 0.5)) / (w - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1 linear window, then inverted
    np.testing.assert_allclose(img.pixels[0], expected, atol=1e-6)
    assert img.spacing_mm is None  # 0.000 is not a spacing: the config decides


def test_real_radiograph_jpeg2000_decodes_like_the_uncompressed_file():
    a, b = read_image(_testfile("RG1_UNCI.dcm")).pixels, read_image(_testfile("RG1_J2KR.dcm")).pixels
    assert a.shape == b.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999 and np.abs(a - b).mean() < 0.01


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_lossless_compressed_files_equal_the_uncompressed_one(name):
    """pydicom's bundled files: the same image stored RLE, JPEG-LS and JPEG 2000 lossless."""
    ref = read_image(_testfile("MR_small.dcm"))
    img = read_image(_testfile(name))
    np.testing.assert_array_equal(img.pixels, ref.pixels)
    assert img.spacing_mm == (0.3125, 0.3125) and img.spacing_source == "PixelSpacing"


def test_jpeg_lossless_process14_and_colour_dicom():
    img = read_image(_testfile("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert img.pixels.shape == (1, 768, 1024)
    rgb = read_image(_testfile("SC_rgb_jpeg.dcm"))  # JPEG baseline, YBR → RGB by pydicom
    assert rgb.pixels.shape == (3, 256, 256)
    plain = read_image(_testfile("SC_rgb.dcm"))
    np.testing.assert_allclose(plain.pixels[:, 5, 5], [1.0, 0.0, 0.0])  # the top band of SC_rgb is pure red
    assert plain.spacing_mm == (1.0, 1.0)


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path):
    pixels = np.arange(40 * 60).reshape(40, 60) % 4096
    write_dx(tmp_path / "m2.dcm", pixels, "MONOCHROME2")
    write_dx(tmp_path / "m1.dcm", pixels, "MONOCHROME1")
    m2, m1 = read_image(tmp_path / "m2.dcm").pixels, read_image(tmp_path / "m1.dcm").pixels
    np.testing.assert_allclose(m1, 1 - m2, atol=1e-6)
    np.testing.assert_allclose(m2[0], (pixels - pixels.min()) / (pixels.max() - pixels.min()), atol=1e-6)  # no VOI: min-max


def test_rescale_then_window_and_imager_spacing(tmp_path):
    pixels = np.tile(np.arange(0, 4000, 40), (30, 1))  # 30 x 100
    write_dx(tmp_path / "w.dcm", pixels, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=3900, WindowWidth=4001, ImagerPixelSpacing=[0.2, 0.4])
    img = read_image(tmp_path / "w.dcm")
    value = pixels * 2 - 100  # modality LUT first
    expected = np.clip((value - (3900 - 0.5)) / 4000 + 0.5, 0, 1)
    np.testing.assert_allclose(img.pixels[0], expected, atol=1e-6)
    assert img.spacing_mm == (0.2, 0.4) and img.spacing_source == "ImagerPixelSpacing"
    write_dx(tmp_path / "both.dcm", pixels, ImagerPixelSpacing=[0.2, 0.2], PixelSpacing=[0.18, 0.18])
    assert read_image(tmp_path / "both.dcm").spacing_source == "PixelSpacing"  # calibrated to the patient plane wins


def test_voi_lut_sequence_is_applied():
    img = read_image(_testfile("vlut_04.dcm"))
    ds = pydicom.dcmread(_testfile("vlut_04.dcm"))
    from pydicom.pixels import apply_voi_lut

    lut = np.asarray(apply_voi_lut(ds.pixel_array, ds), float)
    item = ds.VOILUTSequence[0]
    data = np.asarray(item.LUTData, float)
    np.testing.assert_allclose(img.pixels[0], (lut - data.min()) / (data.max() - data.min()), atol=1e-6)


def test_dicom_defects_are_item_errors_naming_the_file(tmp_path):
    with pytest.raises(ItemError, match="no pixel data"):
        read_image(_testfile("rtplan.dcm"))
    with pytest.raises(ItemError, match="multi-frame"):
        read_image(_testfile("SC_rgb_rle_2frame.dcm"))
    with pytest.raises(ItemError, match=r"JPEG-lossy.dcm: cannot decode pixel data \(JPEG Extended .*12-bit"):
        read_image(_testfile("JPEG-lossy.dcm"))  # needs the GPL-3.0 libjpeg plugin, deliberately not a dependency
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI")
    with pytest.raises(ItemError, match="broken.dcm"):
        read_image(tmp_path / "broken.dcm")


# ------------------------------------------------------------------------------------ PNG / TIFF


def test_png_tiff_greyscale_rgb_and_16bit(tmp_path):
    grey = (np.arange(20 * 30).reshape(20, 30) % 256).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_allclose(read_image(tmp_path / "g.png").pixels[0], grey / 255, atol=1e-6)
    deep = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_allclose(read_image(tmp_path / "d.png").pixels[0], deep / 65535, atol=1e-6)
    Image.fromarray(deep).save(tmp_path / "d.tif")
    np.testing.assert_allclose(read_image(tmp_path / "d.tif").pixels[0], deep / 65535, atol=1e-6)
    rgb = np.stack([grey, 255 - grey, np.full_like(grey, 7)], -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    img = read_image(tmp_path / "c.png")
    assert img.pixels.shape == (3, 20, 30) and img.spacing_mm is None
    np.testing.assert_allclose(img.pixels[1], (255 - grey) / 255, atol=1e-6)


def test_channel_count_is_checked(tmp_path):
    grey_as_rgb = np.repeat(np.linspace(0, 1, 12).reshape(1, 3, 4), 3, 0)
    assert conform_channels(grey_as_rgb, 1, tmp_path / "x.png").shape == (1, 3, 4)  # equal channels: greyscale
    colour = grey_as_rgb.copy()
    colour[0] *= 0.5
    with pytest.raises(ItemError, match=r"x.png: image has 3 channel\(s\) \(RGB\), expected 1"):
        conform_channels(colour, 1, tmp_path / "x.png")
    with pytest.raises(ItemError, match="expected 3"):
        conform_channels(grey_as_rgb[:1], 3, tmp_path / "x.png")


def test_unreadable_and_truncated_pictures(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ItemError, match="junk.png: unreadable"):
        read_image(tmp_path / "junk.png")
    Image.fromarray(np.zeros((64, 64), np.uint8) + 9).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ItemError, match="t.png"):
        read_image(tmp_path / "t.png")


# ------------------------------------------------------------------------------------ labels CSV + stages


def _images_cfg(tmp_path, images: dict, cube: int = 8, **ingest_extra):
    return validate({"ingest": {"format": "images", "input": str(tmp_path / "img"), "images": images, **ingest_extra},
                     "extract": {"cube_size": cube, "normalise": "minmax"}, "train": {"patch_size": min(cube, 8)},
                     "model": {"name": "pca2d"}}, base_dir=tmp_path)


def test_bad_inputs_are_per_file_errors_and_the_rest_go_on(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    good = lambda name, size=(20, 20): Image.fromarray(np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)).save(img / name)  # noqa: E731
    for name in ("a.png", "b.png", "dup.png"):
        good(name)
    good("small.png", (6, 6))
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(img / "colour.png")
    (img / "junk.png").write_bytes(b"garbage")
    write_dx(img / "c.dcm", np.arange(400).reshape(20, 20))
    pydicom.dcmread(_testfile("rtplan.dcm")).save_as(img / "plan.dcm")
    pd.DataFrame({"image": ["a.png", "b", "c", "dup.png", "dup.png", "gone.png", "junk.png", "colour.png", "plan.dcm", "small.png", "x.png"],
                  "label": ["normal", "normal", "effusion", "normal", "normal", "normal", "normal", "normal", "normal", "normal", "other"]}
                 ).to_csv(img / "labels.csv", index=False)
    cfg = _images_cfg(tmp_path, {"normal_classes": ["normal"], "anomaly_classes": ["effusion"]})
    run = tmp_path / "run"
    res = ingest(cfg, run)
    errors = dict(res.errors)
    assert "appears on lines 5, 6" in errors["image dup.png"]
    assert "labels.csv line 7: image 'gone.png' not found" in errors["image gone.png"]
    assert "junk.png: unreadable" in errors["image junk.png"]
    assert "colour.png: image has 3 channel(s) (RGB), expected 1" in errors["image colour.png"]
    assert "plan.dcm: DICOM file has no pixel data" in errors["image plan.dcm"]
    assert res.counts["images"] == 4 and res.counts["left_out_by_label"] == 1  # a, b (→ b.png), c (→ c.dcm), small; 'other' left out
    table = pd.read_csv(run / "arrays.csv", keep_default_na=False)
    assert table["sample_id"].tolist() == ["a.png", "b", "c", "small.png"]
    assert table["label"].tolist() == [0, 0, 1, 0] and table["class"].tolist() == ["normal", "normal", "effusion", "normal"]
    assert table["file"].str.endswith(("a.png", "b.png", "c.dcm", "small.png")).all()
    out = extract(cfg, run)
    assert out.errors == [("image small.png", "image small.png: grid (6, 6) is smaller than extract.cube_size 8; left out")]


def test_known_spacing_resamples_to_expected_size(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    Image.fromarray(np.full((100, 80), 120, np.uint8)).save(img / "p.png")
    write_dx(img / "d.dcm", np.full((40, 60), 100), PixelSpacing=[0.25, 0.5])
    Image.fromarray(np.full((30, 30), 50, np.uint8)).save(img / "q.png")
    pd.DataFrame({"image": ["p.png", "d.dcm", "q.png"], "label": [0, 0, 1], "mm": ["0.5", "", ""]}).to_csv(img / "labels.csv", index=False)
    cfg = _images_cfg(tmp_path, {"spacing_column": "mm"})
    res = ingest(cfg, tmp_path / "run")  # d.dcm has no CSV spacing: a per-row error, as the column is set
    assert [e[0] for e in res.errors] == ["image d.dcm", "image q.png"]
    cfg = _images_cfg(tmp_path, {"pixel_spacing_mm": 2.0})
    ingest(cfg, tmp_path / "run")
    _, grids = read_all_grids(tmp_path / "run")
    assert [list(g.shape[1:]) for g in grids] == [[200, 160], [10, 30], [60, 60]]  # config 2 mm → 1 mm; DICOM 0.25x0.5 mm → 1 mm
    np.testing.assert_allclose(grids[0][0], 120 / 255, atol=1e-5)  # a constant image stays constant
    table = pd.read_csv(tmp_path / "run" / "arrays.csv")
    assert table["spacing_source"].tolist() == ["config", "PixelSpacing", "config"]
    assert table["spacing_mm"].tolist() == ["2 2", "0.25 0.5", "2 2"]


def test_images_config_is_validated_with_suggestions(tmp_path):
    from pipeline.core.errors import ConfigError

    base = {"ingest": {"format": "images", "input": "img"}, "model": {"name": "vae2d"}}
    with pytest.raises(ConfigError, match=r"ingest.images.label_colum: unknown key \(did you mean 'label_column'\?\)"):
        validate({**base, "ingest": {**base["ingest"], "images": {"label_colum": "x"}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="either label_column .* or class_columns"):
        validate({**base, "ingest": {**base["ingest"], "images": {"class_columns": ["MEL", "NV"]}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"ingest.images.channels: 2 is not one of 1, 3"):
        validate({**base, "ingest": {**base["ingest"], "images": {"channels": 2}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="extract.normalise: 'zscor' is not one of .* \\(did you mean 'zscore'\\?\\)"):
        validate({**base, "extract": {"normalise": "zscor"}}, base_dir=tmp_path)
    cfg = validate({**base, "ingest": {**base["ingest"], "images": {"normal_classes": [0, "NV", 1.5]}}}, base_dir=tmp_path)
    assert [canonical_class(v) for v in cfg.ingest.images.normal_classes] == ["0", "NV", "1.5"]
    assert cfg.ingest.antialias_on and not validate({"model": {"name": "vae3d"}}, base_dir=tmp_path).ingest.antialias_on


def test_labels_csv_with_missing_columns_names_them(tmp_path):
    from pipeline.core.errors import StageError

    (tmp_path / "img").mkdir()
    pd.DataFrame({"filename": ["a.png"], "diagnosis": ["x"]}).to_csv(tmp_path / "img" / "labels.csv", index=False)
    with pytest.raises(StageError, match=r"ingest.images.id_column: no column 'image'.*"
                                         r"ingest.images.label_column: no column 'label' \(columns: filename, diagnosis\)"):
        ingest(_images_cfg(tmp_path, {}), tmp_path / "run")


def test_one_hot_rows_must_hold_exactly_one_class(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    for name in ("ISIC_1", "ISIC_2", "ISIC_3"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(img / f"{name}.jpg")
    pd.DataFrame({"image": ["ISIC_1", "ISIC_2", "ISIC_3"], "MEL": [1.0, 1.0, 0.0], "NV": [0.0, 1.0, 0.0]}).to_csv(img / "gt.csv", index=False)
    cfg = _images_cfg(tmp_path, {"labels": str(img / "gt.csv"), "class_columns": ["MEL", "NV"], "label_column": None, "normal_classes": ["NV"],
                                 "channels": 3, "extensions": [".jpg"]})
    res = ingest(cfg, tmp_path / "run")
    assert [e[0] for e in res.errors] == ["image ISIC_2", "image ISIC_3"]
    assert "gt.csv line 3: one-hot columns MEL, NV must hold exactly one 1" in res.errors[0][1]
    table = pd.read_csv(tmp_path / "run" / "arrays.csv")
    assert table[["sample_id", "class", "label"]].values.tolist() == [["ISIC_1", "MEL", 1]]


def test_normalisation_modes():
    from preprocessing.intensity import denormalise, fit_normalisation, normalise

    rng = np.random.default_rng(0)
    train = rng.normal([[[[10.0]], [[50.0]], [[200.0]]]], [[[[2.0]], [[5.0]], [[20.0]]]], (40, 3, 8, 8))
    norm = fit_normalisation("zscore", (0, 1), 8, train)
    z = normalise(train, norm)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-4)
    np.testing.assert_allclose(denormalise(z[3], norm), train[3], rtol=1e-5)  # RGB colours come back for display
    mm = normalise(train, fit_normalisation("minmax", (0, 1), 8))
    assert np.allclose(mm.min(axis=(1, 2, 3)), 0) and np.allclose(mm.max(axis=(1, 2, 3)), 1)
    w = fit_normalisation("window", (0, 100), 8)
    np.testing.assert_allclose(normalise(np.array([[[[-5.0, 50.0, 150.0]]]]), w), [[[[0, 0.5, 1]]]])
    np.testing.assert_allclose(denormalise(np.array([[[0.25]]]), w), [[[25.0]]])


def test_unset_evaluate_score_follows_the_model(tmp_path):
    from pipeline.core.errors import ConfigError

    assert validate({"model": {"name": "pca2d"}}, base_dir=tmp_path).evaluate.score == "pca_recon"
    assert validate({"model": {"name": "vae2d"}}, base_dir=tmp_path).evaluate.score == "elbo"
    with pytest.raises(ConfigError, match="'elbo' is not a score of model pca2d"):
        validate({"model": {"name": "pca2d"}, "evaluate": {"score": "elbo"}}, base_dir=tmp_path)
