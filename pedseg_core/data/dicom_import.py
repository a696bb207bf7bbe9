"""DICOM in: every MR series under a folder -> an image-only nnU-Net v2 raw dataset that pedseg can predict on.

``import_dicom(dicom_dir, out, joint)`` finds every DICOM series under ``dicom_dir`` (recursively, grouped by
folder and SeriesInstanceUID), checks that each one is a single 3D stack of slices, and writes

* ``out/imagesTs/<joint>_<NNN>_0000.nii.gz``: one NIfTI volume per series, NNN = 001, 002 ... in the order of
  (series folder, SeriesInstanceUID);
* ``out/dataset.json``: channel_names {"0": "MRI"}, the joint's labels, file_ending ".nii.gz", numTraining 0;
* ``out/series.tsv``: case id, source folder (relative to dicom_dir) and SeriesInstanceUID of each case.

pydicom reads the headers (a few tags; the pixel data is only located, never loaded), SimpleITK reads the
pixels of each checked series and writes the NIfTI. No patient name, ID, date or other DICOM tag is copied:
the NIfTI header holds only voxels and geometry, and series.tsv only the three columns above. Folder names and
the SeriesInstanceUID (which links a case back to the archive) are pseudonymous, not anonymous.

Geometry: voxel (i, j, k) of the NIfTI array (as nibabel reads it) is column i, row j of the k-th slice along
the slice normal (row cosines x column cosines of ImageOrientationPatient). The voxel-to-LPS map is rebuilt
from ImagePositionPatient, ImageOrientationPatient, PixelSpacing and the distance between slice positions;
SimpleITK writes it as the RAS affine (first two world axes negated) in the NIfTI sform and qform.

A series is refused, with one ``"<folder>: series <uid>: <problem>"`` line, when a file of it holds no pixel
data, its slices differ in size, orientation or pixel spacing, its slice positions have a gap (missing
slices), are otherwise uneven, repeat (several echoes or time points in one series) or are not stacked along
the slice normal, or when it is a single 2D slice, a colour image, not MR, split over several folders, or
declares more voxels (Rows x Columns x frames) than one volume may hold (``nifti.MAX_VOLUME_BYTES``, checked
before any pixel is read). A deflated file whose dataset inflates to over ``MAX_INFLATED_BYTES`` is refused
before pydicom inflates it (pydicom inflates a deflated file whole, even to read its header).
One bad series refuses the whole import (DatasetError listing every problem) and nothing is written. Slices
missing at either end of a stack cannot be detected. A single multi-frame file is read with SimpleITK's own
geometry. DICOM files of a series without any pixel data (reports, presentation states) are skipped and
listed in ``ImportReport.skipped``.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pedseg_core import __version__
from pedseg_core.data.joints import joint_labels
from pedseg_core.data.nifti import MAX_HEADER_BYTES, MAX_VOLUME_BYTES, volume_bytes
from pedseg_core.data.nnunet import (
    DATASET_JSON,
    FILE_ENDING,
    NIFTI_ENDINGS,
    dataset_json_text,
    image_file,
    mri_dataset_json,
)
from pedseg_core.errors import DatasetError, PedsegError

SERIES_TSV = "series.tsv"
SPACING_TOLERANCE = 0.01  # relative: slice steps within 1% of each other are even
DUPLICATE_MM = 0.01  # slices closer than this share a position
STACK_TOLERANCE = 0.05  # in-plane offset between slices allowed, as a fraction of the pixel spacing
ORIENTATION_TOLERANCE = 1e-3  # direction cosines: equal between slices, unit length and orthogonal
HEADER_TAGS = ["SeriesInstanceUID", "Modality", "Rows", "Columns", "SamplesPerPixel", "NumberOfFrames",
               "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData"]
MAX_INFLATED_BYTES = MAX_VOLUME_BYTES // 2 + MAX_HEADER_BYTES  # a deflated file's dataset: int16 voxels + header
_META_START = 132 + 12  # preamble, "DICM", then (0002,0000) FileMetaInformationGroupLength: tag, VR, length, UL


@dataclass(frozen=True)
class ImportedCase:
    """One imported series."""

    case_id: str
    source: Path  # the series folder
    series_uid: str
    image: Path  # the NIfTI written
    shape: tuple[int, int, int]  # voxels along the NIfTI array axes: columns, rows, slices
    spacing: tuple[float, float, float]  # mm along the same axes


@dataclass(frozen=True)
class ImportReport:
    """What import_dicom wrote, for the command line's summary."""

    dicom_dir: Path
    out: Path
    joint: str
    cases: tuple[ImportedCase, ...]
    skipped: tuple[str, ...] = ()  # one "<file>: <why>" line per DICOM file that is not part of an image series

    def summary(self) -> str:
        lines = [f"imported {len(self.cases)} series from {self.dicom_dir} into {self.out} ({self.joint})"]
        for case in self.cases:
            shape = " x ".join(str(size) for size in case.shape)
            spacing = " x ".join(f"{size:.3g}" for size in case.spacing)
            lines.append(f"{case.case_id}: {case.source}  {shape} voxels, {spacing} mm")
        lines.extend(f"skipped {line}" for line in self.skipped)
        lines.append(f"series list: {self.out / SERIES_TSV}")
        return "\n".join(lines)


