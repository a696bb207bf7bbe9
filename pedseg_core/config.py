"""The one typed configuration: presets, YAML loading and overrides.

Every tunable number lives here; code reads it from a `PedsegConfig`, never from constants of its own. The
sections are pydantic models: each value is coerced to its type ("3" -> 3, "true" -> True, a list -> a tuple)
and checked against its rule when it is set, unknown keys are refused, and a bad value is one line naming the
option, what it must be and what it got.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from pedseg_core.errors import PedsegError
from pedseg_core.message_dtype import MESSAGE_DTYPES
from pedseg_core.validation_errors import RULE, RULES, one_line

SCHEMES = ("individual", "transfer", "shared", "multi-domain", "contrastive", "full")
CONTRASTIVE_SCHEMES = ("contrastive", "full")
# `shared` federated: one norm set and one head over the union of the bones, everything averaged (plain FedAvg,
# as a stock Flower or NVIDIA FLARE MONAI example does): the peer baseline
FEDERATED_SCHEMES = ("shared", "multi-domain", "contrastive", "full")
UNION_LABEL_SCHEMES = ("shared", "full")  # schemes that need the union label space of all joints
PRIOR_SCHEMES = ("full",)  # schemes with the anatomical shape prior (federated: trained first, stage 1)
PRECISIONS = ("auto", "fp32", "bf16")  # see pedseg_core.precision
AGGREGATIONS = ("mean", "median", "trimmed-mean", "krum", "multikrum", "bulyan")  # server.aggregation.RULES
DEFAULT_PRESET = "small"  # the preset of a run that names none
MLFLOW_SCHEMES = ("file", "http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql")


def rule(check: Callable[[Any], bool], expected: str) -> AfterValidator:
    """A value's rule, worded for users: "<option> must be <expected>, got <value>"."""

    def validate(value: Any) -> Any:
        if not check(value):
            raise PydanticCustomError(RULE, "must be {expected}", {"expected": expected})
        return value

    return AfterValidator(validate)


def choice(*options: str) -> Any:
    """A string that must be one of `options`."""
    return Annotated[str, rule(lambda v: v in options, f"one of {', '.join(options)}")]


Backbone = choice("resnet10", "resnet18", "resnet34")  # MONAI FlexibleUNet ResNet backbones
Norm = choice("batch", "group")
Precision = choice(*PRECISIONS)
Strategy = choice("fedavg", "fedprox")
Aggregation = choice(*AGGREGATIONS)
MessageDtype = choice(*MESSAGE_DTYPES)
Scheme = choice(*SCHEMES)
Text = Annotated[str, BeforeValidator(lambda v: "" if v is None else v)]  # `key=`: YAML reads an empty value as null
AtLeastOne = Annotated[int, rule(lambda v: v >= 1, "at least 1")]
NonNegative = Annotated[float, rule(lambda v: v >= 0, "0 or more")]
Positive = Annotated[float, rule(lambda v: v > 0, "more than 0")]
Seconds = Annotated[float, rule(lambda v: v > 0, "more than 0 seconds")]
Probability = Annotated[float, rule(lambda v: 0 <= v <= 1, "in [0, 1]")]
Widths = Annotated[tuple[int, ...], rule(lambda v: len(v) > 0 and min(v) >= 1, "a list of widths of at least 1")]


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


