"""Reading and writing nnU-Net v2 raw datasets: dataset.json, image/label pairing and NIfTI volumes. The one
place that reads and writes a dataset.json (`read_dataset_json`, `mri_dataset_json`, `write_dataset_json`) and
that names a case's files (`image_file`, `label_file`, `case_id_of_image`, `case_id_of_label`,
`case_id_of_file`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pedseg_core.errors import DatasetError, PedsegError

NIFTI_ENDINGS = (".nii.gz", ".nii")
FILE_ENDING = NIFTI_ENDINGS[0]  # the file_ending of every dataset pedseg writes
REQUIRED_KEYS = ("labels", "channel_names", "file_ending")
DATASET_JSON = "dataset.json"
CHANNEL_0 = "_0000"  # nnU-Net's suffix of a case's first (here: only) image channel


@dataclass(frozen=True)
class Case:
    """One case: its channel-0 image and its label (None for an unlabeled test image)."""

    case_id: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class RawDataset:
    """An nnU-Net v2 raw dataset: dataset.json plus imagesTr/labelsTr and optional imagesTs/labelsTs."""

    root: Path
    name: str
    labels: dict[str, int]
    file_ending: str
    train: tuple[Case, ...]
    test: tuple[Case, ...]

    @property
    def bones(self) -> list[str]:
        """Label names except background, ordered by value."""
        return [name for name, value in self.labels.items() if value != 0]

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def read_dataset(root: Path) -> RawDataset:
    """Parse dataset.json and pair files; raises DatasetError for structural problems. Reads no image data."""
    dataset, problems = scan_dataset(root)
    if problems:
        raise DatasetError(root, problems)
    return dataset


def scan_dataset(root: Path) -> tuple[RawDataset | None, list[str]]:
    """Like read_dataset, but return the structural problems instead of raising.

    The dataset holds only well-formed cases. It is None when the folder, its dataset.json or the
    file_ending is unusable; its labels are empty when the dataset.json labels are unusable.
    """
    root = Path(root)
    if not root.exists():
        return None, [f"{root}: dataset folder does not exist"]
    if not root.is_dir():
        return None, [f"{root}: not a directory (expected an nnU-Net dataset folder)"]
    problems: list[str] = []
    json_path = root / DATASET_JSON
    meta = _read_metadata(root, problems)
    if meta is None:
        return None, problems
    labels = _parse_labels(meta.get("labels"), json_path, problems)
    n_channels = _parse_channels(meta.get("channel_names"), json_path, problems)
    file_ending = meta.get("file_ending")
    if file_ending is None:
        return None, problems
    if file_ending not in NIFTI_ENDINGS:
        problems.append(f'{json_path}: file_ending {file_ending!r} is not supported, use ".nii.gz" or ".nii"')
        return None, problems
    name = meta.get("name")
    dataset = RawDataset(
        root=root,
        name=name if isinstance(name, str) and name else root.name,
        labels=labels,
        file_ending=file_ending,
        train=_pair(root / "imagesTr", root / "labelsTr", file_ending, n_channels, problems, training=True),
        test=_pair(root / "imagesTs", root / "labelsTs", file_ending, n_channels, problems, training=False),
    )
    return dataset, problems


def image_file(case_id: str, file_ending: str) -> str:
    """The file name of a case's image: "knee_003" -> "knee_003_0000.nii.gz"."""
    return f"{case_id}{CHANNEL_0}{file_ending}"


def label_file(case_id: str, file_ending: str) -> str:
    """The file name of a case's label: "knee_003" -> "knee_003.nii.gz"."""
    return f"{case_id}{file_ending}"


def case_id_of_image(path: Path, file_ending: str) -> str:
    """The case id of a channel-0 image: "knee_003_0000.nii.gz" -> "knee_003"."""
    suffix = image_file("", file_ending)
    name = Path(path).name
    if not name.endswith(suffix) or name == suffix:
        raise PedsegError(f"{path}: image name must end in {suffix}")
    return name[: -len(suffix)]