@dataclass
class _Series:
    """A checked series, ready to read: files sorted along the slice normal and its LPS geometry."""

    folder: Path
    uid: str
    files: list[Path]
    origin: tuple[float, ...] | None = None  # None: a multi-frame file, SimpleITK's own geometry
    spacing: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    problems: list[str] = field(default_factory=list)


def import_dicom(dicom_dir: Path, out: Path, joint: str, overwrite: bool = False) -> ImportReport:
    """Convert every DICOM series under dicom_dir into out/imagesTs/<joint>_<NNN>_0000.nii.gz (see the module).

    Raises PedsegError when dicom_dir holds no DICOM image series or an output exists (unless overwrite),
    DatasetError listing every bad series (one line each); nothing is written then.
    """
    dicom_dir, out = Path(dicom_dir), Path(out)
    labels = joint_labels(joint)
    if not dicom_dir.exists():
        raise PedsegError(f"{dicom_dir}: no such folder")
    if not dicom_dir.is_dir():
        raise PedsegError(f"{dicom_dir}: not a folder (give the folder that holds the DICOM series)")
    series, skipped, problems = _find_series(dicom_dir)
    problems += [line for one in series for line in one.problems]
    if problems:
        raise DatasetError(dicom_dir, problems)
    cases = [f"{joint}_{number:03d}" for number in range(1, len(series) + 1)]
    images = [out / "imagesTs" / image_file(case, FILE_ENDING) for case in cases]
    _check_outputs(out, images, overwrite)
    return _write(dicom_dir, out, joint, labels, series, cases, images, skipped)


# ---------------------------------------------------------------------------------------------------
# Finding and checking series
# ---------------------------------------------------------------------------------------------------


