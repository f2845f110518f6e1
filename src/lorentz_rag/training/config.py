"""Typed training configuration: YAML file + dotted command-line overrides, validated before any work.

A run is described by four sections (docs/design.md, section 9 (Configuration))::

    train_args:  the optimisation, objective, precision, checkpointing and logging knobs (TrainArgs)
    model_args:  what to build (lorentz_rag.models.args.ModelArgs, owned by the models package)
    data_args:   where the training rows come from (DataArgs)
    mlm_args:    masking rates for the MLM objective (MLMArgs)
    hierarchy_args: the WordNet is-a objective added to the contrastive loss (HierarchyArgs, off by default)
    taxonomy_args: the taxonomy recipe, the mixture and edges of one taxonomy's train split (TaxonomyArgs, off)

Sources, in increasing priority: the YAML file given with ``--config=PATH``, then ``--section.key=value``
(or ``--section.key value``) flags. ``${VAR}`` / ``${VAR:-default}`` in YAML values expand from the
environment, after ``.env`` in the working directory has been read (existing variables win).

Every section refuses unknown keys (one check, :func:`lorentz_rag.models.args.reject_unknown_keys`, shared with
``model_args``). A mistake stops the run before anything is built, with a message that
names the key, where it came from (``file:line`` or ``command line``), and the closest valid key.
"""

from __future__ import annotations

import os
import re
import textwrap
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from dotenv import load_dotenv
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorentz_rag.atomic_files import write_text
from lorentz_rag.errors import closest_key, read_json_file
from lorentz_rag.models.args import ModelArgs, reject_unknown_keys

__all__ = [
    "DOTENV_VARIABLES",
    "ConfigError",
    "DataArgs",
    "HierarchyArgs",
    "MLMArgs",
    "ParsedCommandLine",
    "TaxonomyArgs",
    "TrainArgs",
    "TrainConfig",
    "check_sequence_lengths",
    "config_help",
    "load_config",
    "parse_command_line",
    "write_config",
]

#: Variables a ``.env`` of the paper's research code carries; read from ``./.env`` without overriding the environment.
DOTENV_VARIABLES = (
    "MDS_PRETRAIN_DATA_PATH",
    "OUTPUT_DIR",
    "HF_TOKEN",
    "HF_HOME",
    "TRANSFORMERS_CACHE",
    "HF_DATASETS_CACHE",
)


class ConfigError(ValueError):
    """A configuration mistake; the message names the key, its source and, when possible, a fix."""


class _Section(BaseModel):
    # allow_inf_nan=False: `learning_rate: .inf` passes `gt=0` and would train to NaN.
    model_config = ConfigDict(validate_assignment=True, allow_inf_nan=False)
    #: How messages name the section (``unknown train_args key ...``).
    section_name: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        # The one unknown-key check (shared with model_args); load_config adds file:line to its messages.
        return reject_unknown_keys(data, cls.model_fields, cls.section_name)


