"""Whether a checkpoint's weights still mean the same thing under another feature spec.

A checkpoint is trained on one spec (saved beside it as features.yaml). Warm-starting or resuming it
under another spec is safe only where nothing that gives a weight its meaning changed:

- must match: every table (its name, num_embeddings, dim, id_map and pooling: which raw id lands in
  which row, and how rows are pooled), every sparse and dense feature in order (its table or
  column, multi_hot, transform and scaling: the order is the order of the model's input columns),
  the labels, and the domain column and its num_domains (STAR's per-domain parameters);
- may differ: the bookkeeping columns (date, id, time), the group key, meta columns, oracle truth
  columns, the truth / mask prefixes and the funnel: they decide what is read beside the model,
  validated and reported, never what a weight means.

Example::

    >>> spec_differences(saved, current)
    ["table 'item_id' num_embeddings 500000 -> 100000", "dense feature 'x' added"]
    >>> check_spec_compatible(saved, current, "runs/a/checkpoint", "warm start")
    Traceback (most recent call last):
    SpecMismatch: warm start refused: the feature spec differs from the checkpoint's
    (runs/a/checkpoint/features.yaml): table 'item_id' num_embeddings 500000 -> 100000; dense feature ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mtl_rec.config.features import SPEC_FILE, FeatureSpec
from mtl_rec.config.loader import ConfigError

# Per kind of entry: the fields that must match (see the module doc). Sparse `pooling` is compared
# per table (the pooling TorchRec applies), since a single-hot feature's pooling is moot.
_TABLE_FIELDS = ("num_embeddings", "dim", "id_map", "pooling")
_SPARSE_FIELDS = ("table", "column", "multi_hot", "cross", "boundaries")
_DENSE_FIELDS = ("column", "transform", "scaling")


class SpecMismatch(ConfigError):
    """A warm start or resume whose feature spec is incompatible with the checkpoint's."""


def _tables(spec: FeatureSpec) -> dict[str, dict]:
    return {
        name: {
            "num_embeddings": t.num_embeddings,
            "dim": t.dim,
            "id_map": t.id_map,
            "pooling": spec.table_pooling(name),
        }
        for name, t in spec.tables.items()
    }


def _entries(items: Sequence, fields: tuple[str, ...]) -> dict[str, dict]:
    return {item.name: {f: getattr(item, f) for f in fields} for item in items}


def _named(kind: str, saved: Mapping[str, dict], current: Mapping[str, dict]) -> list[str]:
    """'<kind> 'x' added / removed' and '<kind> 'x' <field> A -> B', in saved order then new ones."""
    out = [f"{kind} {name!r} removed" for name in saved if name not in current]
    out += [f"{kind} {name!r} added" for name in current if name not in saved]
    for name in (n for n in saved if n in current):
        out += [
            f"{kind} {name!r} {field} {saved[name][field]} -> {current[name][field]}"
            for field in saved[name]
            if saved[name][field] != current[name][field]
        ]
    return out


def _order(kind: str, saved: Sequence[str], current: Sequence[str]) -> list[str]:
    """The features both specs have, in another order (the model's input columns would move)."""
    both = [n for n in saved if n in current]
    now = [n for n in current if n in saved]
    return [f"{kind} reordered: {both} -> {now}"] if both != now else []


def spec_differences(saved: FeatureSpec, current: FeatureSpec) -> list[str]:
    """Every difference that changes what a checkpoint's weights mean (module doc), one phrase each;
    empty where `current` can load `saved`'s weights."""
    out = _named("table", _tables(saved), _tables(current))
    for kind, attr, fields in (("sparse", "sparse", _SPARSE_FIELDS), ("dense", "dense", _DENSE_FIELDS)):
        before, after = getattr(saved, attr), getattr(current, attr)
        out += _named(f"{kind} feature", _entries(before, fields), _entries(after, fields))
        out += _order(f"{kind} features", [f.name for f in before], [f.name for f in after])
    out += [f"label {name!r} removed" for name in saved.labels if name not in current.labels]
    out += [f"label {name!r} added" for name in current.labels if name not in saved.labels]
    for field in ("domain_column", "num_domains"):
        if getattr(saved, field) != getattr(current, field):
            out.append(f"{field} {getattr(saved, field)!r} -> {getattr(current, field)!r}")
    return out


def check_spec_compatible(
    saved: FeatureSpec, current: FeatureSpec, checkpoint: str | Path, action: str, advice: str = ""
) -> None:
    """Raise SpecMismatch naming every difference when `current` cannot take over `saved`'s weights.
    `action` ("warm start", "resume") opens the message, `advice` (what to do instead) ends it;
    `checkpoint` is the directory `saved` was read from."""
    differences = spec_differences(saved, current)
    if differences:
        raise SpecMismatch(
            f"{action} refused: the feature spec differs from the checkpoint's "
            f"({Path(checkpoint) / SPEC_FILE}): {'; '.join(differences)}" + (f". {advice}" if advice else "")
        )


# Run settings a resume may change: they decide how the run is executed, never what it trains.
RESUME_MAY_CHANGE = frozenset(
    {
        "features",  # the spec itself is checked by check_spec_compatible
        "data.eval_batch_size",
        "data.prefetch_batches",
        "data.read_tasks",
        "train.workers",
        "train.cpus_per_worker",
        "train.torch_threads",
        "train.max_failures",
        "train.log_every",
    }
)


def _flat(tree, prefix: str = "") -> dict[str, object]:
    """{"train.epochs": 1, ...}: a config dict's leaves by dotted key (lists are leaves)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, object] = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def config_differences(saved: Mapping, current: Mapping, may_change=RESUME_MAY_CHANGE) -> list[str]:
    """["train.epochs 1 -> 2", ...]: settings of two run configs (as dicts) that differ, outside
    `may_change`. Example: ``config_differences(to_dict(old), to_dict(new))``."""
    old, new = _flat(saved), _flat(current)
    return [
        f"{key} {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
        for key in sorted(old.keys() | new.keys())
        if key not in may_change and old.get(key) != new.get(key)
    ]
