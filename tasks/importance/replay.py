"""Scoring many variants of one model that differ unit by unit, without recomputing the
layers that they share.

Layer reversion scores 28 distinct variants of a 6-layer model (:mod:`.reversion`). Two
variants whose units 0 … d hold the same weights compute the same ``hidden_states[d]`` on
every batch. Scored in lexicographic order of their keys (one flag per unit: reverted or
not), each variant shares its longest such prefix with the variant just before it. So the
hidden state at that depth is recorded on one variant's batches and replayed in a later
one, and layers 0 … d are not computed again. On the bundled 6-layer model that is 84
block forwards instead of 168.

Replaying puts the recorded tensor at the module call that produces ``hidden_states[d]``
(:func:`tasks.modeling.find_layer_sites`). Every site module up to that one returns the
tensor without computing. What the model computes after that point is the same arithmetic
on the same input, so the scores are bit-identical. The first replayed variant is also
scored in full and the two are compared. A model where replaying changes anything (a
family whose layers pass more than the hidden state along, say) is scored in full
throughout, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from layerdrift.tasks.modeling import find_layer_sites
from layerdrift.tasks.modeling.sites import output_form, replayed, shared_layer_error

logger = logging.getLogger(__name__)

Key = tuple[bool, ...]  # per unit in forward order (layers 0 … L, then the head): reverted


@dataclass(frozen=True)
class ReplayPlan:
    """The order to score variants in and, per position in that order, the depth replayed
    (-1: none) and the depths to record for later positions."""

    order: list[int]
    replay: list[int]
    record: list[frozenset[int]]


def _shared_depth(a: Key, b: Key, num_layers: int) -> int:
    """The deepest layer d with units 0 … d equal in ``a`` and ``b`` (-1: none); the head
    is never part of a prefix."""
    depth = -1
    for d in range(num_layers + 1):
        if a[d] != b[d]:
            break
        depth = d
    return depth


def replay_plan(keys: Sequence[Key], num_layers: int) -> ReplayPlan:
    """Plan scoring ``keys`` (distinct variants; layers 0 … ``num_layers`` then the head).

    In sorted order the variant just before shares the longest prefix with each variant.
    Its hidden state at that depth was computed by the nearest earlier variant that did not
    replay that depth itself, which records it. A later record at the same depth replaces
    an earlier one only once nobody needs the earlier one, so one slot per depth is enough.
    """
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    replay = [-1] * len(order)
    record: list[set[int]] = [set() for _ in order]
    for pos in range(1, len(order)):
        depth = _shared_depth(keys[order[pos - 1]], keys[order[pos]], num_layers)
        replay[pos] = depth
        if depth < 0:
            continue
        source = pos - 1
        while replay[source] >= depth:  # that one replayed this depth too: look further back
            source -= 1
        record[source].add(depth)
    return ReplayPlan(order, replay, [frozenset(r) for r in record])


@dataclass
class _State:
    """What the hooks read and write while one variant is scored."""

    batch: int = -1
    replay: int = -1
    record: frozenset[int] = frozenset()
    slots: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    tuple_sizes: dict[int, int | None] = field(default_factory=dict)  # sites.output_form
    unsupported: str | None = None


class PrefixReplay:
    """Hooks on a classifier that record and replay hidden states of its layer sites.

    Use :meth:`score` for every variant, in the order of :func:`replay_plan`; the model's
    weights are the caller's to set before each call. ``evaluate`` must call the model on
    the same batches in the same order every time (:func:`tasks.finetune.evaluate.evaluate`
    sorts by length, stably); a batch of another shape stops with an error.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        base = getattr(model, "base_model", model)
        shared = shared_layer_error(base)
        if shared is not None:
            raise ValueError(f"{shared}: nothing to replay")
        self.modules = [base.get_submodule(site.module) for site in find_layer_sites(base)]
        self.state = _State()
        self.verified = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[PrefixReplay]:
        """Hooks in place for the block; the model is left as it was."""
        handles = [self.model.register_forward_pre_hook(self._next_batch, with_kwargs=True)]
        for depth, module in enumerate(self.modules):
            handles.append(module.register_forward_hook(self._recorder(depth), prepend=True))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def score(self, evaluate: Callable[[nn.Module], tuple[float, float]], replay: int,
              record: frozenset[int]) -> tuple[float, float]:  # fmt: skip
        """``evaluate(model)`` replaying ``hidden_states[replay]`` (-1: computing every
        layer) and recording the depths ``record`` for later calls."""
        if self.state.unsupported is not None:
            replay = -1
        if replay >= 0 and not self.verified:
            full = self._run(evaluate, -1, frozenset())
            replayed = self._run(evaluate, replay, record)
            self.verified = True
            if replayed != full:
                self.state.unsupported = f"replayed scores {replayed} differ from {full}"
            if self.state.unsupported is not None:
                logger.warning("layer reversion scores every variant in full: %s",
                               self.state.unsupported)  # fmt: skip
            return full
        return self._run(evaluate, replay, record)

    def _run(self, evaluate, replay: int, record: frozenset[int]) -> tuple[float, float]:
        state = self.state
        if state.unsupported is not None:
            replay, record = -1, frozenset()
        state.batch, state.replay, state.record = -1, replay, record
        for depth in record:
            state.slots[depth] = []

        def batch_hidden() -> torch.Tensor:  # the recorded hidden state of the current batch
            return state.slots[replay][state.batch]

        skipped = contextlib.nullcontext()
        if replay >= 0:
            skipped = replayed(self.model, replay, state.tuple_sizes, batch_hidden)
        try:
            with skipped:
                return evaluate(self.model)
        finally:
            state.replay, state.record = -1, frozenset()

    def _next_batch(self, module, args, kwargs) -> None:
        state = self.state
        state.batch += 1
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else ()
        if state.batch == len(state.shapes):
            state.shapes.append(shape)
        elif state.replay >= 0 and state.shapes[state.batch] != shape:
            raise RuntimeError(
                f"batch {state.batch} has shape {shape}, recorded {state.shapes[state.batch]}: "
                "the evaluation must use the same batches for every variant"
            )

    def _recorder(self, depth: int):
        def hook(module, args, output):
            state = self.state
            if depth not in state.tuple_sizes:
                try:
                    state.tuple_sizes[depth] = output_form(output)
                except ValueError as error:
                    state.tuple_sizes[depth] = None
                    state.unsupported = f"{type(module).__name__}: {error}"
            if depth in state.record and depth > state.replay:
                hidden = output if state.tuple_sizes[depth] is None else output[0]
                state.slots[depth].append(hidden.detach().clone())
            return None

        return hook