class TrainArgs(_Section):
    """Optimisation, objective, precision, checkpointing and logging."""

    section_name = "train_args"

    # hierarchy_channel: train only a hierarchy channel over the frozen model (channel_args, taxonomy_args).
    task: Literal["mlm", "contrastive", "hierarchy_channel"] = "contrastive"
    dtype: Literal["bf16", "fp16", "fp32"] = "fp32"
    # Similarity inside the contrastive loss: -geodesic distance or <q,x>_L + 1/c (hyperbolic models),
    # cosine or euclidean (-|q - x|; Euclidean twins only); None: geodesic for hyperbolic models, cosine for
    # the twin. The trained model is saved with the same similarity (model_args.similarity). Ignored by the
    # MLM objective.
    distance: Literal["geodesic", "lorentz_inner", "cosine", "euclidean"] | None = None
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.98, ge=0, lt=1)
    adam_eps: float = Field(1e-6, gt=0)
    warmup_steps: int = Field(0, ge=0)
    schedule_type: Literal["cosine", "linear", "constant"] = "cosine"
    # Floor of the decaying schedules, as a fraction of the peak learning rate.
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    num_epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)  # per device, per micro-step
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    logit_scale: float = Field(50.0, gt=0)  # 1 / temperature
    trainable_logit_scale: bool = False
    num_negatives: int = Field(0, ge=0)  # hard negatives per row taken from the data (fine-tuning)
    symmetric_loss: bool = False
    grad_cache_chunk: int | None = Field(None, ge=1)
    seed: int = 42
    output_dir: str = "${OUTPUT_DIR:-outputs/run}"
    checkpoint: str | None = None  # resume from a checkpoint folder or an output folder (-> latest)
    # A new run (no checkpoint) refuses an output folder that already holds files; true replaces the
    # previous run's files (config, metrics, checkpoints, final model).
    overwrite: bool = False
    save_every: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)
    wandb_project: str | None = None
    wandb_run_name: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = Field(0, ge=0)
    # Speed settings (README, "Training on several processes"); none of them changes what is computed.
    optimizer_kernel: Literal["foreach", "for_loop", "fused"] = Field(
        "foreach",
        description="AdamW implementation: foreach (multi-tensor ops; the same numbers as for_loop, about twice "
        "as fast on CPU), for_loop (one parameter at a time) or fused (one kernel per parameter, fastest; "
        "differs from the others in the last bits).",
    )
    max_seq_length: int | None = Field(
        None,
        ge=1,
        description="Truncation length in tokens of the training batches and hierarchy texts, at most "
        "model_args.max_seq_length (a longer one is refused); null: model_args.max_seq_length. The saved model "
        "keeps model_args.max_seq_length, so a run can train on short texts (fast) and its model still reads "
        "long ones (e.g. the taxonomy recipe: 64 and 256).",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads per process (torch.set_num_threads). None keeps the launch's "
        "setting: OMP_NUM_THREADS, which torchrun sets to 1 per process when it starts several.",
    )
    ddp_bucket_cap_mb: float = Field(
        25.0,
        gt=0,
        description="DDP gradient bucket size in MiB (torchrun runs): smaller buckets start their all-reduce "
        "earlier in the backward, larger ones need fewer collectives.",
    )
    ddp_sparse_embedding_hook: bool | None = Field(
        None,
        description="DDP (torchrun runs): all-reduce only the token-embedding rows some process touched this "
        "step, bit for bit the dense all-reduce's result with 2 processes (training/ddp_hooks.py). null: on for "
        "every trainable token-embedding table (nn.Embedding, LorentzEmbedding) of >= 2^18 elements that no "
        "other module shares (a tied MLM head makes every row's gradient non-zero), when the backend is gloo or "
        "nccl; true: on for every such table whatever its size (an error if there is none); "
        "false: DDP's dense all-reduce. The run's log says which.",
    )
    cache_base_states: bool = Field(
        False,
        description="Keep the frozen part of a pretrained base's states per text for the whole run "
        "(hyte_h / euclidean-pretrained with freeze_base or trainable_base_layers): a text seen again runs only "
        "the trainable top layers, or nothing of a wholly frozen base. With trainable_base_layers the run is "
        "bit-identical to one without the cache (frozen layers run text by text either way); a wholly frozen "
        "base's states come from sub-batches (equal to about 1e-6). Memory: T x d_base floats per text.",
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainArgs:
        if self.task == "hierarchy_channel":
            if self.num_epochs is not None or self.max_steps is not None:
                raise ValueError(
                    "train_args.task=hierarchy_channel counts its steps in channel_args.steps: drop "
                    "train_args.max_steps / num_epochs"
                )
        elif self.num_epochs is None and self.max_steps is None:
            raise ValueError("set train_args.num_epochs or train_args.max_steps")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value


class DataArgs(_Section):
    """Where training rows come from (docs/design.md, section 10 (Training data))."""

    section_name = "data_args"

    # A .jsonl/.jsonl.gz file, a folder of them, an MDS folder, a saved or hub Hugging Face dataset; a
    # list mixes several sources of the same kind of rows.
    data_path: str | list[str]
    data_format: Literal["auto", "jsonl", "hf", "mds"] = "auto"
    split: str = "train"
    # Read a Hugging Face dataset lazily (hub names, large folders) instead of into memory; needs max_steps.
    streaming: bool = False
    max_rows: int | None = Field(None, ge=1)
    shuffle: bool = True
    text_column: str = "text"
    query_column: str = "query"
    document_column: str = "document"
    negatives_column: str = "negatives"


class MLMArgs(_Section):
    """BERT masking (docs/design.md, section 8.1): rate, then 80% [MASK] / 10% random / 10% kept."""

    section_name = "mlm_args"

    mlm_probability: float = Field(0.30, gt=0, lt=1)
    mask_replace_prob: float = Field(0.8, ge=0, le=1)
    random_replace_prob: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _fractions(self) -> MLMArgs:
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must be <= 1")
        return self


class HierarchyArgs(_Section):
    """The hierarchy objective (:mod:`lorentz_rag.training.hierarchy`), added to the contrastive loss.

    Off unless ``weight`` or ``centripetal_weight`` is > 0. Edges are is-a pairs of the closure of
    ``taxonomy_path`` (any taxonomy format; e.g. the ``train.jsonl.gz`` of ``lorentz-rag taxonomy build``) or,
    by default, of the train-split WordNet nouns; texts are definitions (names where there are none)
    embedded as documents.
    """

    section_name = "hierarchy_args"

    weight: float = Field(0.0, ge=0, description="Weight of the clustering triplet (or cone) loss.")
    variant: Literal["triplet", "cone"] = Field(
        "triplet", description="triplet (HiT-style, the default) or cone (entailment cones, an ablation)."
    )
    cone_k: float = Field(0.1, gt=0, description="Entailment cones: aperture constant K.")
    margin: float = Field(1.0, ge=0, description="Triplet margin, in the model's own distance.")
    centripetal_weight: float = Field(0.0, ge=0, description="Weight of the centripetal hinge on the radius.")
    centripetal_margin: float = Field(0.2, ge=0, description="r(ancestor) + margin <= r(child) is the aim.")
    edges_per_step: int = Field(32, ge=1, description="Edges (and negatives) sampled per micro-batch.")
    direct_fraction: float = Field(
        0.5, ge=0, le=1, description="Share of direct hypernym edges; the rest any ancestor of the closure."
    )
    sibling_fraction: float = Field(
        0.5, ge=0, le=1, description="Share of sibling-of-ancestor negatives; the rest random synsets."
    )
    max_children: int | None = Field(
        None, ge=1, description="Take the closure of a sample of this many child synsets (None: all)."
    )
    pool_seed: int = Field(0, description="Seed of that sample (fixed across training seeds).")
    wordnet_path: str | None = Field(None, description="nouns.jsonl(.gz) file; None: the bundled one.")
    taxonomy_path: str | None = Field(
        None,
        description="Taxonomy whose is-a edges are trained (.jsonl(.gz), .obo, SKOS), read whole: pass a "
        "split's train taxonomy. Not with wordnet_path; neither: the bundled WordNet.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> HierarchyArgs:
        if self.taxonomy_path is not None and self.wordnet_path is not None:
            raise ValueError("give hierarchy_args.taxonomy_path or hierarchy_args.wordnet_path, not both")
        return self

    @property
    def enabled(self) -> bool:
        return self.weight > 0 or self.centripetal_weight > 0


class TaxonomyArgs(_Section):
    """The taxonomy recipe (:mod:`lorentz_rag.training.taxonomy_recipe`): train on one taxonomy's train split.

    With ``path`` set, the trainer splits the taxonomy (as ``lorentz-rag taxonomy build`` does with the same
    ``held_out_fraction`` / ``validation_fraction`` / ``seed``), writes the contrastive mixture (the taxonomy's
    own pairs plus ``replay_share`` general pairs) and the train split under ``output_dir/taxonomy``, and
    points ``data_args.data_path`` and ``hierarchy_args.taxonomy_path`` at them. Held-out concepts never
    reach training.
    """

    section_name = "taxonomy_args"

    path: str | None = Field(
        None,
        description="Taxonomy file (.jsonl(.gz), .obo, SKOS) or bundled name (wordnet, icd10cm); None: off. "
        "Replaces data_args.data_path and hierarchy_args.taxonomy_path with files derived from its train split.",
    )
    held_out_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of concepts held out (as taxonomy build)."
    )
    validation_fraction: float = Field(
        0.5, ge=0, le=1, description="Share of the held-out concepts used for tuning (as taxonomy build)."
    )
    seed: int = Field(
        0, description="Split and mixture seed (fixed across training seeds; taxonomy build's --seed)."
    )
    use_pairs: bool = Field(
        True, description="Train on the taxonomy's own pairs: name -> definition and synonym -> definition."
    )
    max_pairs: int | None = Field(None, ge=1, description="At most this many taxonomy pairs (seeded sample).")
    broader_pairs: int = Field(
        0,
        ge=0,
        description="Also this many child -> ancestor pairs (a train concept's name or definition -> the "
        "definition of an ancestor within broader_max_hops; seeded sample), so similarity search itself "
        "learns to retrieve broader concepts.",
    )
    broader_max_hops: int = Field(
        1, ge=1, description="Ancestors up to this many is-a hops make broader_pairs."
    )
    replay_share: float = Field(
        0.5, ge=0, lt=1, description="Share of general pairs (from replay_path) in the contrastive mixture."
    )
    replay_path: str | list[str] | None = Field(
        None, description="JSONL {query, document} file(s) of general pairs replayed in the mixture."
    )


class ChannelArgs(_Section):
    """The hierarchy channel recipe (``train_args.task=hierarchy_channel``,
    :mod:`lorentz_rag.training.channel_recipe`): a small network H over the frozen model's embeddings, trained
    on the taxonomy's train split (``taxonomy_args``) to make ``broader`` / ``narrower`` one vector search."""

    section_name = "channel_args"

    geometry: Literal["lorentz", "euclidean"] = Field(
        "lorentz", description="H's space: the hyperboloid H^dim, or R^dim (the Euclidean twin)."
    )
    dim: int = Field(64, ge=1, description="H's dimension (16, 32, 64, ...).")
    hidden_dim: int = Field(512, ge=1, description="Width of H's hidden layer.")
    curvature: float = Field(1.0, gt=0, description="H's curvature c (lorentz).")
    max_radius: float = Field(8.0, gt=0, description="H's radii lie in (0, max_radius).")
    radius_weight: float = Field(0.5, ge=0, le=1, description="lam in H's broader / narrower scores.")
    steps: int = Field(1200, ge=1, description="Optimizer steps.")
    batch_size: int = Field(256, ge=1, description="Children per step.")
    learning_rate: float = Field(2e-3, gt=0)
    teacher_weight: float = Field(
        0.5, ge=0, le=1, description="Share of graph-kNN's votes (the rest: the edges) in each target."
    )
    max_children: int = Field(
        60000, ge=1, description="At most this many train-concept texts (names, definitions) as children."
    )
    validation_queries: int = Field(
        1000, ge=1, description="At most this many validation queries choose the mixing weights."
    )
    carry_taxonomy: bool = Field(
        True,
        description="Save the train split's concepts (embedded) with the model, so that broader / narrower "
        "search ranks by graph-kNN over them, mixed with H (false: H and similarity only).",
    )


class TrainConfig(_Section):
    """The whole run; also what is written as ``config.yaml`` into the output folder and every checkpoint."""

    section_name = "training configuration"

    train_args: TrainArgs
    model_args: ModelArgs = Field(default_factory=ModelArgs)
    data_args: DataArgs
    mlm_args: MLMArgs = Field(default_factory=MLMArgs)
    hierarchy_args: HierarchyArgs = Field(default_factory=HierarchyArgs)
    taxonomy_args: TaxonomyArgs = Field(default_factory=TaxonomyArgs)
    channel_args: ChannelArgs = Field(default_factory=ChannelArgs)

    @model_validator(mode="before")
    @classmethod
    def _distance_from_similarity(cls, data: Any) -> Any:
        # An explicit model_args.similarity is the distance when train_args.distance is not given, and
        # must agree with it when both are.
        if not isinstance(data, Mapping):
            return data
        model, train = data.get("model_args"), data.get("train_args")
        if not isinstance(model, Mapping) or not isinstance(train, Mapping):
            return data
        similarity, distance = model.get("similarity"), train.get("distance")
        if similarity is None or train.get("task", "contrastive") != "contrastive":
            return data
        if distance is None:
            return {**data, "train_args": {**train, "distance": similarity}}
        if distance != similarity:
            raise ValueError(
                f"model_args.similarity={similarity} disagrees with train_args.distance={distance}; "
                "drop model_args.similarity (the trainer sets it from the distance)"
            )
        return data

    def _check_taxonomy_args(self) -> None:
        """taxonomy_args.path feeds the hierarchy objective itself (the train split it writes, which a saved
        config.yaml then names)."""
        if self.train_args.task == "hierarchy_channel":
            if self.taxonomy_args.path is None:
                raise ValueError(
                    "train_args.task=hierarchy_channel learns a taxonomy: give --taxonomy_args.path=T"
                )
            return
        if self.taxonomy_args.path is None:
            return
        if self.train_args.task != "contrastive":
            raise ValueError(
                "taxonomy_args.path trains the contrastive task: set train_args.task=contrastive"
            )
        prepared = str(Path(self.train_args.output_dir) / "taxonomy" / "train.jsonl.gz")
        h = self.hierarchy_args
        if h.wordnet_path is not None or h.taxonomy_path not in (None, prepared):
            raise ValueError(
                "taxonomy_args.path feeds the hierarchy objective with its train split: leave "
                "hierarchy_args.taxonomy_path and hierarchy_args.wordnet_path unset"
            )

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.train_args.task == "hierarchy_channel":
            # The frozen model is loaded as saved (model_args.model_name); its similarity is its own.
            self._check_taxonomy_args()
            return self
        model_type = self.model_args.model_type
        hyperbolic = model_type != "euclidean"
        if self.train_args.distance is None:
            self.train_args.distance = "geodesic" if hyperbolic else "cosine"
        distance = self.train_args.distance
        if self.train_args.task == "contrastive":
            if hyperbolic and distance in ("cosine", "euclidean"):
                raise ValueError(
                    f"train_args.distance={distance} is for the Euclidean twin; model_args.model_type="
                    f"{model_type} is hyperbolic: use geodesic or lorentz_inner"
                )
            if not hyperbolic and distance not in ("cosine", "euclidean"):
                raise ValueError(
                    f"train_args.distance={distance} needs a hyperbolic model; "
                    "model_args.model_type=euclidean uses cosine or euclidean"
                )
            self.model_args.similarity = distance  # the saved model scores the way it was trained
        if self.hierarchy_args.enabled and self.train_args.task != "contrastive":
            raise ValueError("hierarchy_args is added to the contrastive loss: set its weights to 0 for MLM")
        self._check_taxonomy_args()
        if self.train_args.grad_cache_chunk is not None and self.train_args.task != "contrastive":
            raise ValueError("train_args.grad_cache_chunk applies to the contrastive task only")
        if self.train_args.task == "mlm" and model_type == "hyte_h":
            raise ValueError(
                "train_args.task=mlm trains hyte_fh or euclidean encoders; hyte_h starts from a pretrained base"
            )
        return self


# --- loading ----------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, where: str) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in strings; an unset variable without default is an error."""
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable ${{{name}}} is not set (and not in ./.env)")

    return _VAR.sub(substitute, value)


def _read_dotenv(folder: Path) -> None:
    """Read ``folder/.env`` (python-dotenv) without overriding variables already in the environment."""
    path = folder / ".env"
    if path.is_file():
        load_dotenv(path, override=False)


def _yaml_with_lines(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Parse a YAML mapping and remember the line of every key: ``{("train_args", "dtype"): 7}``.

    A key given twice in one mapping is an error (YAML would silently keep the last value).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
            "save the file as UTF-8"
        ) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = (*prefix, str(key_node.value))
                if key in lines:
                    raise ConfigError(
                        f"{path}:{key_node.start_mark.line + 1}: duplicate key '{'.'.join(key)}' (first set on "
                        f"line {lines[key]}); YAML would silently keep the last value: remove one"
                    )
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)

    walk(node, ())
    return data, lines


