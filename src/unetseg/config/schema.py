"""The configuration tree: one pydantic model per stage, validated on every assignment.

The same tree is written as ``config.json`` into every checkpoint, so a checkpoint alone is enough to predict:
the model, the class map, the normalisation and the patch size travel with the weights. Types, ranges and
the choices this layer owns are checked here; the model and loss names and their options are checked
against their registries by :func:`unetseg.validate.check_config`, one layer up.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from unetseg.errors import ConfigError

# The choices this layer owns; the stages that implement them import these (one place for each).
NORMALIZATIONS = ("zscore", "percentile", "window", "ct", "steps", "none")
CACHE_MODES = ("auto", "memory", "lazy")
PAD_MODES = ("reflect", "constant")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("poly", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SWITCHES = ("auto", "on", "off")
BLENDS = ("gaussian", "constant")
TASKS = ("semantic", "instances")
POSTPROCESS_OPS = ("largest", "min_size")
InstanceTarget = Literal["three_class", "distance"]
INSTANCE_TARGETS: tuple[str, ...] = get_args(InstanceTarget)
# Bins of the distance target: class k (1..K) holds normalised distances in ((k-1)/K, k/K]. An object fills
# every bin only when it is at least K px deep, so 4 suits nuclei down to ~8 px across and makes rings ~2 px
# thick on 8 px deep ones (enough pixels per class for a stable Dice term; 5+ thins them and empties bins
# on small objects, 3 makes the expected distance coarse). Its step (0.25) is not the seeds' default h
# (0.2): on a confident map whether a one-bin dip splits two maxima never hangs on float rounding.
DISTANCE_BINS = 4


SpatialDims = Literal[2, 3]


def as_spatial_dims(n: int) -> SpatialDims:
    """``n`` as a model's dimensionality: 2 or 3, else a ConfigError."""
    if n not in (2, 3):
        raise ConfigError(f"model.spatial_dims: {n}D data; unetseg segments 2D and 3D images")
    return 2 if n == 2 else 3


def instance_classes(target: str) -> int:
    """Classes of an instance model: background, interior, boundary; or background and the distance bins."""
    if target not in INSTANCE_TARGETS:
        raise ConfigError(f"instance target {target!r}: expected one of {', '.join(INSTANCE_TARGETS)}")
    return 1 + DISTANCE_BINS if target == "distance" else 3


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


def _switch(value: Any) -> Any:
    # YAML reads on/off/yes/no as booleans; config.json of older runs stores channels_last as a string
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


def _names(value: Any) -> Any:
    # "--log tensorboard,mlflow" arrives as one string
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


Int = Annotated[int, BeforeValidator(_not_bool), Strict()]
Float = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
PosInt = Annotated[Int, Field(ge=1)]
Count = Annotated[Int, Field(ge=0)]
Prob = Annotated[Float, Field(ge=0.0, le=1.0)]
Seed = Annotated[Int, Field(ge=0, le=2**63 - 1)]
Size = Annotated[list[PosInt], Field(min_length=2, max_length=3)]
Range = Annotated[list[Float], Field(min_length=2, max_length=2)]
Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")]
ClassValue = Int | Float | Annotated[list[Int | Float], Field(min_length=1)]


def show_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_message(err: ValidationError, source: str, prefix: str = "") -> str:
    """One line for the first problem pydantic found (and how many more there are)."""
    errors = err.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    shown = "input" in first and first.get("type") != "missing" and not isinstance(first["input"], dict)
    got = f" (got {show_value(first['input'])})" if shown else ""
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{source}: {loc or 'value'}: {msg}{got}{more}"


class Section(BaseModel):
    """Common settings: unknown keys are errors, every assignment is validated, no NaN/inf. A bad value
    assigned to an option is one :class:`~unetseg.errors.ConfigError` line; the constructors raise
    pydantic's ``ValidationError`` (a ``ValueError`` too); :func:`unetseg.config.build_config` turns every
    source into one ConfigError line."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise ConfigError(validation_message(e, type(self).__name__)) from None


def _ordered(v: list[float] | None, strict: bool = False) -> list[float] | None:
    if v is not None and (v[0] > v[1] or (strict and v[0] == v[1])):
        raise ValueError(f"expected [lo, hi] with lo {'<' if strict else '<='} hi")
    return v


class ModelConfig(Section):
    """Which network to build. ``options`` holds every other keyword of :func:`unetseg.build_model`
    (norm, activation, upsample, padding, dropout, deep_supervision, init, recurrence, channels, ...);
    they are checked against the architecture's signature by :func:`unetseg.validate.check_config`."""

    name: str = "unet"
    spatial_dims: SpatialDims = 2
    in_channels: PosInt = 1
    num_classes: PosInt = 2
    base_channels: Annotated[PosInt, Field(le=4096)] = 32
    depth: Annotated[PosInt, Field(le=12)] = 4
    options: dict[str, Any] = Field(default_factory=dict)

    def build_kwargs(self) -> dict[str, Any]:
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "base_channels": self.base_channels, "depth": self.depth,
                **self.options}


