"""The fine-tunes of a run of several tasks (``[[tasks]]``): their configs, labels and pairs.

Each task (once per seed) is a *series*: an ordinary fine-tune of the run's model, run by
:func:`tasks.finetune.finetune` in a run folder of its own (``<run>/tasks/<prefix>/``) with
the run's config, the task's dataset, its ``[finetune]`` overrides and its seed. Every
series shares the run's probe set (its seed pinned), and the data stage leaves the probe
texts out of a series' training split, so no model is measured on texts it trained on.
Once a series finishes, its checkpoints are labelled ``<prefix>/<label>`` in the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from layerdrift.config import (
    REFERENCE_LABEL,
    SERIES_SEPARATOR,
    FinetuneConfig,
    RunConfig,
    TaskConfig,
    deep_merge,
)
from layerdrift.tasks.finetune.batches import planned_checkpoints

FINAL = "final"
# Kinds of a compared pair: two series finals (what differs between them), or a pair the
# config asks for (``similarity.pairs``).
PAIR_KINDS = ("task", "method", "seed", "asked")
ASKED = "asked"


@dataclass(frozen=True)
class Series:
    """One fine-tune of a run of several tasks: its label prefix, task and seed."""

    prefix: str
    task: TaskConfig
    seed: int

    def label(self, leaf: str) -> str:
        """The run's label of this series' checkpoint ``leaf`` (``topic/step-000120``)."""
        return f"{self.prefix}{SERIES_SEPARATOR}{leaf}"

    @property
    def final(self) -> str:
        """The run's label of this series' final checkpoint."""
        return self.label(FINAL)


def run_series(cfg: RunConfig) -> list[Series]:
    """The series of ``cfg`` in order (empty for a run of one task)."""
    return [
        Series(prefix, task, cfg.seed if seed is None else seed)
        for prefix, task, seed in cfg.series()
    ]


def find_series(cfg: RunConfig, prefix: str) -> Series:
    """The series of ``cfg`` with label prefix ``prefix``."""
    for series in run_series(cfg):
        if series.prefix == prefix:
            return series
    raise KeyError(f"no task series {prefix!r} in this run: {[s.prefix for s in run_series(cfg)]}")


def series_config(cfg: RunConfig, series: Series) -> RunConfig:
    """The config of one series' fine-tune: the run's, with the task's data and ``[finetune]``
    overrides, the series' seed, and the run's probe set with its seed pinned."""
    probe_seed = cfg.probe.seed if cfg.probe.seed is not None else cfg.seed
    finetune = FinetuneConfig.model_validate(
        deep_merge(cfg.finetune.model_dump(), series.task.finetune)
    )
    return cfg.model_copy(
        update={
            "tasks": (),
            "seed": series.seed,
            "data": cfg.data.model_copy(update=series.task.data_fields()),
            "probe": cfg.probe.model_copy(update={"seed": probe_seed}),
            "finetune": finetune,
        }
    )


def planned_labels(cfg: RunConfig, n_train: int | None = None) -> list[str]:
    """The checkpoint labels a run of several tasks will hold, before any data is read:
    ``base``, then each series' scheduled checkpoints (for ``n_train`` training examples,
    ``data.train_size`` by default)."""
    labels = [REFERENCE_LABEL]
    for series in run_series(cfg):
        scfg = series_config(cfg, series)
        schedule = planned_checkpoints(scfg, n_train or cfg.data.train_size)
        labels += [series.label(leaf) for _, leaf in schedule if leaf != REFERENCE_LABEL]
    return labels


def series_of(label: str) -> str:
    """The series prefix of a checkpoint label (``""`` for ``base`` and one-task labels)."""
    return label.rsplit(SERIES_SEPARATOR, 1)[0] if SERIES_SEPARATOR in label else ""


def previous_indices(labels: list[str]) -> list[int | None]:
    """Per checkpoint, the index of the one before it in its series: the series' previous
    checkpoint, or ``base`` (index 0) for a series' first; None for the first label.

    For the labels of one fine-tune (no prefixes) this is simply the checkpoint before."""
    out: list[int | None] = []
    last: dict[str, int] = {}
    for index, label in enumerate(labels):
        series = series_of(label)
        out.append(None if index == 0 else last.get(series, 0))
        last[series] = index
    return out


@dataclass(frozen=True)
class FinalPair:
    """Two series' final checkpoints compared layer by layer, and what differs between them."""

    first: str
    second: str
    kind: str  # one of PAIR_KINDS

    @property
    def name(self) -> str:
        """The pair's coordinate label: ``first~second``."""
        return f"{self.first}~{self.second}"


def pair_kind(a: Series, b: Series) -> str:
    """``seed`` (one task, two seeds), ``method`` (the same data, another fine-tuning
    method) or ``task`` (anything else)."""
    if a.task.name == b.task.name:
        return "seed"
    same_data = a.task.data_fields() == b.task.data_fields()
    method_a = a.task.finetune.get("method", "full")
    method_b = b.task.finetune.get("method", "full")
    return "method" if same_data and method_a != method_b else "task"


def final_pairs(cfg: RunConfig, labels: list[str]) -> list[FinalPair]:
    """Every pair of series finals present in ``labels``, in series order."""
    present = [s for s in run_series(cfg) if s.final in labels]
    return [FinalPair(a.final, b.final, pair_kind(a, b)) for a, b in combinations(present, 2)]


def compared_pairs(cfg: RunConfig, labels: list[str]) -> list[FinalPair]:
    """The checkpoint pairs of ``cross_similarity``: :func:`final_pairs`, then each pair of
    ``similarity.pairs`` not among them (kind ``asked``). A label of ``similarity.pairs``
    that ``labels`` lacks is a ValueError naming it."""
    missing = sorted({label for pair in cfg.similarity.pairs for label in pair} - set(labels))
    if missing:
        raise ValueError(
            f"similarity.pairs names {missing}, which the activation store does not hold "
            f"(it holds {labels}): pick from those"
        )
    out = final_pairs(cfg, labels)
    seen = {(p.first, p.second) for p in out}
    for first, second in cfg.similarity.pairs:
        if (first, second) not in seen:
            out.append(FinalPair(first, second, ASKED))
            seen.add((first, second))
    return out


def head_knows_probe_labels(cfg: RunConfig, label: str) -> bool:
    """Whether checkpoint ``label``'s classification head was trained on the labels the
    probe set carries: always outside a run of several tasks; in one, when the label's task
    reads the probe set's dataset, split and label column (a topic head scored on sentiment
    labels measures nothing)."""
    series = {s.prefix: s for s in run_series(cfg)}.get(series_of(label))
    if series is None:
        return True
    task = series.task.data_fields()
    return all(
        task[key] == getattr(cfg.probe, key) for key in ("dataset", "label_column", "hf_split")
    )


def task_coordinates(cfg: RunConfig, labels: list[str]) -> dict[str, list]:
    """Per checkpoint label: its ``task`` (``""`` for base and one-task runs), ``seed`` (-1
    for base) and ``method``; coordinates of the results' ``checkpoint`` dim."""
    by_prefix = {s.prefix: s for s in run_series(cfg)}
    tasks, seeds, methods = [], [], []
    for label in labels:
        series = by_prefix.get(series_of(label))
        if series is None:
            tasks.append("")
            seeds.append(-1 if label == REFERENCE_LABEL else cfg.seed)
            methods.append("" if label == REFERENCE_LABEL else cfg.finetune.method)
        else:
            tasks.append(series.task.name)
            seeds.append(series.seed)
            methods.append(series.task.finetune.get("method", cfg.finetune.method))
    return {"task": tasks, "seed": seeds, "method": methods}
