"""The frequency-scaled table L2 (train.table_l2, mtl_rec.table_l2): counts, the per-row term, its
gradient, the one-pass property, and 2 gloo ranks against 1."""

from pathlib import Path

import pytest
import torch

from mtl_rec.losses import auxiliary_losses
from mtl_rec.table_l2 import FrequencyL2, all_reduce_counts, count_table_rows
from tests.harness import run_on_ranks
from tests.mtl_rec.test_sharding import (
    ONE_RANK,
    ROWS,
    SPARSE_LR,
    TIMEOUT_S,
    TWO_RANKS,
    _close,
    _tables,
    load_full_state,
    local_tables,
    make_batch,
    make_config,
    make_spec,
    reference_model,
    sharded_model,
)

STRENGTH = 0.5
SINGLE_HOT = {"user_id": "user", "item_id": "item", "category": "cat", "device": "dev"}


def _reference_counts(batch) -> dict[str, torch.Tensor]:
    spec = make_spec()
    counts = {
        t: torch.zeros(spec.tables[t].num_embeddings, dtype=torch.int64) for t in set(SINGLE_HOT.values())
    }
    for feature, table in SINGLE_HOT.items():
        for row_id in batch.sparse[feature].values().tolist():
            counts[table][row_id] += 1
    return counts


def test_counts_are_the_single_hot_lookups_of_each_table_row():
    spec, batch = make_spec(), make_batch(make_spec())
    counts = count_table_rows([make_batch(spec, 0, 10), make_batch(spec, 10, ROWS)], spec)
    expected = _reference_counts(batch)
    assert set(counts) == set(expected) == {"user", "item", "cat", "dev"}
    for table, values in expected.items():
        assert torch.equal(counts[table], values), table
    # recent_categories (multi-hot, cat's rows too) is not counted: cat's total is `category`'s rows
    assert int(counts["cat"].sum()) == ROWS and batch.sparse["recent_categories"].values().numel() > 0


def test_the_term_is_strength_times_each_rows_squared_embedding_over_its_count():
    spec, cfg = make_spec(), make_config()
    model, batch = reference_model(spec, cfg), make_batch(spec)
    counts = {table: values + 2 for table, values in _reference_counts(batch).items()}  # n >= 2, varied
    term = FrequencyL2(spec, counts, STRENGTH)(model(batch).pooled, batch.sparse)  # [B]

    weights = {t: b.weight for t, b in model.sparse_arch.ebc.embedding_bags.items()}
    expected = torch.zeros(ROWS, dtype=torch.float32)
    for feature, table in SINGLE_HOT.items():
        ids = batch.sparse[feature].values()  # [B]: one id a row
        expected = expected + weights[table][ids].pow(2).sum(dim=1) / counts[table][ids]  # [B]
    expected = STRENGTH * expected
    _close(term, expected, "term", atol=1e-7)

    (grad,) = torch.autograd.grad(term.sum(), weights["user"])  # d/de_j = 2 strength e_j c_j / n_j
    ids = batch.sparse["user_id"].values()
    looked_up = torch.bincount(ids, minlength=weights["user"].shape[0]).float()  # [V]
    analytic = 2 * STRENGTH * weights["user"] * (looked_up / counts["user"]).unsqueeze(1)  # [V, D]
    _close(grad, analytic.detach(), "gradient of the user rows", atol=1e-7)
    assert looked_up.max() > 1  # a row looked up twice in the batch: the count scaling is exercised


def test_over_one_pass_every_row_gets_the_same_penalty_however_often_it_occurs():
    """Summed over the batches of a pass (each averaged over all N rows, as the loss is), the term
    is strength / N x the squared norm of every row looked up once: DIN's mini-batch aware L2."""
    spec, cfg = make_spec(), make_config()
    model = reference_model(spec, cfg)
    batches = [make_batch(spec, start, start + 6) for start in range(0, ROWS, 6)]
    l2 = FrequencyL2(spec, count_table_rows(batches, spec), STRENGTH)
    with torch.no_grad():
        total = sum(float(l2(model(batch).pooled, batch.sparse).sum()) for batch in batches) / ROWS
        weights = {t: b.weight for t, b in model.sparse_arch.ebc.embedding_bags.items()}
        expected = 0.0
        for table in set(SINGLE_HOT.values()):
            rows = torch.unique(torch.cat([make_batch(spec).sparse[f].values() for f, t in SINGLE_HOT.items()
                                           if t == table]))  # fmt: skip
            expected += float(weights[table][rows].pow(2).sum())
    assert total == pytest.approx(STRENGTH / ROWS * expected, rel=1e-5)


def _l2_step_worker(rank: int, out_dir: Path, slices) -> None:
    """One SGD step on the frequency L2 alone, counts all-reduced from every rank's rows."""
    spec, cfg = make_spec(), make_config()
    sharded = sharded_model(spec, cfg, seed=0)
    load_full_state(sharded.model, reference_model(spec, cfg).state_dict())
    batch = make_batch(spec, *slices[rank])
    counts = all_reduce_counts(count_table_rows([batch], spec))
    l2 = FrequencyL2(spec, counts, STRENGTH)
    tables_before = local_tables(sharded.model)
    sharded.zero_grad()
    outputs = sharded.model(batch)
    aux = auxiliary_losses({"table_l2": l2(outputs.pooled, batch.sparse)}, {}, batch)  # / global rows
    aux["table_l2"].backward()
    sharded.step()
    torch.save(
        {"counts": counts, "tables_before": tables_before, "tables_after": local_tables(sharded.model)},
        out_dir / f"rank{rank}.pt",
    )


def _run(out_dir: Path, slices) -> list[dict]:
    out_dir.mkdir(parents=True)
    run_on_ranks(_l2_step_worker, out_dir, slices, world_size=len(slices), timeout_s=TIMEOUT_S)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(len(slices))]


@pytest.mark.distributed
def test_two_ranks_count_and_regularise_every_row_like_one_rank(tmp_path):
    """Counts over the whole pass (here one batch, so c_j = n_j): every single-hot row looked up
    moves by exactly -lr x 2 strength e_j / ROWS, whatever its count, on 1 rank and on 2."""
    one, two = _run(tmp_path / "one", ONE_RANK), _run(tmp_path / "two", TWO_RANKS)
    spec, cfg = make_spec(), make_config()
    expected_counts = _reference_counts(make_batch(spec))
    for result in (*one, *two):  # exact integers, identical on every rank
        assert {t: torch.equal(result["counts"][t], c) for t, c in expected_counts.items()} == dict.fromkeys(
            expected_counts, True
        )
    reference = reference_model(spec, cfg)
    before = _tables(one, "tables_before", reference)
    for label, per_rank in (("1 rank", one), ("2 ranks", two)):
        after = _tables(per_rank, "tables_after", reference)
        for key, table in after.items():
            name = key.split(".")[-2]
            looked_up = (expected_counts[name] > 0).float().unsqueeze(1)  # [V, 1]
            expected = before[key] * (1 - SPARSE_LR * 2 * STRENGTH / ROWS * looked_up)  # [V, D]
            _close(table, expected, f"{label}: {key}", atol=1e-7)
            assert not torch.equal(table, before[key]), f"{key}: no row moved, the check would be vacuous"