def _sections() -> dict[str, type[BaseModel]]:
    return {name: field.annotation for name, field in TrainConfig.model_fields.items()}  # type: ignore[misc]


def _all_dotted_keys() -> list[str]:
    keys = []
    for name, section in _sections().items():
        keys += [f"{name}.{field}" for field in section.model_fields]
    return keys


class _Sources:
    """Remembers where each dotted key came from, for error messages."""

    def __init__(self) -> None:
        self.where: dict[tuple[str, ...], str] = {}

    def describe(self, loc: tuple[str, ...]) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.where:
                return self.where[loc[:n]]
        return "defaults"


def _unknown_key_lines(section: tuple[str, ...], ctx: Mapping[str, Any], sources: _Sources) -> list[str]:
    """``unknown key 'train_args.x' (run.yaml:4); did you mean 'train_args.y'?`` for each unknown key of a
    section (``section == ()``: unknown sections), with where it came from."""
    lines = []
    prefix = "".join(f"{part}." for part in section)
    for key, suggestion in zip(ctx["keys"], ctx["suggestions"]):
        hint = f"; did you mean '{prefix}{suggestion}'?" if suggestion else ""
        what = "key" if section else "section"
        lines.append(f"unknown {what} '{prefix}{key}' ({sources.describe((*section, key))}){hint}")
    return lines


