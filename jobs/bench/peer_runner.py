"""Train torch-rechub and DeepCTR-Torch multi-task models on a converted dataset; write their test AUCs.

Run by jobs/bench/peers.py with the peers' own venv (never mtl-rec's): this file imports only the
peer libraries, torch, pandas, numpy and sklearn (and never mtl_rec, pipelines or jobs).

    .cache/peers-venv/bin/python jobs/bench/peer_runner.py --data data/adult --epochs 1 --out peers.json

Data: DATA/dataset.json (written by `python -m jobs.datasets`) names the train and eval dates, the
sparse columns with their vocabulary sizes, the dense columns with their transforms and the labels;
the rows are DATA/logs/dt=DATE/*.parquet, so the peers see exactly mtl-rec's rows. Sparse columns
are already ids in [0, vocab); dense columns get mtl-rec's preprocessing: the transform (log1p), then
a z-score with the training rows' mean and (population) standard deviation. A dataset converted with
`--buckets N` lists each numeric column's cut points (`boundaries`): the peers then get the same
`<column>_bucket` id features as mtl-rec's spec, so both sides see the same inputs.

Models (sizes of torch-rechub's census example; every dense feature fed raw beside the embeddings):
  shared_bottom  bottom [117], towers [8]
  mmoe           8 experts [16], one linear softmax gate per task, towers [8]
  ple            1 level, 1 shared + 2 specific experts [16] per task, towers [8]
Embedding dim 4, Adam lr 1e-3 (no weight decay, no L2 on the embeddings), batch 1024, equal task
weights; each library's own defaults otherwise (torch-rechub's MLPs carry BatchNorm, DeepCTR's do not).

Timing: samples_per_s = training rows x epochs / seconds in the library's own training path:
torch-rechub's MTLTrainer.train_one_epoch over its DataGenerator's DataLoader (each epoch; fit()
would also score a validation set every epoch), DeepCTR-Torch's model.fit(x, y). Scoring is not timed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

BATCH_SIZE = 1024
LR = 1e-3
EMBEDDING_DIM = 4
EXPERT = [16]
TOWER = [8]
BOTTOM = [117]
MMOE_EXPERTS = 8
PLE_SHARED, PLE_SPECIFIC, PLE_LEVELS = 1, 2, 1


@dataclass
class Split:
    """One part of the data: sparse ids, scaled dense values and labels, as numpy arrays."""

    sparse: dict[str, np.ndarray]
    dense: dict[str, np.ndarray]
    labels: np.ndarray  # [N, T] float32

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])

    def features(self) -> dict[str, np.ndarray]:
        return {**self.sparse, **self.dense}


@dataclass
class Dataset:
    """The converted dataset's description and its train and test splits."""

    name: str
    vocab: dict[str, int]
    dense: list[str]
    tasks: list[str]
    train: Split
    test: Split


@dataclass
class Record:
    """One (library, model) run: what jobs.bench.peers returns for it."""

    dataset: str
    library: str
    model: str
    epochs: int
    auc: dict[str, float]
    pred_over_obs: dict[str, float]
    samples_per_s: float
    train_seconds: float
    train_rows: int
    test_rows: int
    oracle_auc: dict[str, float] = field(default_factory=dict)