def case_id_of_label(path: Path) -> str:
    """The case id of a label (or predicted label) file: "knee_003.nii.gz" -> "knee_003"."""
    name = Path(path).name
    case_id = _without_nifti_ending(name)
    if case_id == name or not case_id:
        raise PedsegError(f"{path}: label name must end in {' or '.join(NIFTI_ENDINGS)}")
    return case_id


def case_id_of_file(path: Path) -> str:
    """The case id of an image or a label, whichever it is, for files named by hand (`pedseg predict` inputs,
    `pedseg evaluate` folders): "knee_003_0000.nii.gz", "knee_003.nii.gz" and "knee_003.nii" -> "knee_003"."""
    return _without_nifti_ending(Path(path).name).removesuffix(CHANNEL_0)


def _without_nifti_ending(name: str) -> str:
    """The name without its NIfTI ending: "knee_003.nii.gz" -> "knee_003"; any other name as it is."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def read_dataset_json(root: Path) -> dict:
    """The dataset.json of the dataset folder `root` (or the JSON file `root` itself, e.g. `pedseg evaluate
    --labels`) as a JSON object; PedsegError (one line naming the file) when it is missing, unreadable or not
    an object."""
    path = Path(root) if Path(root).is_file() else Path(root) / DATASET_JSON
    if not path.exists():
        raise PedsegError(f"{path}: missing (every nnU-Net dataset needs a dataset.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PedsegError(f"{path}: cannot read: {error.strerror or error}") from None
    except (ValueError, RecursionError) as error:
        raise PedsegError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(meta, dict):
        raise PedsegError(f"{path}: must contain a JSON object, found {type(meta).__name__}")
    return meta


def mri_dataset_json(name: str, labels: Mapping[str, int], num_training: int, description: str | None = None,
                     **extra) -> dict:
    """The dataset.json of a single-channel MRI dataset in pedseg's FILE_ENDING; `extra` keys come last."""
    about = {"description": description} if description is not None else {}
    return {"name": name, **about, "channel_names": {"0": "MRI"}, "labels": dict(labels),
            "numTraining": num_training, "file_ending": FILE_ENDING, **extra}


def dataset_json_text(metadata: Mapping) -> str:
    """dataset.json contents as pedseg writes them: indented JSON and a final newline."""
    return json.dumps(metadata, indent=2) + "\n"


def write_dataset_json(root: Path, metadata: Mapping) -> Path:
    """Write `metadata` as root/dataset.json (root must exist); returns its path."""
    path = Path(root) / DATASET_JSON
    path.write_text(dataset_json_text(metadata), encoding="utf-8")
    return path


def _read_metadata(root: Path, problems: list[str]) -> dict | None:
    """dataset.json as a dict (None when unusable); reports missing required keys."""
    path = root / DATASET_JSON
    try:
        meta = read_dataset_json(root)
    except PedsegError as error:
        problems.append(str(error))
        return None
    missing = [key for key in REQUIRED_KEYS if meta.get(key) is None]
    if missing:
        problems.append(f"{path}: missing required key(s): {', '.join(missing)}")
    return meta


