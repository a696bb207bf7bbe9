"""The one typed configuration: presets, YAML loading and overrides.

Every tunable number lives here; code reads it from a `PedsegConfig`, never from constants of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from pedseg_core.errors import PedsegError
from pedseg_core.message_dtype import MESSAGE_DTYPES

SCHEMES = ("individual", "transfer", "shared", "multi-domain", "contrastive", "full")
CONTRASTIVE_SCHEMES = ("contrastive", "full")
# `shared` federated: one norm set and one head over the union of the bones, everything averaged (plain FedAvg,
# as a stock Flower or NVIDIA FLARE MONAI example does): the peer baseline
FEDERATED_SCHEMES = ("shared", "multi-domain", "contrastive", "full")
UNION_LABEL_SCHEMES = ("shared", "full")  # schemes that need the union label space of all joints


@dataclass
class ModelConfig:
    backbone: str = "resnet34"  # MONAI FlexibleUNet ResNet backbone: resnet10 | resnet18 | resnet34
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    norm: str = "batch"  # domain-specific norm type: batch | group
    group_norm_groups: int = 8
    encoder_weights: str = "none"  # none | imagenet (download) | path to a torchvision resnet34 .pth


@dataclass
class ContrastiveConfig:
    weight: float = 0.1  # weight of the multi-scale supervised contrastive term
    temperature: float = 0.1
    scales: tuple[int, ...] = (0, 1, 2)  # 0 = bottleneck, 1..5 = decoder stages (coarse to fine)
    hidden: int = 128
    dim: int = 64
    min_prototype_slices: int = 32  # a prototype is a mean over at least this many slices
    max_prototype_slices: int = 128  # ... and over at most this many (a seeded random subset), to bound its cost
    share_prototypes: bool = True  # federated: exchange per-domain prototypes (off: weights only)


@dataclass
class PriorConfig:
    weight: float = 0.1  # weight of the anatomical prior loss (distance between auto-encoder codes)
    channels: tuple[int, ...] = (16, 32, 64, 64)  # auto-encoder widths, each halving the resolution
    # auto-encoder pre-training on the masks (before the segmentation network); federated: rounds x local steps.
    # 600 steps reconstruct the synthetic bones with Dice 0.91-0.98 (200 steps: 0 for most small bones)
    epochs: int = 12
    steps_per_epoch: int = 50
    batch_size: int = 16
    learning_rate: float = 1e-3


@dataclass
class DataConfig:
    image_size: int = 128  # in-plane size every slice is resampled to (multiple of 32)
    lower_percentile: float = 0.5  # robust intensity normalization
    upper_percentile: float = 99.5
    validation_fraction: float = 0.2  # held-out cases when a dataset has no labelsTs (and folds = 1)
    folds: int = 1  # > 1: k-fold cross-validation over the training cases (labelsTs then unused)
    fold: int = 0  # which fold is held out (0 .. folds-1)
    foreground_fraction: float = 0.5  # share of sampled slices chosen to show a uniformly drawn bone
    augment: bool = True
    rotate_degrees: float = 15.0
    scale_range: float = 0.15
    noise_std: float = 0.05
    augment_probability: float = 0.5


@dataclass
class TrainConfig:
    epochs: int = 20
    steps_per_epoch: int = 50
    batch_size: int = 8  # slices per domain in each step (a site's batch in federated training)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0  # Adam as in the paper; L2 decay costs ~5% step time here
    poly_power: float = 0.9  # nnU-Net-style polynomial learning-rate decay over the whole run
    precision: str = "auto"  # auto (bf16 + channels-last where bf16 is native, else fp32) | fp32 | bf16 (autocast)
    channels_last: bool = False  # with fp32 or bf16 (auto sets it with bf16)
    num_threads: int = 0  # torch threads; 0 = torch's default
    device: str = "auto"  # auto (the first CUDA GPU when torch sees one, else the CPU) | cpu | cuda | cuda:N
    seed: int = 0
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0


@dataclass
class EvalConfig:
    batch_size: int = 16
    recalibration_slices: int = 256  # federated: BatchNorm statistics re-estimated on at most this many slices
    largest_component: bool = True  # each predicted bone loses its stray islands (evaluate/postprocess.py)
    component_min_fraction: float = 0.1  # ... keeping its largest 3D component and those >= this fraction of it


@dataclass
class FederationConfig:
    rounds: int = 0  # 0 = train.epochs (one local epoch of train.steps_per_epoch steps per round)
    strategy: str = "fedavg"  # fedavg | fedprox
    proximal_mu: float = 0.01  # FedProx: weight of the proximal term on the shared parameters
    min_nodes: int = 2  # the quorum: sites that must be connected before a round starts
    quorum_timeout: float = 600.0  # seconds a round waits for the quorum; then the run ends with a clear message
    fraction_train: float = 1.0  # share of connected sites asked to train each round
    round_timeout: float = 1800.0  # seconds to wait for the sites' replies in a round (a dead site's reply
    # comes sooner: the SuperLink answers for it once it misses its heartbeats, within about 60 s)
    evaluate_every: int = 1  # sites evaluate their personalized model every N rounds (and after the last)
    per_case_metrics: bool = False  # ask the sites for per-case metrics (each site's policy decides; default: no)
    norm_bound: float = 10.0  # a training update (its shared weights minus the global ones) whose L2 norm exceeds
    # this many times the median of the other replies' norms in the round is rejected; 0 = no bound
    aggregation: str = "mean"  # shared weights: mean (example-weighted) | median | trimmed-mean (coordinate-wise)
    trim_fraction: float = 0.2  # trimmed-mean: the share of values cut at each end, per coordinate
    secure_aggregation: bool = False  # SecAgg+: the server learns only the mean of the sites' shared weights
    message_dtype: str = "fp32"  # fp16: shared weights travel in fp16 (down: rounded; up: the update), see
    # pedseg_core.message_dtype; under secure_aggregation they travel as SecAgg+ carries them
    cached_sites: int = 3  # site trainers a client process keeps between messages (a simulation actor serves
    # several virtual sites; a deployed SuperNode starts a process per message, so nothing is kept there)

    def num_rounds(self, train: TrainConfig) -> int:
        return self.rounds or train.epochs


@dataclass
class TrackingConfig:
    tensorboard: bool = True  # mirror metrics.jsonl and results.json to RUN/tensorboard/ (pedseg_core.tracking)
    mlflow_uri: str = ""  # also to this MLflow tracking URI, e.g. file:///path/mlruns or http://host:5000
    mlflow_experiment: str = "pedseg"


@dataclass
class PedsegConfig:
    preset: str = "small"
    scheme: str = "multi-domain"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # tests: seconds per round
    "tiny": {
        "model": {"backbone": "resnet10", "decoder_channels": (64, 32, 16, 16, 8)},
        "data": {"image_size": 64},
        "train": {"epochs": 2, "steps_per_epoch": 10, "batch_size": 4, "learning_rate": 3e-3},
        "eval": {"batch_size": 32},
        "prior": {"channels": (8, 16, 16), "epochs": 1, "steps_per_epoch": 30, "batch_size": 8},
    },
    # the demo: a few minutes on 2 CPU cores, already a usable segmentation. The last decoder stages are 32 wide,
    # not MONAI's 16: 16 channels feeding every joint's head slowed federated sites down on small bones (see `small`)
    "demo": {
        "model": {"backbone": "resnet18", "decoder_channels": (128, 64, 32, 32, 32)},
        "data": {"image_size": 96},
        "train": {"epochs": 16, "steps_per_epoch": 15, "batch_size": 6, "learning_rate": 2e-3},
        "federation": {"evaluate_every": 4},
    },
    # `pedseg reproduce` (all 13 cells within an hour on 2 CPU cores) and benchmarks: the demo's network; many
    # short federated rounds keep the sites from drifting apart. (ResNet-34 at 128x128 learned the small bones
    # too slowly for this budget: 150 steps gave a centralized `full` mean Dice of 0.68 against 0.91 here.)
    # With 16-channel last decoder stages, federated sites learned the knee patella only in rounds 20-28 of 32
    # (sometimes not at all); 32 channels: by round 24 in every run, mostly by round 16 (+20% time).
    "small": {
        "model": {"backbone": "resnet18", "decoder_channels": (128, 64, 32, 32, 32)},
        "data": {"image_size": 96},
        "train": {"epochs": 32, "steps_per_epoch": 10, "batch_size": 6, "learning_rate": 2e-3},
        "federation": {"evaluate_every": 8},
    },
    # the paper's setting: ResNet-34 U-Net at full resolution (hours on CPU, sensible on a GPU)
    "paper": {
        "model": {"backbone": "resnet34", "encoder_weights": "imagenet"},
        "data": {"image_size": 256},
        "train": {"epochs": 100, "steps_per_epoch": 250, "batch_size": 16, "precision": "bf16",
                  "channels_last": True},
    },
}


def _merge(target: Any, values: dict[str, Any], where: str) -> None:
    """Apply a nested mapping of overrides onto a dataclass instance, refusing unknown keys."""
    known = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in known:
            raise PedsegError(f"{where}: unknown option '{key}' (known: {', '.join(sorted(known))})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise PedsegError(f"{where}.{key}: expected a mapping, got {value!r}")
            _merge(current, value, f"{where}.{key}")
        else:
            setattr(target, key, _coerce(current, value, f"{where}.{key}"))


def _coerce(current: Any, value: Any, where: str) -> Any:
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
    elif isinstance(current, tuple):
        if isinstance(value, (list, tuple)):
            return tuple(type(current[0])(v) for v in value) if current else tuple(value)
    elif isinstance(current, str) and value is None:  # `key=` (YAML reads an empty value as null)
        return ""
    elif isinstance(current, (int, float, str)):
        try:
            return type(current)(value)
        except (TypeError, ValueError):
            pass
    raise PedsegError(f"{where}: cannot use {value!r} (expected {type(current).__name__})")


def _validate(cfg: PedsegConfig) -> None:
    if cfg.scheme not in SCHEMES:
        raise PedsegError(f"scheme '{cfg.scheme}' is unknown (choose from {', '.join(SCHEMES)})")
    if cfg.data.image_size % 32:
        raise PedsegError(f"data.image_size must be a multiple of 32, got {cfg.data.image_size}")
    if cfg.model.norm not in ("batch", "group"):
        raise PedsegError(f"model.norm must be 'batch' or 'group', got '{cfg.model.norm}'")
    if cfg.model.backbone not in ("resnet10", "resnet18", "resnet34"):
        raise PedsegError(f"model.backbone must be resnet10, resnet18 or resnet34, got '{cfg.model.backbone}'")
    if cfg.train.precision not in PRECISIONS:
        raise PedsegError(f"train.precision must be one of {', '.join(PRECISIONS)}, got '{cfg.train.precision}'")
    if cfg.federation.strategy not in ("fedavg", "fedprox"):
        raise PedsegError(f"federation.strategy must be fedavg or fedprox, got '{cfg.federation.strategy}'")
    if cfg.data.folds < 1 or not 0 <= cfg.data.fold < cfg.data.folds:
        raise PedsegError(f"data.fold must lie in 0..data.folds-1, got fold {cfg.data.fold} of {cfg.data.folds}")
    if not 0.0 < cfg.eval.component_min_fraction <= 1.0:
        raise PedsegError(f"eval.component_min_fraction must lie in (0, 1] (1 keeps each bone's largest component "
                          f"only), got {cfg.eval.component_min_fraction}")
    if len(cfg.model.decoder_channels) != 5:
        raise PedsegError("model.decoder_channels must list 5 widths (one per ResNet stage)")
    _validate_federation(cfg.federation)
    _validate_tracking(cfg.tracking)
    if cfg.federation.secure_aggregation and cfg.scheme == "shared":
        raise PedsegError("federation.secure_aggregation needs a scheme whose shared weights are all floating point "
                          "(the shared scheme shares BatchNorm's integer step counters): use multi-domain, "
                          "contrastive or full")


STRATEGIES = ("fedavg", "fedprox")
PRECISIONS = ("auto", "fp32", "bf16")  # see pedseg_core.precision
AGGREGATIONS = ("mean", "median", "trimmed-mean")


def _validate_federation(fed: FederationConfig) -> None:
    bounds = [("rounds", fed.rounds >= 0, "0 (the preset's train.epochs) or more"),
              ("proximal_mu", fed.proximal_mu >= 0, "0 or more"),
              ("min_nodes", fed.min_nodes >= 1, "at least 1"),
              ("quorum_timeout", fed.quorum_timeout > 0, "more than 0 seconds"),
              ("fraction_train", 0 < fed.fraction_train <= 1, "in (0, 1]"),
              ("round_timeout", fed.round_timeout > 0, "more than 0 seconds"),
              ("evaluate_every", fed.evaluate_every >= 1, "at least 1"),
              ("cached_sites", fed.cached_sites >= 0, "0 or more"),
              ("norm_bound", fed.norm_bound == 0 or fed.norm_bound >= 1, "0 (no bound) or at least 1"),
              ("aggregation", fed.aggregation in AGGREGATIONS, f"one of {', '.join(AGGREGATIONS)}"),
              ("trim_fraction", 0 <= fed.trim_fraction < 0.5, "in [0, 0.5)"),
              ("message_dtype", fed.message_dtype in MESSAGE_DTYPES, f"one of {', '.join(MESSAGE_DTYPES)}"),
              ("aggregation", not fed.secure_aggregation or fed.aggregation == "mean",
               "mean under secure_aggregation (the server learns only the mean)")]
    for name, ok, expected in bounds:
        if not ok:
            raise PedsegError(f"federation.{name} must be {expected}, got {getattr(fed, name)}")


MLFLOW_SCHEMES = ("file", "http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql")


def valid_mlflow_uri(uri: str) -> bool:
    """Empty (no MLflow), or a tracking URI MLflow understands: file:PATH, http(s)://HOST..., databricks, or a
    database URI (a driver may follow the scheme: postgresql+psycopg2://...); never with spaces."""
    if not uri:
        return True
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if any(c.isspace() for c in uri) or scheme not in MLFLOW_SCHEMES:
        return False
    if scheme in ("http", "https"):
        return bool(parsed.netloc)
    if scheme == "file":
        return bool(parsed.path)
    return scheme == "databricks" or bool(parsed.netloc or parsed.path)


def _validate_tracking(tracking: TrackingConfig) -> None:
    if not valid_mlflow_uri(tracking.mlflow_uri):
        raise PedsegError(f"tracking.mlflow_uri must be an MLflow tracking URI such as file:///path/to/mlruns or "
                          f"http://host:5000, got '{tracking.mlflow_uri}'")
    if not tracking.mlflow_experiment.strip():
        raise PedsegError("tracking.mlflow_experiment must name an MLflow experiment, got ''")


def build_config(preset: str = "small", yaml_path: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> PedsegConfig:
    """Preset, then a YAML file, then explicit overrides (nested dicts), each refusing unknown keys."""
    if preset not in PRESETS:
        raise PedsegError(f"preset '{preset}' is unknown (choose from {', '.join(PRESETS)})")
    cfg = PedsegConfig(preset=preset)
    _merge(cfg, PRESETS[preset], f"preset {preset}")
    if yaml_path is not None:
        _merge(cfg, load_yaml(yaml_path), str(yaml_path))
    if overrides:
        _merge(cfg, overrides, "override")
    _validate(cfg)
    return cfg


def parse_overrides(values: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """["train.epochs=3", "model.norm=group"] -> {"train": {"epochs": 3}, "model": {"norm": "group"}}."""
    overrides: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise PedsegError(f"{value}: expected SECTION.KEY=VALUE, e.g. train.epochs=5")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return overrides


def config_from_dict(values: dict[str, Any]) -> PedsegConfig:
    """Rebuild a resolved config (e.g. from a checkpoint or a run's config.yaml)."""
    cfg = PedsegConfig()
    _merge(cfg, values, "config")
    _validate(cfg)
    return cfg


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise PedsegError(f"{path}: cannot read config: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise PedsegError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise PedsegError(f"{path}: expected a mapping at the top level")
    return values


def save_yaml(cfg: PedsegConfig, path: Path) -> None:
    values = cfg.to_dict()
    values["model"]["decoder_channels"] = list(values["model"]["decoder_channels"])
    Path(path).write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