def _find_series(dicom_dir: Path) -> tuple[list[_Series], tuple[str, ...], list[str]]:
    """Every image series under dicom_dir, checked, ordered by (folder, uid); skipped-file and unreadable lines."""
    with_pixels: dict[tuple[Path, str], list] = {}  # (folder, uid) -> [(path, header)]
    without_pixels: dict[tuple[Path, str], list[Path]] = {}
    unreadable, n_folders = [], 0
    for folder, files in _folders(dicom_dir):
        n_folders += 1
        for path in files:
            try:
                header = _read_header(path)
            except InvalidDicomError:
                continue  # not DICOM (no "DICM" preamble): notes, scripts, viewers
            except _Oversized as error:
                unreadable.append(f"{folder}: {path.name}: {error}")
                continue
            except Exception as error:  # noqa: BLE001 - pydicom fails on broken files in many ways
                reason = " ".join(str(error).split()) or type(error).__name__
                unreadable.append(f"{folder}: {path.name}: cannot read the DICOM header: {reason}")
                continue
            key = (folder, str(header.get("SeriesInstanceUID", "")).strip() or "?")
            if "PixelData" in header:  # present, not loaded (deferred)
                with_pixels.setdefault(key, []).append((path, header))
            else:
                without_pixels.setdefault(key, []).append(path)
    if not with_pixels and not unreadable:
        if without_pixels:
            files = [path for paths in without_pixels.values() for path in paths]
            raise PedsegError(f"{dicom_dir}: no DICOM image series: {len(files)} DICOM file(s), none with pixel "
                              f"data (e.g. {files[0]})")
        raise PedsegError(f"{dicom_dir}: no DICOM series found (no DICOM files in {n_folders} folder(s), searched "
                          "recursively)")
    keys = sorted(with_pixels, key=lambda key: (key[0].relative_to(dicom_dir).as_posix(), key[1]))
    series = [_check_series(*key, with_pixels[key], without_pixels.pop(key, [])) for key in keys]
    folders: dict[str, list[Path]] = {}
    for one in series:
        folders.setdefault(one.uid, []).append(one.folder)
    for one in series:
        if len(folders[one.uid]) > 1 and one.folder == folders[one.uid][0]:
            one.problems.append(f"{one.folder}: series {one.uid}: also found in "
                                f"{', '.join(map(str, folders[one.uid]))}; a series must lie in one folder "
                                "(copied twice, or split?)")
    skipped = tuple(f"{path}: DICOM without pixel data (a report, presentation state or the like)"
                    for paths in without_pixels.values() for path in paths)
    return series, skipped, unreadable


class _Oversized(Exception):
    """A file that would take more memory to read than the caps allow."""


def _read_header(path: Path) -> pydicom.Dataset:
    """The header tags of one file; the pixel data is only located, never loaded.

    pydicom inflates a deflated file's dataset whole, pixels included: its inflated size is first counted,
    chunk by chunk, and a file inflating to over MAX_INFLATED_BYTES is refused (_Oversized)."""
    meta = read_file_meta_info(path)  # InvalidDicomError without the "DICM" preamble
    if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        length = meta.get("FileMetaInformationGroupLength")
        if not isinstance(length, int):
            raise _Oversized("deflated DICOM without FileMetaInformationGroupLength (0002,0000)")
        if _inflated_size(path, _META_START + length) > MAX_INFLATED_BYTES:
            raise _Oversized(f"deflated DICOM inflates to over {MAX_INFLATED_BYTES // 2**20} MiB, the cap per file "
                             "(refused before inflating it)")
    return pydicom.dcmread(path, defer_size=1024, specific_tags=HEADER_TAGS)


def _inflated_size(path: Path, start: int) -> int:
    """Bytes the raw deflate stream from `start` inflates to, counted up to just over MAX_INFLATED_BYTES."""
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with path.open("rb") as stream:
        stream.seek(start)
        while total <= MAX_INFLATED_BYTES and (pending := stream.read(2**20)):
            while pending and total <= MAX_INFLATED_BYTES:
                try:
                    total += len(inflater.decompress(pending, 2**22))
                except zlib.error:
                    return total  # broken: pydicom's own reading reports it
                pending = inflater.unconsumed_tail
    return total


def _declared_size_problem(headers: list, where: str) -> str | None:
    """The problem of a series whose Rows x Columns x frames, as pedseg would read it, exceeds
    MAX_VOLUME_BYTES, checked before any pixel is read; also of malformed Rows, Columns or NumberOfFrames."""
    try:
        rows = max(int(header.get("Rows")) for header in headers)
        columns = max(int(header.get("Columns")) for header in headers)
        frames = sum(int(header.get("NumberOfFrames") or 1) for header in headers)
    except (TypeError, ValueError):
        return f"{where}: missing or malformed Rows, Columns or NumberOfFrames (0028,0010 / 0028,0011 / 0028,0008)"
    size = volume_bytes((columns, rows, frames), 1)
    if size <= MAX_VOLUME_BYTES:
        return None
    return (f"{where}: declares {columns} x {rows} x {frames} voxels, {size / 2**20:,.0f} MiB as read, over the cap "
            f"of {MAX_VOLUME_BYTES // 2**20} MiB per volume (refused before reading its pixels)")


