"""Dictionary folders (SAEs and crosscoders) in SAELens's file layout, and the training state.

One folder per dictionary, ``<run>/saes/<checkpoint>/layer-<l>/`` for an SAE and
``<run>/crosscoders/layer-<l>/`` for a crosscoder (a local path or fsspec URL)::

    sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
                              b_dec [d_in] (+ threshold [d_sae] for JumpReLU files)
    sparsity.safetensors      sparsity [d_sae]: log10 feature density (SAELens's file)
    cfg.json                  SAELens 6 config (architecture, d_in, d_sae, metadata, ...)
    train-state/              only while training: model, optimizer and loader position

``cfg.json`` is written last, so its presence means the folder is complete. The training
state is written tensors first and ``state.json`` last, so a half-written state is never
read. This module knows files and tensors only; the dictionaries live in
``tasks.dictionary``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import fsspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

logger = logging.getLogger(__name__)

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
TRAIN_STATE_DIR = "train-state"
STATE_JSON = "state.json"
STATE_MODEL = "model.safetensors"
STATE_OPTIMIZER = "optimizer.safetensors"
SAE_PARAMETERS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def _write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(data)


def _read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    with fs.open(path, "rb") as handle:
        return handle.read()


def sae_exists(url: str) -> bool:
    """Whether ``url`` holds a complete dictionary (weights and, written last, ``cfg.json``)."""
    fs, path = _fs(url)
    return fs.exists(f"{path}/{SAE_CFG_FILENAME}") and fs.exists(f"{path}/{SAE_WEIGHTS_FILENAME}")


def read_cfg(url: str) -> dict[str, Any]:
    """The ``cfg.json`` of the dictionary folder ``url`` ({} when there is none)."""
    fs, path = _fs(url)
    if not fs.exists(f"{path}/{SAE_CFG_FILENAME}"):
        return {}
    return json.loads(_read_bytes(fs, f"{path}/{SAE_CFG_FILENAME}"))


def remove_folder(url: str) -> None:
    """Delete the dictionary folder ``url`` and everything in it (nothing when absent)."""
    fs, path = _fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def save_sae_files(
    url: str,
    cfg: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    sparsity: torch.Tensor | None = None,
) -> None:
    """Write ``sae_weights.safetensors``, ``sparsity.safetensors``, then ``cfg.json``.

    ``tensors`` must hold W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in] and
    b_dec [d_in] (extra tensors are kept too); ``cfg`` needs ``d_in`` and ``d_sae``;
    ``sparsity`` [d_sae] is the log10 feature density.
    """
    missing = [name for name in SAE_PARAMETERS if name not in tensors]
    if missing:
        raise ValueError(f"SAE weights lack {missing}: SAELens files need {SAE_PARAMETERS}")
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensors[name].shape)}, expected {shape}")
    fs, path = _fs(url)
    cpu = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    _write_bytes(fs, f"{path}/{SAE_WEIGHTS_FILENAME}", save_bytes(cpu))
    if sparsity is not None:
        log_density = {"sparsity": sparsity.detach().to("cpu", torch.float32).contiguous()}
        _write_bytes(fs, f"{path}/{SPARSITY_FILENAME}", save_bytes(log_density))
    _write_bytes(fs, f"{path}/{SAE_CFG_FILENAME}", json.dumps(cfg, indent=2).encode())
    logger.info("saved dictionary (%d -> %d) to %s", d_in, d_sae, url)


def load_sae_files(url: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``(cfg, tensors)`` of the dictionary in folder ``url`` (tensors on the CPU).

    Raises FileNotFoundError naming what is missing.
    """
    if not sae_exists(url):
        raise FileNotFoundError(
            f"nothing complete at {url} (needs {SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME}): "
            "run the stage that trains it (sae, or features for a crosscoder)"
        )
    fs, path = _fs(url)
    cfg = json.loads(_read_bytes(fs, f"{path}/{SAE_CFG_FILENAME}"))
    return cfg, load_bytes(_read_bytes(fs, f"{path}/{SAE_WEIGHTS_FILENAME}"))


