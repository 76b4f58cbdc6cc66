"""What each Ray read task runs on a block: validate, then transform (or accumulate moments).

Kept apart from pipelines.dataset and pipelines.collate on purpose: a Ray task imports the module
its function lives in, and those import torch and TorchRec (seconds per fresh worker process).
This module needs only numpy, pyarrow and mtl_rec.config.
"""

from __future__ import annotations

import pyarrow as pa

from pipelines.transform import block_moments, transform_block
from pipelines.validate import validate_block


def prepare_block(table: pa.Table, source: str, spec, stats, spaces, policy, quarantine_dir) -> pa.Table:
    """Raw log block -> validated, transformed block (columns documented in pipelines.transform)."""
    good = validate_block(table, spec, policy, quarantine_dir, source)
    return transform_block(good, spec, stats, spaces)


def moments_block(table: pa.Table, source: str, spec, policy, quarantine_dir) -> pa.Table:
    """Raw log block -> one row of dense-feature moments over its valid rows (the stats pass)."""
    return block_moments(validate_block(table, spec, policy, quarantine_dir, source), spec)