def _folders(root: Path):
    """(folder, sorted regular non-hidden files) of root and every folder below it that holds files."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        files = [Path(folder) / name for name in sorted(names) if not name.startswith(".")]
        files = [path for path in files if path.is_file()]
        if files:
            yield Path(folder), files


def _check_series(folder: Path, uid: str, slices: list, blank: list[Path]) -> _Series:
    """Check that the files with pixel data make one evenly spaced 3D stack; blank: its files without."""
    series = _Series(folder, uid, [path for path, _ in slices])
    where = f"{folder}: series {uid}"
    if blank:
        series.problems.append(f"{where}: {blank[0].name} is DICOM but holds no pixel data"
                               + (f" ({len(blank)} such files)" if len(blank) > 1 else ""))
        return series
    headers = [header for _, header in slices]
    modalities = {str(header.get("Modality", "")) for header in headers} - {""}
    if modalities - {"MR"}:
        series.problems.append(f"{where}: modality {', '.join(sorted(modalities))}, not MR (pedseg segments MRI)")
    if any(header.get("SamplesPerPixel", 1) != 1 for header in headers):
        series.problems.append(f"{where}: colour image ({headers[0].get('SamplesPerPixel')} samples per pixel); "
                               "pedseg needs grey-scale MRI")
    oversized = _declared_size_problem(headers, where)
    if oversized:
        series.problems.append(oversized)
        return series
    sizes = Counter((header.get("Columns"), header.get("Rows")) for header in headers)
    if len(sizes) > 1:
        counts = ", ".join(f"{size[0]}x{size[1]} in {count} file(s)" for size, count in sizes.most_common())
        series.problems.append(f"{where}: mixed series: slices of different sizes ({counts})")
    if max(int(header.get("NumberOfFrames") or 1) for header in headers) > 1:
        if len(slices) > 1:
            series.problems.append(f"{where}: {len(slices)} files, some multi-frame; pedseg reads one file per "
                                   "slice or a single multi-frame file")
        return series  # a single multi-frame file: SimpleITK's geometry (per-frame positions not checked)
    if len(slices) == 1:
        series.problems.append(f"{where}: a single 2D slice ({slices[0][0].name}), not a 3D volume")
    if not series.problems:
        _check_stack(series, slices, where)
    return series


def _check_stack(series: _Series, slices: list, where: str) -> None:
    """Orientation, pixel spacing and slice positions of single-frame slices; sets the series geometry."""
    names = [path.name for path, _ in slices]
    try:
        positions = np.array([header.ImagePositionPatient for _, header in slices], dtype=float)
        orientations = np.array([header.ImageOrientationPatient for _, header in slices], dtype=float)
        spacings = np.array([header.PixelSpacing for _, header in slices], dtype=float)
        if positions.shape[1:] != (3,) or orientations.shape[1:] != (6,) or spacings.shape[1:] != (2,):
            raise ValueError
    except (AttributeError, TypeError, ValueError):
        series.problems.append(f"{where}: missing or malformed ImagePositionPatient, ImageOrientationPatient or "
                               "PixelSpacing (0020,0032 / 0020,0037 / 0028,0030)")
        return
    odd = np.flatnonzero(np.abs(orientations - orientations[0]).max(axis=1) > ORIENTATION_TOLERANCE)
    if odd.size:
        series.problems.append(f"{where}: mixed series: {odd.size} of {len(names)} slices have another orientation "
                               f"(ImageOrientationPatient) than {names[0]}, e.g. {names[odd[0]]}")
    odd = np.flatnonzero(np.abs(spacings - spacings[0]).max(axis=1) > SPACING_TOLERANCE * spacings[0].min())
    if odd.size:
        series.problems.append(f"{where}: mixed series: {odd.size} of {len(names)} slices have another pixel "
                               f"spacing than {names[0]}, e.g. {names[odd[0]]}")
    row, column = orientations[0, :3], orientations[0, 3:]
    if (abs(np.linalg.norm(row) - 1) > ORIENTATION_TOLERANCE or abs(np.linalg.norm(column) - 1) > ORIENTATION_TOLERANCE
            or abs(row @ column) > ORIENTATION_TOLERANCE):
        series.problems.append(f"{where}: ImageOrientationPatient of {names[0]} is not two orthogonal unit vectors")
    if series.problems:
        return
    row = row / np.linalg.norm(row)
    column = column - (column @ row) * row
    column /= np.linalg.norm(column)
    normal = np.cross(row, column)
    order = np.argsort(positions @ normal, kind="stable")
    positions, names = positions[order], [names[i] for i in order]
    heights = positions @ normal
    steps = np.diff(heights)
    shear = np.abs(positions - positions[0] - np.outer(heights - heights[0], normal)).max()
    if shear > STACK_TOLERANCE * spacings[0].min() + 1e-3:
        series.problems.append(f"{where}: slice positions are not stacked along the slice normal (in-plane offsets "
                               f"up to {shear:.3g} mm)")
        return
    repeated = np.flatnonzero(steps < DUPLICATE_MM)
    if repeated.size:
        i = repeated[0]
        series.problems.append(
            f"{where}: mixed series: {repeated.size} slice position(s) occur more than once (several echoes, time "
            f"points or copies of a file in one series?), e.g. {names[i]} and {names[i + 1]}"
        )
        return
    reference = float(steps.min())
    uneven = np.flatnonzero(np.abs(steps - reference) > SPACING_TOLERANCE * reference)
    if uneven.size:
        ratios = steps[uneven] / reference
        if (np.abs(ratios - np.round(ratios)) < 0.1).all():
            i = uneven[0]
            missing = int(np.round(ratios).sum() - ratios.size)
            series.problems.append(
                f"{where}: missing slices: gap of {steps[i]:.4g} mm between {names[i]} and {names[i + 1]} where "
                f"slices are {reference:.4g} mm apart ({missing} slice(s) missing in {uneven.size} gap(s))"
            )
        else:
            series.problems.append(
                f"{where}: non-uniform slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm between "
                "slice positions (missing or extra slices?)"
            )
        return
    series.files = [slices[i][0] for i in order]
    series.origin = tuple(float(v) for v in positions[0])
    # PixelSpacing is (between rows, between columns): the column index (x) steps along the row cosines.
    series.spacing = (float(spacings[0][1]), float(spacings[0][0]), float(steps.mean()))
    series.direction = tuple(float(v) for v in np.column_stack([row, column, normal]).ravel())


def _first_line(error: Exception) -> str:
    """The ITK message of a SimpleITK error, without its source-file preamble."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        for marker in ("ITK ERROR:", "sitk::ERROR:"):
            if marker in line:
                return line.split(marker, 1)[1].strip()
    return lines[-1] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------