def read_days(logs: Path, dates: list[str], columns: list[str]) -> pd.DataFrame:
    """The rows of the given days (hive folders dt=DATE), files in name order, days in date order."""
    frames = []
    for date in dates:
        files = sorted((logs / f"dt={date}").glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no Parquet files under {logs / f'dt={date}'}")
        frames += [pd.read_parquet(path, columns=columns) for path in files]
    return pd.concat(frames, ignore_index=True)


def load_dataset(data: Path) -> Dataset:
    """DATA/dataset.json + the Parquet days -> Dataset, dense features transformed and scaled."""
    meta = json.loads((data / "dataset.json").read_text())
    vocab, transforms, tasks = dict(meta["sparse"]), dict(meta["dense"]), list(meta["labels"])
    # `--buckets N` conversions: each numeric column is also a bucket id feature, as mtl-rec's spec has it
    boundaries = {name: np.asarray(cuts, np.float64) for name, cuts in meta.get("boundaries", {}).items()}
    columns = [*vocab, *transforms, *tasks]
    frames = {
        "train": read_days(data / "logs", meta["train_dates"], columns),
        "test": read_days(data / "logs", meta["eval_dates"], columns),
    }
    dense = {}
    for part, frame in frames.items():
        dense[part] = {}
        for name, transform in transforms.items():
            x = frame[name].to_numpy(np.float64)
            dense[part][name] = np.log1p(x) if transform == "log1p" else x
    splits = {}
    for part, frame in frames.items():
        scaled = {}
        for name in transforms:
            mean, std = dense["train"][name].mean(), dense["train"][name].std()
            scaled[name] = ((dense[part][name] - mean) / (std if std > 0 else 1.0)).astype(np.float32)
        sparse = {name: frame[name].to_numpy(np.int64) for name in vocab}
        for name, cuts in boundaries.items():  # mtl_rec.transform.bucket_ids' rule (no mtl_rec import here):
            values = frame[name].to_numpy(np.float32).astype(np.float64)  # compared as float32, as there
            sparse[f"{name}_bucket"] = np.searchsorted(cuts, values, side="right")
        splits[part] = Split(sparse, scaled, frame[tasks].to_numpy(np.float32))
    vocab |= {f"{name}_bucket": len(cuts) + 1 for name, cuts in boundaries.items()}
    return Dataset(meta["dataset"], vocab, list(transforms), tasks, splits["train"], splits["test"])


def scores(labels: np.ndarray, preds: np.ndarray, tasks: list[str]) -> tuple[dict, dict]:
    """({task: AUC}, {task: mean prediction / mean label}) on the test rows."""
    auc = {t: float(roc_auc_score(labels[:, i], preds[:, i])) for i, t in enumerate(tasks)}
    ratio = {t: float(preds[:, i].mean() / labels[:, i].mean()) for i, t in enumerate(tasks)}
    return auc, ratio


def run_torch_rechub(ds: Dataset, model_name: str, epochs: int) -> tuple[np.ndarray, float]:
    """(test predictions [N, T], training seconds) for torch-rechub's model."""
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE, PLE, SharedBottom
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    features = [SparseFeature(name, size, embed_dim=EMBEDDING_DIM) for name, size in ds.vocab.items()]
    features += [DenseFeature(name) for name in ds.dense]
    task_types = ["classification"] * len(ds.tasks)
    towers = [{"dims": TOWER} for _ in ds.tasks]
    if model_name == "shared_bottom":
        model = SharedBottom(features, task_types, bottom_params={"dims": BOTTOM}, tower_params_list=towers)
    elif model_name == "mmoe":
        model = MMOE(
            features, task_types, MMOE_EXPERTS, expert_params={"dims": EXPERT}, tower_params_list=towers
        )
    else:
        model = PLE(
            features,
            task_types,
            n_level=PLE_LEVELS,
            n_expert_specific=PLE_SPECIFIC,
            n_expert_shared=PLE_SHARED,
            expert_params={"dims": EXPERT},
            tower_params_list=towers,
        )
    generator = DataGenerator(ds.train.features(), ds.train.labels)
    train_loader, _, test_loader = generator.generate_dataloader(
        x_val=ds.test.features(),
        y_val=ds.test.labels,
        x_test=ds.test.features(),
        y_test=ds.test.labels,
        batch_size=BATCH_SIZE,
    )
    trainer = MTLTrainer(
        model,
        task_types=task_types,
        optimizer_params={"lr": LR, "weight_decay": 0.0},
        n_epoch=epochs,
        device="cpu",
        model_path=".",
    )
    began = time.perf_counter()
    for _ in range(epochs):
        trainer.train_one_epoch(train_loader)
    seconds = time.perf_counter() - began
    trainer.model.eval()
    with torch.no_grad():
        preds = [trainer.model(x).numpy() for x, _ in test_loader]
    return np.concatenate(preds), seconds


def run_deepctr(ds: Dataset, model_name: str, epochs: int) -> tuple[np.ndarray, float]:
    """(test predictions [N, T], training seconds) for DeepCTR-Torch's model."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models.multitask import MMOE, PLE, SharedBottom

    columns = [SparseFeat(name, size, embedding_dim=EMBEDDING_DIM) for name, size in ds.vocab.items()]
    columns += [DenseFeat(name, 1) for name in ds.dense]
    common = {
        "task_types": ["binary"] * len(ds.tasks),
        "task_names": ds.tasks,
        "tower_dnn_hidden_units": tuple(TOWER),
        "l2_reg_embedding": 0.0,
        "l2_reg_linear": 0.0,
        "device": "cpu",
    }
    if model_name == "shared_bottom":
        model = SharedBottom(columns, bottom_dnn_hidden_units=tuple(BOTTOM), **common)
    elif model_name == "mmoe":
        model = MMOE(
            columns,
            num_experts=MMOE_EXPERTS,
            expert_dnn_hidden_units=tuple(EXPERT),
            gate_dnn_hidden_units=(),
            **common,
        )
    else:
        model = PLE(
            columns,
            shared_expert_num=PLE_SHARED,
            specific_expert_num=PLE_SPECIFIC,
            num_levels=PLE_LEVELS,
            expert_dnn_hidden_units=tuple(EXPERT),
            gate_dnn_hidden_units=(),
            **common,
        )
    model.compile(torch.optim.Adam(model.parameters(), lr=LR), loss=["binary_crossentropy"] * len(ds.tasks))
    began = time.perf_counter()
    model.fit(ds.train.features(), ds.train.labels, batch_size=BATCH_SIZE, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - began
    return np.asarray(model.predict(ds.test.features(), batch_size=BATCH_SIZE * 16)), seconds


RUNNERS = {"torch-rechub": run_torch_rechub, "deepctr-torch": run_deepctr}


def disable_version_check() -> None:
    """DeepCTR-Torch asks PyPI for its latest version on import (a thread); a benchmark sends nothing."""
    import requests

    def offline(*args, **kwargs):
        raise requests.ConnectionError("network disabled by jobs/bench/peer_runner.py")

    requests.get = offline


def run_all(data: Path, epochs: int, models: list[str], libraries: list[str], seed: int) -> list[dict]:
    """Every (library, model) on DATA: a list of Record dicts."""
    ds = load_dataset(data)
    records = []
    for library in libraries:
        for model_name in models:
            torch.manual_seed(seed)
            np.random.seed(seed)
            preds, seconds = RUNNERS[library](ds, model_name, epochs)
            auc, ratio = scores(ds.test.labels, preds, ds.tasks)
            rate = ds.train.rows * epochs / seconds
            records.append(
                asdict(
                    Record(
                        ds.name,
                        library,
                        model_name,
                        epochs,
                        auc,
                        ratio,
                        rate,
                        seconds,
                        ds.train.rows,
                        ds.test.rows,
                    )
                )
            )
            print(f"{library:>13} {model_name:>13}: auc {auc}  {rate:,.0f} samples/s", flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["shared_bottom", "mmoe", "ple"],
        choices=["shared_bottom", "mmoe", "ple"],
    )
    parser.add_argument("--libraries", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--out", required=True, type=Path, help="JSON list of records")
    args = parser.parse_args()
    disable_version_check()
    records = run_all(args.data, args.epochs, args.models, args.libraries, args.seed)
    args.out.write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