class Section(BaseModel):
    """A configuration section: unknown keys refused, every assignment checked too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def refuse(message: str) -> PydanticCustomError:
    """A rule between several options, `message` worded whole."""
    return PydanticCustomError(RULES, message)


class ModelConfig(Section):
    backbone: Backbone = "resnet34"
    decoder_channels: Annotated[Widths, rule(lambda v: len(v) == 5, "5 widths (one per ResNet stage)")] = (
        256, 128, 64, 32, 16)
    norm: Norm = "batch"  # domain-specific norm type
    group_norm_groups: AtLeastOne = 8
    encoder_weights: Text = "none"  # none | imagenet (download) | path to a torchvision resnet34 .pth


class ContrastiveConfig(Section):
    weight: NonNegative = 0.1  # weight of the multi-scale supervised contrastive term
    temperature: Positive = 0.1
    scales: Annotated[tuple[int, ...], rule(lambda v: all(0 <= s <= 5 for s in v), "stages in 0..5")] = (0, 1, 2)
    # 0 = bottleneck, 1..5 = decoder stages (coarse to fine)
    hidden: AtLeastOne = 128
    dim: AtLeastOne = 64
    min_prototype_slices: AtLeastOne = 32  # a prototype is a mean over at least this many slices
    max_prototype_slices: AtLeastOne = 128  # ... and over at most this many (a seeded random subset), to bound its cost
    share_prototypes: bool = True  # federated: exchange per-domain prototypes (off: weights only)

    @model_validator(mode="after")
    def _slices_in_order(self) -> ContrastiveConfig:
        if self.max_prototype_slices < self.min_prototype_slices:
            raise refuse(f"contrastive.max_prototype_slices must be at least contrastive.min_prototype_slices "
                         f"({self.min_prototype_slices}), got {self.max_prototype_slices}")
        return self


class PriorConfig(Section):
    weight: NonNegative = 0.1  # weight of the anatomical prior loss (distance between auto-encoder codes)
    channels: Widths = (16, 32, 64, 64)  # auto-encoder widths, each halving the resolution
    # auto-encoder pre-training on the masks (before the segmentation network); federated: rounds x local steps.
    # 600 steps reconstruct the synthetic bones with Dice 0.91-0.98 (200 steps: 0 for most small bones)
    epochs: AtLeastOne = 12
    steps_per_epoch: AtLeastOne = 50
    batch_size: AtLeastOne = 16
    learning_rate: Positive = 1e-3


Percentile = Annotated[float, rule(lambda v: 0 <= v <= 100, "in [0, 100]")]


class DataConfig(Section):
    image_size: Annotated[int, rule(lambda v: v > 0 and v % 32 == 0, "a positive multiple of 32")] = 128
    # in-plane size every slice is resampled to
    lower_percentile: Percentile = 0.5  # robust intensity normalization
    upper_percentile: Percentile = 99.5
    validation_fraction: Annotated[float, rule(lambda v: 0 <= v < 1, "in [0, 1)")] = 0.2
    # held-out cases when a dataset has no labelsTs (and folds = 1)
    folds: AtLeastOne = 1  # > 1: k-fold cross-validation over the training cases (labelsTs then unused)
    fold: int = 0  # which fold is held out (0 .. folds-1)
    foreground_fraction: Probability = 0.5  # share of sampled slices chosen to show a uniformly drawn bone
    augment: bool = True
    rotate_degrees: NonNegative = 15.0
    scale_range: Annotated[float, rule(lambda v: 0 <= v < 1, "in [0, 1)")] = 0.15
    noise_std: NonNegative = 0.05
    augment_probability: Probability = 0.5

    @model_validator(mode="after")
    def _fold_and_percentiles(self) -> DataConfig:
        if not 0 <= self.fold < self.folds:
            raise refuse(f"data.fold must lie in 0..data.folds-1, got fold {self.fold} of {self.folds}")
        if self.lower_percentile >= self.upper_percentile:
            raise refuse(f"data.lower_percentile must be below data.upper_percentile, got {self.lower_percentile} "
                         f"and {self.upper_percentile}")
        return self


class TrainConfig(Section):
    epochs: AtLeastOne = 20
    steps_per_epoch: AtLeastOne = 50
    batch_size: AtLeastOne = 8  # slices per domain in each step (a site's batch in federated training)
    learning_rate: Positive = 1e-3
    weight_decay: NonNegative = 0.0  # Adam as in the paper; L2 decay costs ~5% step time here
    poly_power: NonNegative = 0.9  # nnU-Net-style polynomial learning-rate decay over the whole run
    precision: Precision = "auto"  # auto: bf16 + channels-last where bf16 is native, else fp32
    channels_last: bool = False  # with fp32 or bf16 (auto sets it with bf16)
    num_threads: Annotated[int, rule(lambda v: v >= 0, "0 (torch's default) or more")] = 0  # torch threads
    device: Text = "auto"  # auto (the first CUDA GPU when torch sees one, else the CPU) | cpu | cuda | cuda:N
    seed: int = 0
    lambda_dice: NonNegative = 1.0
    lambda_ce: NonNegative = 1.0


class EvalConfig(Section):
    batch_size: AtLeastOne = 16
    recalibration_slices: AtLeastOne = 256  # federated: BatchNorm statistics re-estimated on at most this many
    largest_component: bool = True  # each predicted bone loses its stray islands (evaluate/postprocess.py)
    component_min_fraction: Annotated[float, rule(lambda v: 0 < v <= 1, "in (0, 1] (1 keeps each bone's largest "
                                                  "component only)")] = 0.1
    # ... keeping its largest 3D component and those >= this fraction of it


class FederationConfig(Section):
    rounds: Annotated[int, rule(lambda v: v >= 0, "0 (the preset's train.epochs) or more")] = 0
    # 0 = train.epochs (one local epoch of train.steps_per_epoch steps per round)
    strategy: Strategy = "fedavg"
    proximal_mu: NonNegative = 0.01  # FedProx: weight of the proximal term on the shared parameters
    min_nodes: AtLeastOne = 2  # the quorum: sites that must be connected before a round starts
    quorum_timeout: Seconds = 600.0  # seconds a round waits for the quorum; then the run ends with a clear message
    fraction_train: Annotated[float, rule(lambda v: 0 < v <= 1, "in (0, 1]")] = 1.0
    # share of connected sites asked to train each round
    round_timeout: Seconds = 1800.0  # seconds to wait for the sites' replies in a round (a dead site's reply
    # comes sooner: the SuperLink answers for it once it misses its heartbeats, within about 60 s)
    evaluate_every: AtLeastOne = 1  # sites evaluate their personalized model every N rounds (and after the last)
    per_case_metrics: bool = False  # ask the sites for per-case metrics (each site's policy decides; default: no)
    norm_bound: Annotated[float, rule(lambda v: v == 0 or v >= 1, "0 (no bound) or at least 1")] = 10.0
    # a training update (its shared weights minus the global ones) whose L2 norm exceeds this many times the
    # median of the other replies' norms in the round is clipped to it (over 1000 times: rejected); 0 = no bound
    aggregation: Aggregation = "mean"  # shared weights: example-weighted mean, or robust: coordinate-wise (median,
    # trimmed-mean) or the updates closest to the others (krum, multikrum; bulyan: both)
    trim_fraction: Annotated[float, rule(lambda v: 0 <= v < 0.5, "in [0, 0.5)")] = 0.2
    # trimmed-mean: the share of values cut at each end, per coordinate
    malicious_sites: Annotated[int, rule(lambda v: v >= 0, "0 or more")] = 0
    # krum, multikrum, bulyan: how many malicious sites a round's aggregate tolerates
    multikrum_selected: AtLeastOne = 2  # multikrum: how many of the updates closest to the others are averaged
    secure_aggregation: bool = False  # SecAgg+: the server learns only the mean of the sites' shared weights
    message_dtype: MessageDtype = "fp16"  # shared weights travel in fp16 (down: rounded; up: the update; measured
    # to cost no Dice: benchmarks/RESULTS.md, precision_dice), or fp32; see pedseg_core.message_dtype; under
    # secure_aggregation they travel as SecAgg+ carries them
    pack_arrays: bool = True  # each record's arrays travel packed into one Array: a few objects per message
    # instead of one per tensor (pedseg_core.packed_arrays); off under secure_aggregation, which carries its own
    cached_sites: Annotated[int, rule(lambda v: v >= 0, "0 or more")] = 3  # site algorithms a client process keeps
    # between messages (a site's warm worker, or a simulation actor serving several virtual sites)

    @model_validator(mode="after")
    def _mean_under_secure_aggregation(self) -> FederationConfig:
        if self.secure_aggregation and self.aggregation != "mean":
            raise refuse(f"federation.aggregation must be mean under secure_aggregation (the server learns only "
                         f"the mean), got '{self.aggregation}'")
        return self

    @model_validator(mode="after")
    def _enough_sites_for_the_robust_rule(self) -> FederationConfig:
        """Krum's guarantee needs n >= 2f + 3 updates, Bulyan's n >= 4f + 3 (f: the malicious sites)."""
        factor = {"krum": 2, "multikrum": 2, "bulyan": 4}.get(self.aggregation)
        if factor and self.min_nodes < factor * self.malicious_sites + 3:
            raise refuse(f"federation.aggregation {self.aggregation} needs federation.min_nodes of at least "
                         f"{factor} x malicious_sites + 3 = {factor * self.malicious_sites + 3}, got {self.min_nodes}")
        return self

    def num_rounds(self, train: TrainConfig) -> int:
        return self.rounds or train.epochs


class TrackingConfig(Section):
    tensorboard: bool = True  # mirror metrics.jsonl and results.json to RUN/tensorboard/ (pedseg_core.tracking)
    mlflow_uri: Annotated[Text, rule(valid_mlflow_uri, "an MLflow tracking URI such as file:///path/to/mlruns or "
                                     "http://host:5000")] = ""  # also to this MLflow tracking URI
    mlflow_experiment: Annotated[Text, rule(lambda v: bool(v.strip()), "the name of an MLflow experiment")] = "pedseg"


class PedsegConfig(Section):
    preset: Text = DEFAULT_PRESET
    scheme: Scheme = "multi-domain"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig)
    prior: PriorConfig = Field(default_factory=PriorConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _secure_aggregation_needs_float_weights(self) -> PedsegConfig:
        if self.federation.secure_aggregation and self.scheme == "shared":
            raise refuse("federation.secure_aggregation needs a scheme whose shared weights are all floating point "
                         "(the shared scheme shares BatchNorm's integer step counters): use multi-domain, "
                         "contrastive or full")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain values (lists for tuples), as config.yaml and config-json hold it."""
        return self.model_dump(mode="json")


