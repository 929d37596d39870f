"""The feature-comparison stage for a run directory.

- :func:`train_crosscoder_for_run` (per layer) trains, resumes or loads the crosscoder of
  (base, fine-tuned) at that layer under ``<run>/crosscoders/layer-<l>/``: the
  :mod:`tasks.dictionary` lifecycle with both models as sources;
- :func:`compare_features_for_run` (per layer) loads both SAEs and the crosscoder (training
  it if needed), scans the layer once and writes ``<run>/features/layer-<l>.json``;
- :func:`write_feature_results` gathers the layers into ``results.zarr`` and writes
  ``<run>/features/cards.json`` for the report.
"""

from __future__ import annotations

import json
import logging

import torch

from layerdrift.config import SERIES_SEPARATOR, RunConfig
from layerdrift.storage.activations import open_store, store_generation
from layerdrift.storage.results import list_results, open_result, write_result
from layerdrift.storage.results_schema import groups_of_stage
from layerdrift.storage.rundir import CARDS_PATH, FEATURES_DIR, RunDir
from layerdrift.storage.saes import sae_exists
from layerdrift.tasks.dictionary import (
    Job,
    folder_current,
    load_dictionary,
    make_loader,
    train_dictionaries,
)
from layerdrift.tasks.dictionary.runs import checkpoint_metadata
from layerdrift.tasks.features.compare import compare_layer
from layerdrift.tasks.features.control import CONTROL_SOURCE, train_control_for_run
from layerdrift.tasks.features.latent_scaling import surviving_counts
from layerdrift.tasks.features.results import write_feature_results as _write_results
from layerdrift.tasks.features.scan import DictionaryView
from layerdrift.tasks.features.task_table import task_features_table
from layerdrift.tasks.features.transfer import transfer_recovery
from layerdrift.tasks.modeling import select_device
from layerdrift.tasks.study.series import run_series, task_coordinates

logger = logging.getLogger(__name__)

TASK_FEATURES = "task_features"


def comparisons(cfg: RunConfig) -> list[str]:
    """The checkpoints whose features are compared with ``features.base``: ``features.finetuned``
    (the run's main comparison), then, in a run of several tasks, every other task final."""
    main = cfg.features.finetuned
    return [main, *(s.final for s in run_series(cfg) if s.final != main)]


def _comparison(cfg: RunConfig, finetuned: str | None) -> tuple[RunConfig, tuple[str, ...]]:
    """(the config of the comparison of ``features.base`` with ``finetuned``, the folder
    parts of its files): the run's own for None or ``features.finetuned`` (no parts, the
    one-task layout), else ``features.finetuned`` set to it and the label's parts."""
    if finetuned is None or finetuned == cfg.features.finetuned:
        return cfg, ()
    features = cfg.features.model_copy(update={"finetuned": finetuned})
    return cfg.model_copy(update={"features": features}), tuple(finetuned.split(SERIES_SEPARATOR))


def crosscoder_url(run: RunDir, layer: int, pair: tuple[str, ...] = ()) -> str:
    """Folder of the crosscoder of ``layer``: ``<run>/crosscoders/[<pair>/]layer-<l>``."""
    return run.crosscoder(layer, pair)