class DataConfig(Section):
    """Where the data is and how it becomes tensors.

    ``class_values`` maps mask values to classes by position (``[0, 255]``: 0 -> class 0, 255 -> class 1);
    a list in it merges several values into one class (``[0, [1, 2, 3, 4]]``); ``None`` means: the sorted
    set of values found in the training masks. ``normalization``: ``zscore`` (per image and channel),
    ``percentile`` (clip to ``percentiles`` then z-score, per image), ``window`` (fixed ``window=[lo, hi]``
    mapped to [-1, 1]), ``ct`` (clip to ``window`` then the dataset's ``intensity_stats`` mean/std, as
    nnU-Net does for CT), ``steps`` (the ordered ``preprocessing`` steps of an imported BioImage Model Zoo
    package, see :mod:`unetseg.data.normalize`) or ``none``. ``max_image_gib`` bounds the float32 bytes
    one image may decode to (checked from the file header, before decoding: no decompression bombs).
    """

    data: str | None = None
    val_data: str | None = None
    val_fraction: Annotated[Float, Field(ge=0.0, lt=1.0)] = 0.2
    split_seed: Seed = 0
    # what must stay on one side of every split (a patient, a slide, a video sequence): a CSV of stem,group
    # rows, or a regular expression whose first capture group of the stem is the group; neither: every
    # image is independent (unetseg.data.splits)
    groups: str | None = None
    groups_pattern: str | None = None
    task: Literal["semantic", "instances"] = "semantic"
    # what an instance model learns: the 3-class map, or the distance to the boundary in DISTANCE_BINS bins
    instance_target: InstanceTarget = "three_class"
    class_values: Annotated[list[ClassValue], Field(min_length=1)] | None = None
    normalization: Literal["zscore", "percentile", "window", "ct", "steps", "none"] = "zscore"
    percentiles: Range = Field(default_factory=lambda: [0.5, 99.5])
    window: Range | None = None
    intensity_stats: Range | None = None  # [mean, std] for "ct"
    # for "steps": [{op: zero_mean_unit_variance | fixed_zero_mean_unit_variance | scale_range | scale_linear
    # | clip, ...its options}], applied in order (checked by unetseg.data.normalize.Normalizer)
    preprocessing: list[dict[str, Any]] | None = None
    spacing: list[Annotated[Float, Field(gt=0)]] | None = None  # target spacing (3D resampling), z y x
    # the model's grid: each axis of data.spacing (or, without it, of each image's own grid) coarser by this
    # factor, so a patch sees more of large structures (the planner's resolution choice; predictions are
    # brought back to the input's grid)
    downsample: Annotated[list[Annotated[Float, Field(ge=1.0, le=64.0)]],
                          Field(min_length=2, max_length=3)] | None = None
    # a cascade's second stage: the last N input channels of the model are its first stage's prediction
    # (one-hot, foreground classes), brought to this model's grid; 0 for every other model
    prior_channels: Annotated[Int, Field(ge=0, le=255)] = 0
    pixel_size: list[Annotated[Float, Field(gt=0)]] | None = None  # of the training images, micrometres
    patch_size: Size | None = None
    foreground_fraction: Prob = 0.33
    cache: Literal["auto", "memory", "lazy"] = "auto"
    cache_gib: Annotated[Float, Field(ge=0.0)] = 2.0  # "auto" keeps decoded cases in memory up to this
    pad_mode: Literal["reflect", "constant"] = "reflect"
    skip_bad: bool = False
    num_workers: Annotated[Int, Field(ge=0, le=256)] = 2
    max_image_gib: Annotated[Float, Field(gt=0.0)] = 2.0

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, v: list[float]) -> list[float]:
        if not 0 <= v[0] < v[1] <= 100:
            raise ValueError(f"expected [lo, hi] with 0 <= lo < hi <= 100, got {v}")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: list[float] | None) -> list[float] | None:
        return _ordered(v, strict=True)

    @model_validator(mode="after")
    def _window_given(self) -> DataConfig:
        if self.normalization in ("window", "ct") and self.window is None:
            raise ValueError(f"normalization {self.normalization!r} needs window: [lo, hi]")
        if self.normalization == "ct" and self.intensity_stats is None:
            raise ValueError("normalization 'ct' needs intensity_stats: [mean, std] (the planner sets it)")
        if self.normalization == "steps" and not self.preprocessing:
            raise ValueError("normalization 'steps' needs preprocessing: [{op: ..., ...}]")
        return self