def _format_errors(error: ValidationError, sources: _Sources) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(str(p) for p in item["loc"] if not isinstance(p, int))
        dotted = ".".join(loc) or "<config>"
        where = sources.describe(loc)
        if item["type"] == "unknown_key":  # models.args.reject_unknown_keys, one error per section
            lines += _unknown_key_lines(loc, item["ctx"], sources)
        elif item["type"] == "missing" and len(loc) == 1:
            lines.append(f"missing section '{dotted}' (required; add it to the YAML)")
        elif item["type"] == "missing":
            lines.append(f"missing key '{dotted}' (required; set it in the YAML or with --{dotted}=...)")
        else:
            value = item.get("input")
            shown = "" if isinstance(value, dict) else f" {value!r}"
            lines.append(f"bad value{shown} for '{dotted}' ({where}): {item['msg']}")
    return "invalid training configuration:\n  " + "\n  ".join(lines)


def _parse_value(text: str) -> Any:
    """A command-line value as YAML would read it: ``False`` -> bool, ``3`` -> int, ``null`` -> None."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    dotenv_dir: str | os.PathLike[str] | None = ".",
) -> TrainConfig:
    """Build and validate the configuration from a YAML file and ``section.key=value`` overrides.

    ``overrides`` is a list of ``"section.key=value"`` strings (values parsed as YAML scalars) or a mapping
    ``{"section.key": value}``. ``dotenv_dir`` is the folder whose ``.env`` is read (None: skip).
    Raises :class:`ConfigError` naming the offending key, its source and the closest valid key.
    """
    if dotenv_dir is not None:
        _read_dotenv(Path(dotenv_dir))
    sources = _Sources()
    data: dict[str, Any] = {}
    items = list(
        overrides.items() if isinstance(overrides, Mapping) else (_split_override(o) for o in overrides)
    )
    overridden = {key for key, _ in items}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config={path}: file not found")
        data, lines = _yaml_with_lines(path)
        for key, line in lines.items():
            sources.where[key] = f"{path}:{line}"
        for section, body in data.items():
            if body is not None and not isinstance(body, dict):
                raise ConfigError(
                    f"{sources.describe((str(section),))}: section '{section}' must be a mapping of keys"
                )
            for key, value in (body or {}).items():
                if f"{section}.{key}" in overridden:
                    continue  # replaced below: an unset ${VAR} in the file must not stop the run
                where = sources.describe((str(section), str(key)))
                if isinstance(value, list):
                    body[key] = [_expand(v, where) for v in value]
                else:
                    body[key] = _expand(value, where)
            data[section] = body or {}

    for dotted, value in items:
        parts = tuple(dotted.split("."))
        if len(parts) != 2 or not all(parts):
            suggestion = closest_key(dotted, _all_dotted_keys())
            hint = f"; did you mean '{suggestion}'?" if suggestion else ""
            raise ConfigError(f"unknown key '{dotted}' (command line): keys look like section.key{hint}")
        section, key = parts
        if section not in data:
            data[section] = {}
        if not isinstance(data[section], dict):
            raise ConfigError(f"section '{section}' must be a mapping of keys")
        where = f"command line: --{dotted}"
        data[section][key] = _expand(value, where)
        sources.where[parts] = where
        sources.where.setdefault((section,), where)

    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, sources)) from None
    check_sequence_lengths(config)
    # Expand ${VAR} in defaults (output_dir) the same way as in the file.
    config.train_args.output_dir = _expand(config.train_args.output_dir, "train_args.output_dir")
    _remember_path_sources(config, sources)
    return config


def check_sequence_lengths(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` (one line) when ``train_args.max_seq_length`` is above
    ``model_args.max_seq_length``: the training length only cuts batches shorter, the saved model reads
    ``model_args.max_seq_length``, so a longer one would train on texts the saved model truncates. Called by
    :func:`load_config` and when a run starts (a config built in Python). The model's own position limit
    needs its config files: :func:`lorentz_rag.models.factory.check_position_limit`, also when a run starts."""
    train, model = config.train_args.max_seq_length, config.model_args.max_seq_length
    if train is not None and train > model:
        raise ConfigError(
            f"train_args.max_seq_length={train} is above model_args.max_seq_length={model}: it can only "
            "shorten training batches; raise model_args.max_seq_length instead"
        )