def _check_outputs(out: Path, images: list[Path], overwrite: bool) -> None:
    """Refuse to overwrite (unless asked) and to mix this import with other cases of an existing dataset."""
    if out.exists() and not out.is_dir():
        raise PedsegError(f"{out}: exists and is not a folder")
    for folder in ("imagesTr", "labelsTr", "labelsTs"):
        if (out / folder).is_dir() and any(path for path in (out / folder).iterdir()
                                           if not path.name.startswith(".")):
            raise PedsegError(f"{out / folder}: the output folder already holds another dataset; import into a new "
                              "folder")
    if (out / "imagesTs").is_dir():
        expected = {path.name for path in images}
        for path in sorted((out / "imagesTs").iterdir()):
            if path.name.lower().endswith(NIFTI_ENDINGS) and not path.name.startswith(".") \
                    and path.name not in expected:
                raise PedsegError(f"{path}: not part of this import (it has fewer series); remove it or import into "
                                  "a new folder")
    existing = [path for path in [out / DATASET_JSON, out / SERIES_TSV, *images] if path.exists()]
    if existing and not overwrite:
        raise PedsegError(f"{existing[0]}: already exists ({len(existing)} output file(s) would be overwritten; "
                          "pass overwrite / --overwrite or choose another output folder)")


def _write(dicom_dir: Path, out: Path, joint: str, labels: dict[str, int], series: list[_Series],
           cases: list[str], images: list[Path], skipped: tuple[str, ...]) -> ImportReport:
    """Read each series into a temporary NIfTI; only when all succeed, move them and the metadata in place."""
    created = [folder for folder in (out, out / "imagesTs") if not folder.exists()]
    (out / "imagesTs").mkdir(parents=True, exist_ok=True)
    temporary: list[Path] = []
    problems: list[str] = []
    written = []
    try:
        for one, case, image in zip(series, cases, images):
            volume = _read_series(one, problems)
            if volume is None:
                continue
            tmp = image.with_name(f".{image.name[: -len(FILE_ENDING)]}.{os.getpid()}.tmp{FILE_ENDING}")
            temporary.append(tmp)
            sitk.WriteImage(volume, str(tmp), useCompression=True)
            written.append(ImportedCase(case, one.folder, one.uid, image, tuple(volume.GetSize()),
                                        tuple(float(v) for v in volume.GetSpacing())))
        if problems:
            raise DatasetError(dicom_dir, problems)
        rows = ["case_id\tsource\tseries_instance_uid"]
        rows += [f"{case.case_id}\t{case.source.relative_to(dicom_dir).as_posix()}\t{case.series_uid}"
                 for case in written]
        metadata = mri_dataset_json(
            joint, labels, 0, f"pediatric {joint} MRI imported from DICOM ({len(written)} series; see {SERIES_TSV})",
            numTest=len(written), joint=joint, generator=f"pedseg dicom import {__version__}")
        tsv = _write_text(out / SERIES_TSV, "\n".join(rows) + "\n", temporary)
        meta = _write_text(out / DATASET_JSON, dataset_json_text(metadata), temporary)
        for tmp, image in zip(temporary, images):
            os.replace(tmp, image)
        os.replace(tsv, out / SERIES_TSV)
        os.replace(meta, out / DATASET_JSON)
        temporary.clear()
    except OSError as error:
        raise PedsegError(f"{error.filename or out}: cannot write: {error.strerror or error}") from None
    except RuntimeError as error:  # SimpleITK's writer
        raise PedsegError(f"{out / 'imagesTs'}: cannot write NIfTI: {_first_line(error)}") from None
    finally:
        for tmp in temporary:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if temporary or problems:
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when left empty
    return ImportReport(dicom_dir, out, joint, tuple(written), skipped)