def layer_file(layer: int, pair: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Path parts of one layer's comparison inside the run: ``features/[<pair>/]layer-<l>.json``."""
    return (FEATURES_DIR, *pair, f"layer-{layer}.json")


def features_complete(run: RunDir, layer: int, pair: tuple[str, ...] = ()) -> bool:
    """Whether the comparison of ``layer`` is done: its ``features/layer-<l>.json`` exists
    and was made from the store as it is now (files without a generation count as current)."""
    if not run.exists(*layer_file(layer, pair)):
        return False
    saved = json.loads(run.read_text(*layer_file(layer, pair))).get("store_generation")
    return saved is None or saved == store_generation(run.activations())


def comparison_pair(cfg: RunConfig, finetuned: str | None) -> tuple[str, ...]:
    """The folder parts of the comparison with ``finetuned`` (none for the main one)."""
    return _comparison(cfg, finetuned)[1]


def comparison_complete(run: RunDir, cfg: RunConfig, layer: int, finetuned: str | None) -> bool:
    """:func:`features_complete` of the comparison of ``features.base`` with ``finetuned``."""
    return features_complete(run, layer, comparison_pair(cfg, finetuned))


def crosscoder_job(run: RunDir, cfg: RunConfig, layer: int, pair: tuple[str, ...] = ()) -> Job:
    """The dictionary job of the crosscoder of ``layer``: (base, fine-tuned) as its sources.

    Its file is no single model's SAE, so SAELens's ``model_name`` and ``hook_name`` stay
    empty and each model's are listed under ``metadata.layerdrift.models``.
    """
    checkpoints = (cfg.features.base, cfg.features.finetuned)
    models = [checkpoint_metadata(run, cfg, c, layer) | {"checkpoint": c} for c in checkpoints]
    metadata = {"model_name": None, "hook_name": None, "context_size": cfg.data.max_length}
    sources = tuple((c, layer) for c in checkpoints)
    return Job(crosscoder_url(run, layer, pair), sources, metadata, {"models": models})


def crosscoder_complete(run: RunDir, layer: int, pair: tuple[str, ...] = ()) -> bool:
    """Whether the crosscoder of ``layer`` is saved, in this layout, from the current store."""
    return folder_current(crosscoder_url(run, layer, pair), store_generation(run.activations()))


def train_crosscoder_for_run(
    run: RunDir, cfg: RunConfig, layer: int, finetuned: str | None = None
) -> str:
    """Train (or resume, or keep) the crosscoder of (``features.base``, ``finetuned``, by
    default ``features.finetuned``) at ``layer``; returns its folder URL."""
    cfg, pair = _comparison(cfg, finetuned)
    return _train_crosscoder(run, cfg, layer, pair)


def _train_crosscoder(run: RunDir, cfg: RunConfig, layer: int, pair: tuple[str, ...]) -> str:
    job = crosscoder_job(run, cfg, layer, pair)
    if crosscoder_complete(run, layer, pair):
        return job.url
    train_dictionaries(
        open_store(run.activations()),
        [job],
        cfg.features.dictionary,
        cfg.features.training,
        cfg.sae,
        device=select_device(cfg.device),
        store_generation=store_generation(run.activations()),
    )
    return job.url


def compare_features_for_run(
    run: RunDir, cfg: RunConfig, layer: int, finetuned: str | None = None
) -> dict:
    """Compare base and fine-tuned features at ``layer``; returns the layer's result dict.

    ``finetuned`` (default ``features.finetuned``) names the fine-tuned checkpoint; in a run
    of several tasks each other task final is compared the same way, its files under
    ``crosscoders/<label>/`` and ``features/<label>/``. Needs the activation store and the
    SAEs of ``features.base`` and ``finetuned`` at ``layer``. The dict (also saved as
    ``features/[<label>/]layer-<l>.json``) holds
    ``crosscoder_counts`` {base_only, shared, finetuned_only}, ``crosscoder_dead``,
    ``matched_fraction``, ``best_match_fraction``, ``matched_fraction_control`` and
    ``transfer_fvu_control`` (against a control SAE of the base model, trained here if
    missing, shared by every comparison: :mod:`.control`), ``crosscoder_surviving``
    {base_only, finetuned_only} (the exclusive latents that pass :mod:`.latent_scaling`),
    ``task_specific_fraction`` {source}, ``transfer_fvu`` {direction},
    ``transfer_accuracy_recovered`` {direction} (details in ``transfer_recovery_details``;
    NaN for a head of another task than the probe set's), ``crosscoder_fvu`` {base,
    finetuned}, histograms, ``cards`` and ``finetuned`` (the label compared).
    """
    cfg, pair = _comparison(cfg, finetuned)
    if features_complete(run, layer, pair):
        return json.loads(run.read_text(*layer_file(layer, pair)))
    fcfg, device = cfg.features, select_device(cfg.device)
    crosscoder = load_dictionary(_train_crosscoder(run, cfg, layer, pair), device).eval()
    base = load_dictionary(run.sae(fcfg.base, layer), device)
    finetuned = load_dictionary(run.sae(fcfg.finetuned, layer), device)
    control = load_dictionary(train_control_for_run(run, cfg, layer), device)
    sources = [(fcfg.base, layer), (fcfg.finetuned, layer)]
    loader = make_loader(open_store(run.activations()), sources, cfg.sae, fcfg.training.batch_size)
    result = compare_layer(
        loader,
        DictionaryView.of(base, "base_sae", "base"),
        DictionaryView.of(finetuned, "finetuned_sae", "finetuned"),
        DictionaryView.of(crosscoder, "crosscoder", "pair"),
        fcfg,
        batch_size=cfg.sae.training.batch_size,
        device=device,
        max_heldout_tokens=cfg.sae.eval_tokens,
        control=DictionaryView.of(control, CONTROL_SOURCE, "base"),
    )
    heldout, _ = loader.heldout(max_tokens=cfg.sae.eval_tokens)  # [n, 2, d_in]
    result["crosscoder_surviving"] = surviving_counts(crosscoder, torch.from_numpy(heldout), fcfg)
    recovered, details = transfer_recovery(run, cfg, loader, base, finetuned)
    result["transfer_accuracy_recovered"] = recovered
    result["transfer_recovery_details"] = details
    result["config"] = fcfg.model_dump(mode="json")
    result["store_generation"] = store_generation(run.activations())
    result["finetuned"] = fcfg.finetuned
    run.write_text(json.dumps(result, indent=1), *layer_file(layer, pair))
    return result


def feature_layers(run: RunDir, cfg: RunConfig, finetuned: str | None = None) -> list[int]:
    """Layers to compare: ``features.layers`` (else ``sae.layers``, else every stored layer)
    for which the SAEs of ``features.base`` and ``finetuned`` (default
    ``features.finetuned``) exist."""
    fcfg = _comparison(cfg, finetuned)[0].features
    layers = fcfg.layers if fcfg.layers is not None else cfg.sae.layers
    if layers is None:
        layers = range(open_store(run.activations()).sizes["layer"])
    return [
        int(layer)
        for layer in layers
        if all(sae_exists(run.sae(c, layer)) for c in (fcfg.base, fcfg.finetuned))
    ]


def _saved_comparison(run: RunDir, cfg: RunConfig, finetuned: str | None) -> list[dict]:
    """The saved per-layer results of one comparison, for its layers that are complete."""
    pair = comparison_pair(cfg, finetuned)
    return [
        json.loads(run.read_text(*layer_file(layer, pair)))
        for layer in feature_layers(run, cfg, finetuned)
        if features_complete(run, layer, pair)
    ]


def write_feature_results(run: RunDir, cfg: RunConfig, per_layer: list[dict] | None = None) -> None:
    """Write ``results.zarr`` feature groups and ``features/cards.json`` for the run; in a
    run of several tasks also ``task_features``, every comparison side by side.

    ``per_layer`` are :func:`compare_features_for_run` results of the main comparison; None
    reads every ``features/layer-<l>.json`` of the layers in :func:`feature_layers` that are
    complete.
    """
    if per_layer is None:
        per_layer = _saved_comparison(run, cfg, None)
    labels = comparisons(cfg)
    if len(labels) > 1:
        saved = {label: _saved_comparison(run, cfg, label) for label in labels[1:]}
        per_comparison = {labels[0]: per_layer} | {k: v for k, v in saved.items() if v}
        table = task_features_table(per_comparison, task_coordinates(cfg, list(per_comparison)))
        generation = per_layer[0].get("store_generation", "") if per_layer else ""
        write_result(run.results(), TASK_FEATURES, table.assign_attrs(
            base=cfg.features.base, store_generation=generation))  # fmt: skip
    _write_results(run, per_layer)  # cards.json last: it marks the stage written
    logger.info(
        "feature results for layers %s written; cards in %s",
        sorted(r["layer"] for r in per_layer),
        "/".join(CARDS_PATH),
    )


def feature_results_written(run: RunDir, cfg: RunConfig | None = None) -> bool:
    """Whether ``features/cards.json`` (written last by :func:`write_feature_results`) exists,
    ``results.zarr`` holds every group the features stage declares (a run made before a
    group was added writes it; ``task_features`` only when ``cfg`` compares several task
    finals) and they come from the store as it is now."""
    declared = {group.name for group in groups_of_stage("features")}
    if cfg is None or len(comparisons(cfg)) < 2:
        declared.discard(TASK_FEATURES)
    if not run.exists(*CARDS_PATH) or not declared <= set(list_results(run.results())):
        return False
    attrs = open_result(run.results(), "crosscoder_counts")["crosscoder_counts"].attrs
    return attrs.get("store_generation", "") == store_generation(run.activations())
