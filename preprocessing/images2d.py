"""Read one 2D image file: DICOM (CR, DX, secondary capture, ...), PNG, JPEG or TIFF.

Every reader returns channel-first float32 pixels ``(C, rows, columns)`` in display intensity
[0, 1] (C = 1 greyscale, C = 3 RGB) and the pixel spacing (row, column) in mm when the file
carries one. Any defect raises :class:`~pipeline.core.errors.ItemError` naming the file, so the
ingest stage can report it and go on with the other files.

DICOM (pydicom): Modality LUT / Rescale Slope-Intercept (``apply_modality_lut``), then the first
VOI LUT or window (``apply_voi_lut``, which prefers a VOI LUT Sequence over Window Center/Width)
scaled to [0, 1] by that transform's own output range; without either, the image's min-max
(what DICOM viewers do by default). MONOCHROME1 (bright = low values) is inverted afterwards;
Presentation LUT Shape is not applied on top, since for MONOCHROME1 it states that same inversion
(PS3.3 C.8.11.6.1.2). PALETTE COLOR goes through ``apply_color_lut``; YBR is converted to RGB by
pydicom. Compressed transfer syntaxes are decoded by pydicom's pixel-data plugins: Pillow
(JPEG baseline/extended, JPEG 2000), pylibjpeg-openjpeg (JPEG 2000), pylibjpeg-rle (RLE),
pyjpegls (JPEG-LS) and python-gdcm (JPEG lossless, process 14: common in CR/DX archives). All are
permissively licensed; the GPL-3.0 pylibjpeg-libjpeg is deliberately not used.
Spacing: Pixel Spacing (calibrated to the patient plane when present), else Imager Pixel Spacing
(at the detector), else Nominal Scanned Pixel Spacing (digitised film); zero or missing values
count as absent (some CR writers store 0.000).

PNG/JPEG/TIFF (Pillow): 8-bit and 16-bit integers are scaled by their type's maximum, float
TIFF is taken as it is. EXIF orientation is applied (phone and dermoscope photos). Their DPI tags
are ignored: they are print or scanner defaults, not a size in the patient plane, so the spacing
comes from the config or the labels CSV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from pipeline.core.errors import ItemError

DICOM_SPACING_TAGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


@dataclass
class Image2D:
    """Pixels of one file in display range, with the spacing the file declares."""

    pixels: np.ndarray  # (C, rows, columns) float32 in [0, 1]
    spacing_mm: tuple[float, float] | None  # (row, column) spacing in mm; None when the file has none
    spacing_source: str  # the DICOM attribute the spacing came from, or ""
    file_format: str  # "dicom", "png", "jpeg", "tiff", ...


def read_image(path: Path) -> Image2D:
    """Read a DICOM or PNG/JPEG/TIFF file (chosen by content, not by name)."""

    path = Path(path)
    if not path.is_file():
        raise ItemError(f"{path}: file not found")
    try:
        dicom = is_dicom(path) or path.suffix.lower() in (".dcm", ".dicom")
    except OSError as exc:
        raise ItemError(f"{path}: cannot read file ({exc})") from None
    return read_dicom_2d(path) if dicom else read_picture(path)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def read_dicom_2d(path: Path) -> Image2D:
    """One single-frame DICOM image (see the module docstring for the intensity pipeline)."""

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ItemError(f"{path}: not a readable DICOM file ({exc})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = getattr(ds.get("SOPClassUID"), "name", "unknown SOP class")
        raise ItemError(f"{path}: DICOM file has no pixel data ({sop}); not an image")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ItemError(f"{path}: multi-frame DICOM ({frames} frames); expected one 2D image per file")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's defect
        syntax = (getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "unknown transfer syntax") if hasattr(ds, "file_meta")
                  else "unknown transfer syntax")
        first = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ItemError(f"{path}: cannot decode pixel data ({syntax}): {first}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise ItemError(f"{path}: {photometric} pixel data has shape {arr.shape}; expected rows x columns")
        unit = _voi_to_unit(apply_modality_lut(arr, ds), ds)
        pixels = (1.0 - unit if photometric == "MONOCHROME1" else unit)[None]
    else:
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
            top = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
        else:  # RGB, or YBR already converted to RGB by pydicom
            top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ItemError(f"{path}: {photometric} pixel data has shape {arr.shape}; expected rows x columns x 3")
        pixels = np.moveaxis(np.asarray(arr, np.float64) / top, -1, 0)
    spacing, source = dicom_spacing(ds)
    return Image2D(np.clip(pixels, 0, 1).astype(np.float32), spacing, source, "dicom")


def dicom_spacing(ds) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm and the attribute it came from; ``(None, "")`` when absent or zero."""
    for tag in DICOM_SPACING_TAGS:
        value = ds.get(tag)
        try:
            pair = tuple(float(v) for v in value) if value is not None else ()
        except (TypeError, ValueError):
            continue
        if len(pair) == 2 and all(np.isfinite(v) and v > 0 for v in pair):
            return (pair[0], pair[1]), tag
    return None, ""