def _parse_labels(raw, path: Path, problems: list[str]) -> dict[str, int]:
    """The labels mapping sorted by value; empty when missing or not a mapping of names to integers."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        problems.append(f'{path}: "labels" must map names to integers, e.g. {{"background": 0, "femur": 1}}')
        return {}
    regions = [name for name, value in raw.items() if isinstance(value, list)]
    if regions:
        problems.append(
            f"{path}: region-based labels (lists of values) are not supported: {', '.join(regions)}"
        )
        return {}
    not_ints = [name for name, value in raw.items() if type(value) is not int]
    if not_ints:
        wrong = ", ".join(f"{name!r}: {raw[name]!r}" for name in not_ints)
        hint = " (nnU-Net v1 style value-to-name mapping?)" if all(k.isdigit() for k in raw) else ""
        problems.append(f'{path}: "labels" values must be integers, got {wrong}{hint}')
        return {}
    labels = dict(sorted(raw.items(), key=lambda item: item[1]))
    if labels.get("background") != 0:
        problems.append(f'{path}: "labels" must contain "background": 0')
    values = list(labels.values())
    if values != list(range(len(values))):
        problems.append(f'{path}: "labels" values must be consecutive from 0, got {values}')
    return labels


def _parse_channels(raw, path: Path, problems: list[str]) -> int:
    """Number of declared channels (1 when missing or invalid)."""
    if raw is None:
        return 1
    if not isinstance(raw, dict) or not raw:
        problems.append(f'{path}: "channel_names" must map channel numbers to names, e.g. {{"0": "T1"}}')
        return 1
    if len(raw) > 1:
        names = ", ".join(f"{key}={value}" for key, value in raw.items())
        problems.append(f"{path}: only single-channel MRI is supported, channel_names declares {names}")
    return len(raw)


def _pair(
    images_dir: Path, labels_dir: Path, file_ending: str, n_channels: int, problems: list[str], training: bool
) -> tuple[Case, ...]:
    """Pair images with labels; training images must have one, test images may not."""
    images = _images_by_case(images_dir, file_ending, n_channels, problems)
    labels = _labels_by_case(labels_dir, file_ending, problems)
    if training and not images:
        state = f"no images named {image_file('<case>', file_ending)}" if images_dir.is_dir() else "folder missing"
        problems.append(f"{images_dir}: {state} (at least one training case is required)")
    elif training and not labels_dir.is_dir():
        problems.append(f"{labels_dir}: folder missing (every training image needs a label)")
        return ()
    for case_id in sorted(labels.keys() - images.keys()):
        problems.append(f"{labels[case_id]}: missing image {images_dir / image_file(case_id, file_ending)}")
    cases = []
    for case_id, image in sorted(images.items()):
        label = labels.get(case_id)
        if label is None and training:
            problems.append(f"{image}: missing label {labels_dir / label_file(case_id, file_ending)}")
        else:
            cases.append(Case(case_id, image, label))
    return tuple(cases)


def _images_by_case(folder: Path, file_ending: str, n_channels: int, problems: list[str]) -> dict[str, Path]:
    """Channel-0 images by case id; reports undeclared channels and misnamed NIfTI files."""
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(file_ending))
    images = {}
    for path in _list_files(folder, problems):
        match = pattern.fullmatch(path.name)
        if match and int(match[2]) == 0:
            images[match[1]] = path
        elif match and int(match[2]) >= n_channels:
            problems.append(
                f"{path}: channel {match[2]} is not declared in dataset.json channel_names "
                f"(only single-channel MRI is supported: images end in {image_file('', file_ending)})"
            )
        elif not match and _looks_like_nifti(path):
            problems.append(f"{path}: image name must end in {image_file('', file_ending)}")
    return images


def _labels_by_case(folder: Path, file_ending: str, problems: list[str]) -> dict[str, Path]:
    """Label files by case id; reports NIfTI files with the wrong ending."""
    labels = {}
    for path in _list_files(folder, problems):
        if path.name.endswith(file_ending):
            labels[path.name[: -len(file_ending)]] = path
        elif _looks_like_nifti(path):
            problems.append(f"{path}: label name must end in {file_ending} (the dataset.json file_ending)")
    return labels


def _list_files(folder: Path, problems: list[str]) -> list[Path]:
    """Sorted files in folder, hidden files (e.g. macOS ._ copies) skipped; empty when it does not exist."""
    if not folder.is_dir():
        return []
    try:
        return sorted(path for path in folder.iterdir() if not (path.name.startswith(".") or path.is_dir()))
    except OSError as error:
        problems.append(f"{folder}: cannot list folder: {error.strerror or error}")
        return []


def _looks_like_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_ENDINGS)
