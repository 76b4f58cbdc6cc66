"""Model and task configuration: which backbone, which towers, which tasks on which sample spaces.

A preset's `model:` section becomes a ModelConfig; its `tasks:` list becomes a tuple of TaskConfig
(`parse_tasks`). A task may name a `parent` task: it then forms an entire-space chain (ESMM), its
tower models p(label | parent positive) and its prediction over all impressions is
p(parent) x p(label | parent); chains may be deeper (click -> cart -> conversion).

Example::

    >>> model = from_dict(ModelConfig, {"arch": "mmoe", "params": {"num_experts": 4}})
    >>> tasks = parse_tasks([
    ...     {"name": "ctr", "label": "click"},
    ...     {"name": "ctcvr", "label": "conversion", "parent": "ctr"},
    ... ])
    >>> [t.name for t in tasks], tasks[1].tower.hidden
    (['ctr', 'ctcvr'], (64,))

`arch` and `params` are checked against the backbone registry when the run config is assembled
(mtl_rec.run_config; mtl_rec.models.arch_config): this module stays a leaf, importing no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mtl_rec.config.loader import ConfigError, from_dict
from mtl_rec.config.spaces import SampleSpace


@dataclass(frozen=True)
class MLPConfig:
    """A stack of Linear -> [BatchNorm1d] -> activation -> [Dropout] layers, one per `hidden` width.

    An empty `hidden` is the identity (the output is the input), e.g. a tower that is a single logit.
    """

    hidden: tuple[int, ...] = (256, 128)
    activation: Literal["relu", "gelu", "silu"] = "relu"
    dropout: float = 0.0
    batch_norm: bool = False

    def __post_init__(self) -> None:
        if any(width <= 0 for width in self.hidden):
            raise ConfigError(f"MLP hidden widths must be positive, got {list(self.hidden)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"MLP dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TaskConfig:
    """One prediction task.

    name:   unique task name (the key of every per-task output, loss and metric)
    label:  the label column it predicts
    space:  the sample space it is trained and evaluated on (`all`, or e.g. `click == 1`),
            parsed by mtl_rec.config.spaces.SampleSpace
    parent: another task; this task's tower then models p(label | parent positive) and its
            entire-space prediction is p(parent) x p(label | parent) (ESMM). A chained task is
            trained over the entire space, so its space must be `all`.
    loss:   the loss on its entire-space prediction
    weight: static loss weight (dynamic weighting methods act on top of it)
    tower:  the task's MLP before its logit
    conditional_name: for a chained task, also evaluate its conditional prediction
            p(label | parent) over the parent's positive rows, reported under this name
            (ESMM's CVR: task `ctcvr` with conditional_name `cvr`). Evaluation only.
    """

    name: str
    label: str
    space: str = "all"
    parent: str | None = None
    loss: Literal["bce"] = "bce"
    weight: float = 1.0
    tower: MLPConfig = MLPConfig(hidden=(64,))
    conditional_name: str | None = None

    def __post_init__(self) -> None:
        if self.conditional_name and not self.parent:
            raise ConfigError(f"task {self.name!r}: conditional_name needs a parent task")
        if not self.name or not self.label:
            raise ConfigError(
                f"task needs a non-empty name and label, got name={self.name!r} label={self.label!r}"
            )
        if self.weight < 0:
            raise ConfigError(f"task {self.name!r}: weight must be >= 0, got {self.weight}")
        if self.parent == self.name:
            raise ConfigError(f"task {self.name!r} names itself as parent")
        try:
            SampleSpace.parse(self.space)
        except ConfigError as e:
            raise ConfigError(f"task {self.name!r}: {e}") from e

    @property
    def sample_space(self) -> SampleSpace:
        return SampleSpace.parse(self.space)


def validate_tasks(
    tasks: Sequence[TaskConfig], labels: Sequence[str] | None = None
) -> tuple[TaskConfig, ...]:
    """Check a task list as a whole; return it as a tuple. With `labels`, labels and spaces must use them.

    Rules: names are unique; a parent exists; parents form no cycle; a chained task and every parent
    are trained on the entire space (`space: all`), since p(parent) x p(child | parent) is only an
    entire-space probability when p(parent) is one.
    """
    tasks = tuple(tasks)
    if not tasks:
        raise ConfigError("at least one task is required")
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"task names used twice: {', '.join(duplicates)}")
    by_name = {t.name: t for t in tasks}
    for task in tasks:
        if labels is not None:
            if task.label not in labels:
                raise ConfigError(
                    f"task {task.name!r}: label {task.label!r} is not a label ({', '.join(labels)})"
                )
            try:
                SampleSpace.parse(task.space, tuple(labels))
            except ConfigError as e:
                raise ConfigError(f"task {task.name!r}: {e}") from e
        if task.parent is None:
            continue
        if task.parent not in by_name:
            raise ConfigError(
                f"task {task.name!r}: parent {task.parent!r} is not a task ({', '.join(names)})"
            )
        if not task.sample_space.is_all:
            raise ConfigError(
                f"task {task.name!r} has parent {task.parent!r}, so it is trained over the entire space: "
                f"its space must be 'all', got {task.space!r}"
            )
        if not by_name[task.parent].sample_space.is_all:
            raise ConfigError(
                f"task {task.parent!r} is the parent of {task.name!r}, so it must be trained over the entire "
                f"space: its space must be 'all', got {by_name[task.parent].space!r}"
            )
    task_order(tasks)  # raises on a cycle
    return tasks


def task_order(tasks: Sequence[TaskConfig]) -> tuple[str, ...]:
    """Task names with every parent before its children (config order otherwise); ConfigError on a cycle."""
    parent_of = {t.name: t.parent for t in tasks}
    order: list[str] = []
    for name in parent_of:
        chain: list[str] = []
        node: str | None = name
        while node is not None and node not in order:
            if node in chain:
                cycle = " -> ".join([*chain[chain.index(node) :], node])
                raise ConfigError(f"task parents form a cycle: {cycle}")
            chain.append(node)
            node = parent_of.get(node)
        order.extend(reversed(chain))
    return tuple(order)


def parse_tasks(
    data: Any, labels: Sequence[str] | None = None, where: str = "tasks"
) -> tuple[TaskConfig, ...]:
    """A preset's `tasks:` list -> validated tuple of TaskConfig."""
    return validate_tasks(from_dict(tuple[TaskConfig, ...], data, where), labels)


@dataclass(frozen=True)
class ModelConfig:
    """The network between the features and the task towers.

    arch:       a registered backbone (mtl_rec.models.MODELS): shared_bottom, omoe, mmoe, cgc, ple, ...
    params:     that backbone's own settings, checked against its config dataclass
                (e.g. MMoEConfig: num_experts, expert); unknown keys are errors
    dense_arch: the MLP over the dense features, before they join the pooled embeddings
    interaction: feature interaction added to the backbone's input: `none`, or `dot`, the pairwise
                dot products of the pooled feature embeddings (DLRM, Naumov et al. 2019). MLPs learn
                inner products poorly (Rendle et al., RecSys 2020), and user x item affinities are
                exactly that; `dot` needs every table to share one embedding dim.
    """

    arch: str = "mmoe"
    params: dict[str, Any] = field(default_factory=dict)
    dense_arch: MLPConfig = MLPConfig(hidden=(128, 64))
    interaction: Literal["none", "dot"] = "none"