# The network of the `demo` and `small` presets. The last decoder stages are 32 wide, not MONAI's 16: 16 channels
# feeding every joint's head slowed federated sites down on small bones (see `small`)
DEMO_NETWORK = {"model": {"backbone": "resnet18", "decoder_channels": (128, 64, 32, 32, 32)},
                "data": {"image_size": 96}}
DEMO_BATCHES = {"batch_size": 6, "learning_rate": 2e-3}  # ... and its batches

PRESETS: dict[str, dict[str, Any]] = {
    # tests: seconds per round
    "tiny": {
        "model": {"backbone": "resnet10", "decoder_channels": (64, 32, 16, 16, 8)},
        "data": {"image_size": 64},
        "train": {"epochs": 2, "steps_per_epoch": 10, "batch_size": 4, "learning_rate": 3e-3},
        "eval": {"batch_size": 32},
        "prior": {"channels": (8, 16, 16), "epochs": 1, "steps_per_epoch": 30, "batch_size": 8},
    },
    # the demo: a few minutes on 2 CPU cores, already a usable segmentation
    "demo": {
        **DEMO_NETWORK,
        "train": {"epochs": 16, "steps_per_epoch": 15, **DEMO_BATCHES},
        "federation": {"evaluate_every": 4},
    },
    # `pedseg reproduce` (all 13 cells within an hour on 2 CPU cores) and benchmarks: the demo's network; many
    # short federated rounds keep the sites from drifting apart. (ResNet-34 at 128x128 learned the small bones
    # too slowly for this budget: 150 steps gave a centralized `full` mean Dice of 0.68 against 0.91 here.)
    # With 16-channel last decoder stages, federated sites learned the knee patella only in rounds 20-28 of 32
    # (sometimes not at all); 32 channels: by round 24 in every run, mostly by round 16 (+20% time).
    "small": {
        **DEMO_NETWORK,
        "train": {"epochs": 32, "steps_per_epoch": 10, **DEMO_BATCHES},
        "federation": {"evaluate_every": 8},
    },
    # the paper's setting: ResNet-34 U-Net at full resolution (hours on CPU, sensible on a GPU)
    "paper": {
        "model": {"encoder_weights": "imagenet"},  # on ModelConfig's ResNet-34
        "data": {"image_size": 256},
        "train": {"epochs": 100, "steps_per_epoch": 250, "batch_size": 16, "precision": "bf16",
                  "channels_last": True},
    },
}