def load_sparsity(url: str) -> torch.Tensor | None:
    """The log10 feature density [d_sae] of ``sparsity.safetensors`` (None when absent)."""
    fs, path = _fs(url)
    if not fs.exists(f"{path}/{SPARSITY_FILENAME}"):
        return None
    return load_bytes(_read_bytes(fs, f"{path}/{SPARSITY_FILENAME}"))["sparsity"]


# The training state ---------------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything a killed training run needs to continue exactly where it was saved.

    ``model`` is the module's state_dict, ``optimizer`` the optimizer's state_dict and
    ``extra`` a JSON-ready dict (step, loader position, ...) plus named tensors in
    ``tensors`` (e.g. the per-latent dead-token counters).
    """

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    extra: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON skeleton of a nested state with tensors replaced by ``{"__tensor__": key}``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_train_state(url: str, state: TrainState) -> None:
    """Write the training state into ``<url>/train-state/`` (``state.json`` removed first,
    written last, so it marks a complete state).

    The optimizer state (nested dicts of tensors, ints keys included) is stored as
    safetensors plus a JSON skeleton, so loading never unpickles anything.
    """
    fs, path = _fs(url)
    folder = f"{path}/{TRAIN_STATE_DIR}"
    # The previous state's marker goes first: a kill while the tensors below are rewritten
    # then leaves no state (training restarts) rather than a marker over truncated files.
    if fs.exists(f"{folder}/{STATE_JSON}"):
        fs.rm(f"{folder}/{STATE_JSON}")
    opt_tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state.optimizer, "opt", opt_tensors)
    model = {k: v.detach().to("cpu").contiguous() for k, v in state.model.items()}
    _write_bytes(fs, f"{folder}/{STATE_MODEL}", save_bytes(model))
    extra_tensors = {
        f"extra.{k}": v.detach().to("cpu").contiguous() for k, v in state.tensors.items()
    }
    _write_bytes(fs, f"{folder}/{STATE_OPTIMIZER}", save_bytes({**opt_tensors, **extra_tensors}))
    payload = {"extra": state.extra, "optimizer": skeleton, "tensors": sorted(state.tensors)}
    _write_bytes(fs, f"{folder}/{STATE_JSON}", json.dumps(payload).encode())
    logger.info("saved training state (%s) to %s", state.extra, folder)


def load_train_state(url: str) -> TrainState | None:
    """The training state saved under ``<url>/train-state/``, or None when there is none.

    A state that cannot be read whole (a file cut short by a kill in a version that wrote
    ``state.json`` before its tensors) counts as none, with a warning: training restarts.
    """
    fs, path = _fs(url)
    folder = f"{path}/{TRAIN_STATE_DIR}"
    if not fs.exists(f"{folder}/{STATE_JSON}"):
        return None
    try:
        payload = json.loads(_read_bytes(fs, f"{folder}/{STATE_JSON}"))
        model = load_bytes(_read_bytes(fs, f"{folder}/{STATE_MODEL}"))
        stored = load_bytes(_read_bytes(fs, f"{folder}/{STATE_OPTIMIZER}"))
        optimizer = _unflatten(payload["optimizer"], stored)
        tensors = {name: stored[f"extra.{name}"] for name in payload["tensors"]}
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        logger.warning("training state in %s is unreadable (%s): starting over", folder, error)
        return None
    return TrainState(model=model, optimizer=optimizer, extra=payload["extra"], tensors=tensors)


def clear_train_state(url: str) -> None:
    """Remove ``<url>/train-state/`` (after the finished dictionary is saved)."""
    fs, path = _fs(url)
    if fs.exists(f"{path}/{TRAIN_STATE_DIR}"):
        fs.rm(f"{path}/{TRAIN_STATE_DIR}", recursive=True)