def _voi_to_unit(x: np.ndarray, ds) -> np.ndarray:
    """Apply the dataset's first VOI LUT or window (pydicom) and scale its output range to [0, 1].

    pydicom maps a window onto the stored value range and a VOI LUT onto its entries; the ends of
    that range are found by passing the extremes of the input through the same transform, so the
    scaling follows pydicom's own rules instead of repeating them here.
    """

    x = np.asarray(x, np.float64)
    if ds.get("VOILUTSequence"):
        n, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
        probe = np.arange(first, first + (n or 65536))
        x = np.rint(x).astype(np.int64)  # a LUT is indexed by integer values
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        probe = np.array([-1e12, 1e12])  # far outside any window: the two ends of the output range
    else:
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    out = np.asarray(apply_voi_lut(x, ds), np.float64)
    ends = np.asarray(apply_voi_lut(probe, ds), np.float64)
    lo, hi = float(ends.min()), float(ends.max())
    return (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)


# --------------------------------------------------------------------------------------------
# PNG / JPEG / TIFF
# --------------------------------------------------------------------------------------------


def read_picture(path: Path) -> Image2D:
    """A PNG, JPEG or TIFF file via Pillow (one frame, greyscale or colour)."""

    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise ItemError(f"{path}: {im.format} file holds {im.n_frames} frames; expected one 2D image")
            fmt = (im.format or path.suffix.lstrip(".")).lower()
            im = ImageOps.exif_transpose(im)
            im.load()
            arr = _picture_array(im, path)
    except ItemError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ItemError(f"{path}: unreadable or truncated image file ({exc})") from None
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)  # float32 throughout: a third of the time of float64
    elif np.issubdtype(arr.dtype, np.bool_):
        arr = arr.astype(np.float32)
    elif not np.isfinite(arr).all():  # float TIFF: the only kind that can hold NaN or inf
        raise ItemError(f"{path}: image contains NaN or inf values")
    pixels = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return Image2D(np.ascontiguousarray(pixels, dtype=np.float32), None, "", fmt)


def _picture_array(im, path: Path) -> np.ndarray:
    """Greyscale (rows, columns) or RGB (rows, columns, 3) array in the file's own number type."""
    mode = im.mode
    if mode in ("L", "I;16", "I;16L", "I;16B", "F", "1"):
        return np.asarray(im)
    if mode == "I":  # 16-bit PNGs may open as 32-bit integers; keep their 16-bit range
        arr = np.asarray(im)
        if arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)
        raise ItemError(f"{path}: 32-bit integer pixels outside the 16-bit range; convert to 8/16-bit or float")
    if mode in ("LA", "RGBA", "PA", "P"):
        im = im.convert("RGBA" if mode != "LA" else "LA")
        arr = np.asarray(im)
        if (arr[..., -1] != 255).any():
            raise ItemError(f"{path}: image has transparent pixels (alpha channel); expected an opaque image")
        return arr[..., :-1] if mode != "LA" else arr[..., 0]
    if mode == "RGB":
        return np.asarray(im)
    try:
        return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as exc:
        raise ItemError(f"{path}: unsupported pixel mode {mode!r} ({exc})") from None


def conform_channels(pixels: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """Check the channel count against the config; an RGB file whose three channels are equal
    (greyscale saved as RGB, frequent for exported radiographs) is accepted as greyscale."""
    c = pixels.shape[0]
    if c == channels:
        return pixels
    if channels == 1 and c == 3 and np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2]):
        return pixels[:1]
    what = {1: "greyscale", 3: "RGB"}
    raise ItemError(f"{path}: image has {c} channel(s) ({what.get(c, 'unexpected')}), expected {channels} ({what[channels]}; ingest.images.channels)")
