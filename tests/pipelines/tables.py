"""Hand-built log tables for pipeline tests: small, valid by construction, independent of the generator."""

import numpy as np
import pyarrow as pa

from mtl_rec.config import FeatureSpec, from_dict

TINY_SPEC = {
    "labels": ["click", "cart", "conversion"],
    "funnel": ["click", "cart", "conversion"],
    "tables": {
        "user": {"num_embeddings": 1000, "dim": 4, "id_map": "hash"},
        "cat": {"num_embeddings": 50, "dim": 4, "id_map": "mod"},
        "dev": {"num_embeddings": 3, "dim": 4, "id_map": "identity"},
    },
    "sparse": [
        {"name": "user_id", "table": "user"},
        {"name": "category", "table": "cat"},
        {"name": "device", "table": "dev"},
        {"name": "recent_categories", "table": "cat", "multi_hot": True, "pooling": "mean"},
    ],
    "dense": [{"name": "price", "transform": "log1p"}, {"name": "ctr", "scaling": "minmax"}],
}


def tiny_spec() -> FeatureSpec:
    return from_dict(FeatureSpec, TINY_SPEC)


def tiny_table(n: int = 6, seed: int = 0, start_id: int = 0) -> pa.Table:
    """n valid rows for tiny_spec(); lists of lengths cycling 2, 0, 3 (empty lists included)."""
    rng = np.random.default_rng(seed)
    lengths = np.resize([2, 0, 3], n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    click = np.resize([1, 0, 1], n).astype(np.int8)
    cart = (click * np.resize([1, 0, 0], n)).astype(np.int8)
    return pa.table(
        {
            "request_id": pa.array(np.arange(start_id, start_id + n), pa.int64()),
            "ts": pa.array(np.full(n, 1_795_003_200), pa.int64()),  # 2026-11-18 12:00 UTC
            "user_id": pa.array(rng.integers(0, 10**9, n), pa.int64()),
            "category": pa.array(rng.integers(0, 500, n), pa.int64()),
            "device": pa.array(np.resize([0, 1, 2], n), pa.int64()),
            "recent_categories": pa.ListArray.from_arrays(
                offsets, pa.array(rng.integers(0, 500, offsets[-1]), pa.int64())
            ),
            "price": pa.array(rng.uniform(1, 100, n), pa.float32()),
            "ctr": pa.array(rng.uniform(0, 0.2, n), pa.float32()),
            "click": pa.array(click),
            "cart": pa.array(cart),
            "conversion": pa.array(cart),
            "_truth_p_click": pa.array(rng.uniform(0, 1, n), pa.float32()),
        }
    )
