"""DICOM discovery, ordering, validation and HU reading on tiny synthetic CT series."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fixtures_dicom import COLS, INTERCEPT, PIXEL_SPACING, ROWS, make_ct_series, slice_pixels

from pipeline.core.errors import DicomReadError, InvalidSeriesError
from preprocessing.dicom_series import discover, read_header, read_volume, slice_normal, validate_series

N = 10
Z0, DZ = -50.0, 2.5


def headers_of(folder):
    found = discover(folder)
    series = found.series
    assert found.errors == [] and found.ignored == []
    assert len(series) == 1
    return next(iter(series.values()))


def validate_folder(folder, **kw):
    return validate_series(headers_of(folder), **kw)


# ---------------------------------------------------------------- ordering and reading


@pytest.mark.parametrize("instance_numbers", ["reversed", "shuffled", "none"])
def test_slices_sorted_by_position_not_instance_number(tmp_path, instance_numbers):
    rng = random.Random(3)
    file_order = list(range(N))
    rng.shuffle(file_order)  # file names do not follow spatial order either
    if instance_numbers == "reversed":
        inst = list(range(N, 0, -1))
    elif instance_numbers == "shuffled":
        inst = list(range(1, N + 1))
        rng.shuffle(inst)
    else:
        inst = [None] * N
    s = make_ct_series(tmp_path / "ct", N, z0=Z0, dz=DZ, instance_numbers=inst, file_order=file_order)
    info = validate_folder(s["folder"])
    assert [str(p) for p in s["paths"]] == info.files
    zs = [sl.position[2] for sl in info.slices]
    assert zs == sorted(zs)
    assert info.slice_spacing_mm == pytest.approx(DZ)
    assert info.pixel_spacing_mm == pytest.approx(PIXEL_SPACING)
    assert (info.rows, info.columns) == (ROWS, COLS)
    assert info.patient_id == "PAT001" and info.modality == "CT"

    img = read_volume(info)
    assert img.GetOrigin() == pytest.approx((-5.0, 12.0, Z0))  # lowest z first
    # SimpleITK spacing is (x, y, z) = (column spacing, row spacing, slice gap)
    assert img.GetSpacing() == pytest.approx((PIXEL_SPACING[1], PIXEL_SPACING[0], DZ))
    assert np.allclose(img.GetDirection(), np.eye(3).ravel())
    arr = sitk.GetArrayFromImage(img)
    assert arr.shape == (N, ROWS, COLS)
    assert arr.dtype == np.float32
    for k in range(N):
        np.testing.assert_array_equal(arr[k], slice_pixels(k).astype(np.float32) + INTERCEPT)


def test_descending_positions_are_reordered(tmp_path):
    # slices written from head to feet (decreasing z), instance numbers increasing with file
    positions = [(0.0, 0.0, 100.0 - 3.0 * k) for k in range(N)]
    s = make_ct_series(tmp_path / "ct", positions=positions)
    info = validate_folder(s["folder"])
    assert [sl.position[2] for sl in info.slices] == sorted(p[2] for p in positions)
    img = read_volume(info)
    assert img.GetOrigin()[2] == pytest.approx(100.0 - 3.0 * (N - 1))
    arr = sitk.GetArrayFromImage(img)
    # spatial order k=0 is the lowest z, which is the last written slice (k=N-1 in the fixture)
    np.testing.assert_array_equal(arr[0], slice_pixels(N - 1) + INTERCEPT)


def test_read_volume_returns_hu(tmp_path):
    s = make_ct_series(tmp_path / "ct", N)
    img = read_volume(validate_folder(s["folder"]))
    arr = sitk.GetArrayFromImage(img)
    stored = np.stack([slice_pixels(k) for k in range(N)]).astype(np.float64)
    np.testing.assert_allclose(arr, stored - 1024.0)
    assert arr.min() == pytest.approx(10 - 1024)


def test_sagittal_series_sorted_along_normal(tmp_path):
    # rows along y (0,1,0), columns along -z (0,0,-1): normal = (0,1,0)x(0,0,-1) = (-1,0,0)
    orient = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert np.allclose(slice_normal(orient), [-1, 0, 0])
    xs = [10.0 + 2.0 * k for k in range(N)]
    positions = [(x, 0.0, 0.0) for x in xs]
    s = make_ct_series(tmp_path / "ct", positions=positions, orientations=[orient] * N)
    info = validate_folder(s["folder"])
    # ascending along the normal (-x) means descending x
    assert [sl.position[0] for sl in info.slices] == sorted(xs, reverse=True)
    assert info.slice_spacing_mm == pytest.approx(2.0)


# ---------------------------------------------------------------- validation failures


def test_missing_middle_slice(tmp_path):
    positions = [(0.0, 0.0, Z0 + k * DZ) for k in range(N) if k != 5]
    s = make_ct_series(tmp_path / "ct", positions=positions)
    with pytest.raises(InvalidSeriesError, match="missing") as exc:
        validate_folder(s["folder"])
    assert "1 missing" in str(exc.value)
    assert s["series_uid"] in str(exc.value)


def test_two_missing_slices(tmp_path):
    positions = [(0.0, 0.0, Z0 + k * DZ) for k in range(12) if k not in (6, 7)]
    s = make_ct_series(tmp_path / "ct", positions=positions)
    with pytest.raises(InvalidSeriesError, match="2 missing"):
        validate_folder(s["folder"])


def test_duplicate_positions(tmp_path):
    positions = [(0.0, 0.0, Z0 + k * DZ) for k in range(N)]
    positions[6] = positions[5]
    s = make_ct_series(tmp_path / "ct", positions=positions)
    with pytest.raises(InvalidSeriesError, match="duplicate"):
        validate_folder(s["folder"])


def test_non_uniform_spacing(tmp_path):
    zs = [Z0 + k * DZ for k in range(N)]
    zs = zs[:6] + [z + 0.6 * DZ for z in zs[6:]]  # one gap of 1.6·spacing
    s = make_ct_series(tmp_path / "ct", positions=[(0.0, 0.0, z) for z in zs])
    with pytest.raises(InvalidSeriesError, match="non-uniform"):
        validate_folder(s["folder"])


def test_spacing_jitter_within_tolerance_is_accepted(tmp_path):
    zs = [Z0 + k * DZ + (0.05 if k % 2 else 0.0) for k in range(N)]
    s = make_ct_series(tmp_path / "ct", positions=[(0.0, 0.0, z) for z in zs])
    info = validate_folder(s["folder"])
    assert info.slice_spacing_mm == pytest.approx(DZ, abs=0.1)


def test_mixed_orientations(tmp_path):
    c, sn = np.cos(np.radians(10)), np.sin(np.radians(10))
    tilted = (c, sn, 0.0, -sn, c, 0.0)  # rotated about z: same normal, different in-plane axes
    orients = [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)] * N
    orients = orients[:4] + [tilted] + orients[5:]
    s = make_ct_series(tmp_path / "ct", N, orientations=orients)
    with pytest.raises(InvalidSeriesError, match="orientation"):
        validate_folder(s["folder"])


def test_too_few_slices(tmp_path):
    s = make_ct_series(tmp_path / "ct", 5)
    with pytest.raises(InvalidSeriesError, match="only 5 slice"):
        validate_folder(s["folder"], min_slices=8)
    # the same series passes with a lower minimum
    assert len(validate_folder(s["folder"], min_slices=5).slices) == 5


def test_gantry_tilt(tmp_path):
    positions = [(0.0, 12.0 + 0.5 * k, Z0 + k * DZ) for k in range(N)]  # y shifts every slice
    s = make_ct_series(tmp_path / "ct", positions=positions)
    with pytest.raises(InvalidSeriesError, match="tilt"):
        validate_folder(s["folder"])


# ---------------------------------------------------------------- discovery


def test_discover_groups_series_and_reports_unreadable_files(tmp_path):
    root = tmp_path / "archive"
    a = make_ct_series(root / "patA" / "s1", N, patient_id="A")
    b = make_ct_series(root / "patB" / "s2", 9, patient_id="B", prefix="img")
    junk = root / "junk"
    junk.mkdir()
    empty = junk / "empty.dcm"
    empty.write_bytes(b"")
    text = junk / "notes.txt"
    text.write_text("this is not a DICOM file\n" * 20)
    (junk / ".hidden").write_text("ignored")

    found = discover(root)
    series, errors = found.series, found.errors
    assert set(series) == {a["series_uid"], b["series_uid"]}
    assert sorted(h.path for h in series[a["series_uid"]]) == sorted(a["paths"])
    assert sorted(h.path for h in series[b["series_uid"]]) == sorted(b["paths"])
    assert {h.patient_id for h in series[b["series_uid"]]} == {"B"}
    assert all(isinstance(p, str) and isinstance(m, str) for p, m in errors)
    err = dict(errors)
    assert set(err) == {str(empty)}  # the dot-file is skipped silently; the text file is not an image
    assert "empty" in err[str(empty)]
    assert found.ignored == [(str(text), f"{text}: a text file, not an image")]


def test_discover_with_workers_gives_the_same_result(tmp_path, monkeypatch):
    """Headers read in chunks by 2 pool workers: the same series, slices, order and errors as serially."""
    import preprocessing.dicom_series as ds

    root = tmp_path / "archive"
    make_ct_series(root / "patA" / "s1", N, patient_id="A")
    make_ct_series(root / "patB" / "s2", 9, patient_id="B", prefix="img")
    (root / "junk").mkdir()
    (root / "junk" / "empty.dcm").write_bytes(b"")
    monkeypatch.setattr(ds, "HEADER_CHUNK", 4)  # several chunks from a small archive
    (root / "junk" / "boxes.xml").write_text("<annotation/>")
    serial, pooled = ds.discover(root), ds.discover(root, workers=2)
    assert pooled.errors == serial.errors and len(serial.errors) == 1 and len(serial.ignored) == 1
    assert {k: [h.path for h in v] for k, v in pooled.series.items()} == {k: [h.path for h in v] for k, v in serial.series.items()}
    assert pooled == serial


def test_discover_reports_truncated_file(tmp_path):
    root = tmp_path / "archive"
    a = make_ct_series(root / "s1", N)
    junk = root / "junk"
    junk.mkdir()
    # truncated copy of a valid slice: the end of its pixel data is cut off (interrupted copy).
    # The file is still larger than its 512-byte pixel data because of the header.
    good = a["paths"][0].read_bytes()
    truncated = junk / "truncated.dcm"
    truncated.write_bytes(good[: len(good) - 256])  # 256 of the 512 pixel bytes missing

    found = discover(root)
    series, errors = found.series, found.errors
    err = dict(errors)
    assert str(truncated) in err, f"truncated file was not reported; errors={errors}"
    assert "truncated" in err[str(truncated)]
    assert [str(h.path) for h in series[a["series_uid"]] if h.path == truncated] == []
    assert len(series[a["series_uid"]]) == N


def test_read_header_truncated_inside_pixel_data(tmp_path):
    s = make_ct_series(tmp_path / "ct", 1)
    data = s["paths"][0].read_bytes()
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(data[:-2])  # only the last voxel is missing
    with pytest.raises(DicomReadError, match="truncated"):
        read_header(bad)


def test_read_header_heavily_truncated(tmp_path):
    s = make_ct_series(tmp_path / "ct", 1)
    data = s["paths"][0].read_bytes()
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(data[:400])
    with pytest.raises(DicomReadError):
        read_header(bad)


def test_read_header_fields(tmp_path):
    s = make_ct_series(tmp_path / "ct", 2, z0=7.0, dz=1.25, instance_numbers=[5, None])
    h0, h1 = read_header(s["paths"][0]), read_header(s["paths"][1])
    assert h0.position == pytest.approx((-5.0, 12.0, 7.0))
    assert h1.position[2] == pytest.approx(8.25)
    assert h0.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert h0.pixel_spacing == pytest.approx(PIXEL_SPACING)
    assert (h0.rows, h0.columns) == (ROWS, COLS)
    assert h0.instance_number == 5 and h1.instance_number is None
    assert h0.series_uid == s["series_uid"] and h0.modality == "CT"


# ---------------------------------------------------------------- transfer syntaxes and compressed files


def _pydicom_files_by_syntax() -> dict[str, str]:
    import pydicom
    from pydicom.data import get_testdata_file

    out = {}
    for name in ("MR_small_implicit.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                 "JPGExtended.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm",
                 "MR_small_jp2klossless.dcm", "JPEG2000.dcm"):
        path = get_testdata_file(name)
        out[str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)] = path
    return out


def test_every_decodable_transfer_syntax_with_a_pydicom_sample_is_read_by_simpleitk():
    from preprocessing.dicom_series import DECODABLE_TRANSFER_SYNTAXES

    files = _pydicom_files_by_syntax()
    assert len(files) >= 11  # all but 4.57 and HTJ2K have a pydicom sample
    for ts, path in files.items():
        assert ts in DECODABLE_TRANSFER_SYNTAXES
        assert sitk.GetArrayFromImage(sitk.ReadImage(path)).size > 0, ts


def test_undecodable_transfer_syntax_rejects_the_series_before_reading(tmp_path):
    from corpus import _deflate_frames, copy_series, sample_files

    files = sample_files()[:8]
    uid = copy_series(files, tmp_path / "s", _deflate_frames)
    first = sorted((tmp_path / "s").glob("*.dcm"))[0]
    with pytest.raises(RuntimeError):  # what SimpleITK would do with it
        sitk.ReadImage(str(first))
    headers = headers_of(tmp_path / "s")
    assert headers[0].transfer_syntax == "1.2.840.10008.1.2.8.1"
    with pytest.raises(InvalidSeriesError, match="unsupported transfer syntax Deflated Image Frame Compression") as exc:
        validate_series(headers)
    assert uid in str(exc.value) and "8 of 8 file(s)" in str(exc.value)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_truncated_compressed_file_is_reported(tmp_path, name):
    from pydicom.data import get_testdata_file

    data = open(get_testdata_file(name), "rb").read()
    assert read_header(Path(get_testdata_file(name))).transfer_syntax  # the intact file passes
    end = data.rindex(b"\xfe\xff\xdd\xe0")  # the closing delimiter of the pixel data (other elements may follow)
    for cut in (end, end - 10, end - len(data) // 3):
        bad = tmp_path / f"cut{cut}.dcm"
        bad.write_bytes(data[:cut])
        with pytest.raises(DicomReadError, match="truncated"):
            read_header(bad)


def test_header_read_never_parses_patient_name(tmp_path):
    import pydicom

    s = make_ct_series(tmp_path / "ct", 1)
    with open(s["paths"][0], "rb") as fp:
        from preprocessing.dicom_series import HEADER_TAGS

        ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    assert "PatientName" not in ds and "SeriesInstanceUID" in ds


def test_discover_rereads_a_chunk_whose_task_failed(tmp_path, monkeypatch):
    """A chunk task that fails unexpectedly (a worker died) is read again in the driver: the result is still complete."""
    import preprocessing.dicom_series as ds

    root = tmp_path / "archive"
    make_ct_series(root / "s1", N)
    monkeypatch.setattr(ds, "HEADER_CHUNK", 3)
    serial = ds.discover(root)
    real = ds.map_items

    def flaky(fn, items, *args, **kwargs):
        for key, ok, res in real(fn, items, *args, **kwargs):
            yield (key, False, "worker died") if key == "1" else (key, ok, res)

    monkeypatch.setattr(ds, "map_items", flaky)
    pooled = ds.discover(root, workers=2)
    assert pooled == serial and pooled.errors == []


# ---------------------------------------------------------------- overlapping series


def test_two_series_of_one_study_that_cover_the_same_volume_get_one_note(tmp_path):
    """Two reconstructions of one scan (same patient, study and geometry): one note naming both;
    a third series of the same study elsewhere along z, and a series of another study, get none."""
    from pydicom.uid import generate_uid

    from preprocessing.dicom_series import overlap_notes

    study = generate_uid()
    a = make_ct_series(tmp_path / "a", N, patient_id="P", study_uid=study)
    b = make_ct_series(tmp_path / "b", N, patient_id="P", study_uid=study, z0=Z0 + 0.25 * DZ)  # shifted by a quarter slice
    far = make_ct_series(tmp_path / "far", N, patient_id="P", study_uid=study, z0=Z0 + 100)
    other = make_ct_series(tmp_path / "other", N, patient_id="P")  # another study
    infos = [validate_folder(s["folder"]) for s in (a, b, far, other)]
    notes = overlap_notes(infos)
    assert len(notes) == 1, notes
    assert a["series_uid"] in notes[0] and b["series_uid"] in notes[0] and "patient P" in notes[0] and "cover the same volume" in notes[0]
    assert "95% overlap" in notes[0]  # 8.75 of 9.25 slice gaps shared along z, the same x-y extent