def _write_text(path: Path, text: str, temporary: list[Path]) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.append(tmp)
    tmp.write_text(text, encoding="utf-8")
    return tmp


def _read_series(series: _Series, problems: list[str]) -> sitk.Image | None:
    """The series' voxels with the checked LPS geometry and no DICOM tags; None (and a problem) on failure."""
    names = [str(path) for path in series.files]
    warnings = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # the series is checked above; no ITK noise on stderr
    try:
        volume = sitk.ReadImage(names[0] if len(names) == 1 else names, imageIO="GDCMImageIO")
    except RuntimeError as error:
        problems.append(f"{series.folder}: series {series.uid}: cannot read pixel data: {_first_line(error)}")
        return None
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(warnings)
    if volume.GetDimension() != 3 or volume.GetNumberOfComponentsPerPixel() != 1:
        problems.append(f"{series.folder}: series {series.uid}: read as a {volume.GetDimension()}D image with "
                        f"{volume.GetNumberOfComponentsPerPixel()} component(s), not a 3D grey-scale volume")
        return None
    for key in volume.GetMetaDataKeys():
        volume.EraseMetaData(key)
    if series.origin is not None:
        volume.SetOrigin(series.origin)
        volume.SetSpacing(series.spacing)
        volume.SetDirection(series.direction)
    return volume