class AugmentConfig(Section):
    """Augmentations, each with a probability and a range. Image and mask are transformed together;
    masks use nearest interpolation so they never get values outside the class map."""

    flip_prob: Prob = 0.5
    rot90_prob: Prob = 0.5
    affine_prob: Prob = 0.2
    rotation_degrees: Annotated[Float, Field(ge=0.0, le=180.0)] = 15.0
    scale_range: Range = Field(default_factory=lambda: [0.85, 1.15])
    elastic_prob: Prob = 0.2
    elastic_grid: Annotated[Int, Field(ge=2, le=64)] = 3
    elastic_sigma: Annotated[Float, Field(ge=0.0)] = 10.0
    brightness_prob: Prob = 0.15
    brightness_range: Range = Field(default_factory=lambda: [-0.2, 0.2])
    contrast_prob: Prob = 0.15
    contrast_range: Range = Field(default_factory=lambda: [0.75, 1.25])
    gamma_prob: Prob = 0.15
    gamma_range: Range = Field(default_factory=lambda: [0.7, 1.5])
    noise_prob: Prob = 0.1
    noise_std: Range = Field(default_factory=lambda: [0.0, 0.1])
    blur_prob: Prob = 0.1
    blur_sigma: Range = Field(default_factory=lambda: [0.5, 1.0])

    @field_validator("scale_range", "brightness_range", "contrast_range", "gamma_range", "noise_std",
                     "blur_sigma")
    @classmethod
    def _range(cls, v: list[float], info: Any) -> list[float]:
        _ordered(v)
        if info.field_name in ("scale_range", "gamma_range") and v[0] <= 0:
            raise ValueError("must be > 0")
        if info.field_name in ("noise_std", "blur_sigma") and v[0] < 0:
            raise ValueError("must be >= 0")
        return v


class TrainConfig(Section):
    """Optimisation and bookkeeping of one training run."""

    out: str | None = None
    epochs: Annotated[PosInt, Field(le=10**7)] = 50
    iters_per_epoch: Annotated[PosInt, Field(le=10**7)] = 50
    batch_size: Annotated[PosInt, Field(le=4096)] = 4
    lr: Annotated[Float, Field(gt=0.0)] = 1e-3
    weight_decay: Annotated[Float, Field(ge=0.0)] = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: Annotated[Float, Field(ge=0.0, lt=1.0)] = 0.99
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    warmup_epochs: Count = 1
    grad_clip: Annotated[Float, Field(gt=0.0)] | None = 12.0
    loss: str = "dice_ce"
    loss_options: dict[str, Any] = Field(default_factory=dict)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Switch = "auto"
    compile: bool = False
    device: Device = "auto"
    seed: Seed = 0
    val_interval: PosInt = 1
    patience: PosInt | None = None
    max_minutes: Annotated[Float, Field(gt=0.0, le=10**6)] | None = None
    # when the planner leaves the resolution to a timed probe of its candidates: auto (budgets of a few
    # minutes and more), on (whatever the budget), off (the rules' first choice)
    probe: Literal["auto", "on", "off"] = "auto"
    # a full-resolution second stage that also sees the coarse model's prediction, after a coarse run:
    # auto (3D, when the coarse grid was chosen and the budget leaves CASCADE_MINUTES for both stages), on
    # (whenever the run is coarse), off; it replaces the coarse model only when it scores better
    cascade: Literal["auto", "on", "off"] = "auto"
    # fine-tuning: start from this checkpoint (a run folder, a checkpoint folder or its model.safetensors);
    # its architecture is kept, layers whose shapes fit are copied, the input stem and the head are new
    # when the channels or the classes differ
    init_from: str | None = None
    # a fine-tune's first part (this share of the budget, or of the steps): the encoder's copied layers stay
    # as they came, so the new stem, the decoder and the head settle before the copied features move
    freeze_encoder: Annotated[Float, Field(ge=0.0, le=0.9)] = 0.0
    # experiment trackers to write to besides the run folder's own files (unetseg.training.trackers)
    log: Annotated[list[Literal["tensorboard", "mlflow"]], BeforeValidator(_names)] = Field(
        default_factory=list)
    # K-fold cross-validation: K models, each validated on the fold it did not see, sharing the budget;
    # 1 trains one model (unetseg.training.crossval)
    folds: Annotated[PosInt, Field(le=100)] = 1
    # at the end of a semantic run: fit infer.temperature and choose infer.postprocess on the validation
    # images of the best checkpoint (an option given in the recipe is kept as given)
    calibrate: bool = True