def laid_over(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`base` with the nested mapping `values` laid over it, key by key."""
    merged = dict(base)
    for key, value in values.items():
        merged[key] = laid_over(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


def _resolved(layers: list[tuple[str, dict[str, Any]]]) -> PedsegConfig:
    """The configuration the layers (where, nested values) give, each over the ones before; a bad value is a
    PedsegError naming the last layer that set it."""
    values: dict[str, Any] = {}
    for where, layer in layers:
        if not isinstance(layer, dict):
            raise PedsegError(f"{where}: expected a mapping, got {layer!r}")
        values = laid_over(values, layer)
    try:
        return PedsegConfig.model_validate(values)
    except ValidationError as err:
        loc = err.errors()[0]["loc"]
        where = next((w for w, layer in reversed(layers) if _sets(layer, loc)), layers[-1][0])
        raise PedsegError(f"{where}: {one_line(err, PedsegConfig)}") from None


def _sets(layer: dict[str, Any], loc: tuple) -> bool:
    """Whether the nested mapping `layer` holds the option at `loc` (or the section, for a rule between options)."""
    for part in loc:
        if not isinstance(layer, dict) or part not in layer:
            return False
        layer = layer[part]
    return bool(loc)


def build_config(preset: str = DEFAULT_PRESET, yaml_path: Path | None = None,
                 overrides: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> PedsegConfig:
    """Preset, then a command's `options` (nested dicts: its flags, whose defaults must not hide the file's
    values), then a YAML file, then explicit overrides (nested dicts), each refusing unknown keys. The result
    records what was set over the defaults (`model_fields_set` of each section)."""
    if preset not in PRESETS:
        raise PedsegError(f"preset '{preset}' is unknown (choose from {', '.join(PRESETS)})")
    layers = [(f"preset {preset}", {"preset": preset, **PRESETS[preset]})]
    if options:
        layers.append(("option", options))
    if yaml_path is not None:
        layers.append((str(yaml_path), load_yaml(yaml_path)))
    if overrides:
        layers.append(("override", overrides))
    return _resolved(layers)


def parse_overrides(values: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """["train.epochs=3", "model.norm=group"] -> {"train": {"epochs": 3}, "model": {"norm": "group"}}."""
    dotted: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise PedsegError(f"{value}: expected SECTION.KEY=VALUE, e.g. train.epochs=5")
        dotted[key] = yaml.safe_load(raw)
    return nested(dotted)


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"train.epochs": 3, "scheme": "full"} -> {"train": {"epochs": 3}, "scheme": "full"}."""
    values: dict[str, Any] = {}
    for key, value in dotted.items():
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


def config_from_dict(values: dict[str, Any]) -> PedsegConfig:
    """Rebuild a resolved config (e.g. from a checkpoint or a run's config.yaml)."""
    return _resolved([("config", values)])


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise PedsegError(f"{path}: cannot read it: {err.strerror}") from None
    except UnicodeDecodeError:
        raise PedsegError(f"{path}: not a YAML text file (it is not UTF-8 text)") from None
    except yaml.YAMLError as err:
        raise PedsegError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise PedsegError(f"{path}: expected a mapping at the top level")
    return values


def save_yaml(cfg: PedsegConfig, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