# Where a loaded config's init_from and data_path came from (file:line), for check_local_paths. Kept beside
# the config (keyed by identity, dropped with it), not in it: two equal configs stay equal.
_PATH_SOURCES: dict[int, tuple[weakref.ReferenceType, dict[tuple[str, str], str]]] = {}


def _remember_path_sources(config: TrainConfig, sources: _Sources) -> None:
    key = id(config)
    where = {k: sources.describe(k) for k in (("model_args", "init_from"), ("data_args", "data_path"))}
    _PATH_SOURCES[key] = (weakref.ref(config, lambda _: _PATH_SOURCES.pop(key, None)), where)


def _path_source(config: TrainConfig, key: tuple[str, str]) -> str:
    entry = _PATH_SOURCES.get(id(config))
    return entry[1][key] if entry is not None and entry[0]() is config else "config"


def check_local_paths(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` for local paths a run needs that do not exist: ``model_args.init_from`` (a
    folder, never a hub id) and a ``data_args.data_path`` written like a path (a hub dataset name is ``name``
    or ``owner/name``). Called when a run starts; :func:`load_config` only validates (a config may be
    checked on a machine that does not hold the data)."""
    init_from = config.model_args.init_from
    if init_from is not None and not Path(init_from).is_dir():
        where = _path_source(config, ("model_args", "init_from"))
        raise ConfigError(
            f"model_args.init_from={init_from} ({where}): no such folder; it must be a folder written by a "
            "previous run (output_dir/final)"
        )
    paths = config.data_args.data_path
    for path in [paths] if isinstance(paths, str) else paths:
        if not Path(path).exists() and (
            config.data_args.data_format in ("jsonl", "mds") or looks_like_path(path)
        ):
            where = _path_source(config, ("data_args", "data_path"))
            raise ConfigError(f"data_args.data_path={path} ({where}): no such file or folder")


def looks_like_path(source: str) -> bool:
    """True if ``source`` cannot be a Hugging Face hub dataset name (``name`` or ``owner/name``)."""
    return (
        source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or "\\" in source
        or source.endswith((".jsonl", ".json", ".gz", ".parquet", ".csv", ".txt", ".arrow"))
    )


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"command line: expected section.key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), _parse_value(value)


def write_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the effective configuration as YAML (atomically: temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


# --- command line -----------------------------------------------------------------------------------

USAGE = """usage: train.py --config=PATH [--section.key=value | --section.key value ...]
                [--deepspeed_config=PATH] [--local_rank=N]

Sections: train_args, model_args, data_args, mlm_args, hierarchy_args. Every key, as
section.key (type, default), then what it does where the schema says:

{keys}
"""


def _type_name(annotation: Any) -> str:
    """``Literal['a', 'b'] | None`` -> ``a|b|null``; ``int`` -> ``int``; ``list[str]`` -> ``list[str]``."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "|".join(str(value) for value in get_args(annotation))
    if origin in (Union, UnionType):
        return "|".join("null" if arg is type(None) else _type_name(arg) for arg in get_args(annotation))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in get_args(annotation))}]"
    return getattr(annotation, "__name__", str(annotation))


def config_help(width: int = 100) -> str:
    """Every config key with its type, default and description (``lorentz-rag train --help``), from the pydantic
    sections: descriptions are the fields' ``description=``, the one place they are written."""
    lines = []
    for name, section in _sections().items():
        lines.append(f"{name}:")
        for key, field in section.model_fields.items():
            if field.is_required():
                default = "required"
            elif field.default_factory is not None:
                default = f"default {field.default_factory()!r}"  # type: ignore[call-arg]
            else:
                default = f"default {field.default!r}"
            lines.append(f"  {name}.{key} ({_type_name(field.annotation)}, {default})")
            if field.description:
                lines += textwrap.wrap(
                    field.description,
                    width,
                    initial_indent=" " * 6,
                    subsequent_indent=" " * 6,
                    break_on_hyphens=False,
                )
    return "\n".join(lines)


class ParsedCommandLine(BaseModel):
    """What ``train.py`` / ``lorentz-rag train`` received: the validated config and the launcher flags."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: TrainConfig
    config_path: str | None = None
    deepspeed_config: str | None = None
    local_rank: int | None = None


_LAUNCHER_FLAGS = {"config", "deepspeed_config", "local_rank", "local-rank", "deepspeed"}


def _is_bool_field(annotation: Any) -> bool:
    """``bool`` or ``bool | None``: a key that may stand alone on the command line."""
    if annotation is bool:
        return True
    return get_origin(annotation) in (Union, UnionType) and bool in get_args(annotation)


def _bare_flag_value(key: str) -> str:
    """The value of ``--key`` written without one: ``true`` for a bool key (and the ``--deepspeed``
    switch); any other known key is refused, naming it (a bare ``--train_args.learning_rate`` must not
    train at 1.0). An unknown key passes, so :func:`load_config` names it with its closest valid key."""
    if key == "deepspeed":
        return "true"
    if key in _LAUNCHER_FLAGS:
        raise ConfigError(f"command line: --{key} needs a value (--{key}=VALUE)")
    section, _, name = key.partition(".")
    model = _sections().get(section)
    field = model.model_fields.get(name) if model is not None else None
    if field is None or _is_bool_field(field.annotation):
        return "true"
    raise ConfigError(
        f"command line: --{key} has no value; write --{key}=VALUE ({_type_name(field.annotation)}); only "
        "true/false keys may stand alone"
    )


def parse_command_line(
    argv: Sequence[str], *, dotenv_dir: str | os.PathLike[str] | None = "."
) -> ParsedCommandLine:
    """Parse ``--config=PATH``, ``--deepspeed_config=PATH``, ``--local_rank=N`` and dotted overrides.

    ``--key=value`` and ``--key value`` are both accepted; a bare ``--section.key`` (at the end or followed
    by another flag) means ``true`` for a bool key and is refused for any other. ``-h``/``--help`` raises
    :class:`SystemExit` after printing every valid key.
    """
    argv = list(argv)
    flags: dict[str, Any] = {}
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("-h", "--help"):
            print(USAGE.format(keys=config_help()))
            raise SystemExit(0)
        if not token.startswith("--"):
            raise ConfigError(
                f"command line: unexpected argument {token!r}; options look like --section.key=value"
            )
        body = token[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 1
        else:
            key, value = body, _bare_flag_value(body)
        i += 1
        if key in _LAUNCHER_FLAGS:
            flags[key.replace("-", "_")] = value
        else:
            overrides.append((key, _parse_value(value)))
    if "deepspeed" in flags:
        # `--deepspeed` (HF style) is only a switch; the JSON comes from --deepspeed_config.
        flags.pop("deepspeed")
    config = load_config(flags.get("config"), dict(overrides), dotenv_dir=dotenv_dir)
    ds_config = flags.get("deepspeed_config")
    if ds_config is not None and not Path(ds_config).is_file():
        raise ConfigError(f"--deepspeed_config={ds_config}: file not found")
    if ds_config is not None and not isinstance(read_json_file(ds_config, "--deepspeed_config"), dict):
        raise ConfigError(f"--deepspeed_config={ds_config}: expected a JSON object of DeepSpeed settings")
    local_rank = flags.get("local_rank")
    return ParsedCommandLine(
        config=config,
        config_path=flags.get("config"),
        deepspeed_config=flags.get("deepspeed_config"),
        local_rank=int(local_rank) if local_rank is not None else None,
    )