class PostprocessStep(Section):
    """One post-processing step of a semantic model, chosen on held-out predictions (nnU-Net's rule: kept
    only when it raised the held-out mean Dice of its classes): ``largest`` keeps only the largest connected
    component of the pixels of ``classes`` (several classes: their union, as nnU-Net's whole-foreground
    step), ``min_size`` removes components smaller than ``size`` pixels (voxels). Removed pixels become
    class 0. ``gain``: the held-out mean Dice it added when it was chosen (a record, not a setting)."""

    classes: Annotated[list[Annotated[Int, Field(ge=1, le=65535)]], Field(min_length=1)]
    op: Literal["largest", "min_size"]
    size: Annotated[Int, Field(ge=2)] | None = None
    gain: Float | None = None

    @model_validator(mode="after")
    def _size_given(self) -> PostprocessStep:
        if (self.op == "min_size") != (self.size is not None):
            raise ValueError("min_size needs size: N (pixels); largest takes no size")
        return self


class InferConfig(Section):
    """Sliding-window prediction. ``tile=None`` means the training patch size."""

    tile: Size | None = None
    overlap: Annotated[Float, Field(ge=0.0, lt=1.0)] | None = None  # None: 0.25 in 2D, 0.5 in 3D
    blend: Literal["gaussian", "constant"] = "gaussian"
    batch_size: Annotated[PosInt, Field(le=4096)] = 4
    tta: bool = False
    # instance models: objects by seeded watershed of the interior probability (3-class target), or of the
    # expected distance (distance target) from its maxima of dynamic >= distance_h (shallower bumps on one
    # object do not split it; the distance is normalised to 1 at each centre, so h < 1)
    interior_threshold: Annotated[Float, Field(gt=0.0, lt=1.0)] = 0.5
    # instance models: pixels whose background probability is below 1 - this are objects
    foreground_threshold: Annotated[Float, Field(gt=0.0, lt=1.0)] = 0.5
    distance_h: Annotated[Float, Field(gt=0.0, lt=1.0)] = 0.2
    min_object_size: Annotated[Int, Field(ge=0)] = 10  # pixels (voxels in 3D); smaller objects are dropped
    # semantic models: logits are divided by this before the softmax (temperature scaling, fitted on the
    # validation images at the end of training; 1: as trained)
    temperature: Annotated[Float, Field(gt=0.0, le=1000.0)] = 1.0
    # semantic models: steps applied to the labels in order (chosen on the validation images at the end of
    # training; streamed slides skip them: a connected component may span the whole slide)
    postprocess: list[PostprocessStep] = Field(default_factory=list)


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def copy_deep(self) -> Config:
        return self.model_copy(deep=True)


SECTIONS: tuple[str, ...] = tuple(Config.model_fields)


def _section_type(section: str) -> type[Section]:
    """The class of one section of :class:`Config`, read from the schema."""
    cls = Config.model_fields[section].annotation
    if not (isinstance(cls, type) and issubclass(cls, Section)):
        raise TypeError(f"Config.{section} is not a section")  # only a broken schema gets here
    return cls


def section_fields() -> dict[str, tuple[str, ...]]:
    """The option names of each section, read from the schema."""
    return {s: tuple(_section_type(s).model_fields) for s in SECTIONS}


def choices(section: str, name: str) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` option (for CLI help and error messages)."""
    ann = _section_type(section).model_fields[name].annotation
    for arg in (ann, *get_args(ann)):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return ()


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
