"""A trained run -> one self-contained serving artefact: a torch.export program and what it reads.

    RUN_DIR/checkpoint  (DCP shards of any world size and sharding plan)
      -> gather_model     the tables loaded WHOLE into an unsharded MultiTaskModel on the CPU, with no
                          process group (DCP reshards on load, the way it does between world sizes)
      -> ServingModel     plain-tensor interface: table lookups (float32, float16 or row-wise int8
                          tables), then the trained network's own forward_pooled (its backbone in
                          float32 or bfloat16), then the probabilities of every evaluation target
      -> torch.export     one ExportedProgram (graph + weights) in model.pt2, with a dynamic batch
                      of MIN_ROWS (2) rows and more

    OUT/model.pt2            torch.export.save of ServingModel: loads with torch alone
    OUT/model.aoti.pt2       with compile=True: the program compiled by AOTInductor (C++ kernels, fused
                             matmul + activation; ~1.7x the rows/s on 2 CPU cores), which the
                             Predictor prefers; building it needs a C++ compiler, loading it does not
    OUT/features.yaml        the run's resolved feature spec (id maps, hashing, scaling)
    OUT/feature_stats.json   the training days' dense statistics
    OUT/config.yaml          the run's config (tasks and chains)
    OUT/manifest.json        written last: versions, sha256 of every file, the run and checkpoint,
                             the targets (column order of the program's output) and its inputs

A serving directory holds exports side by side and current.json naming the live one (`publish`;
jobs.daily publishes each promotion there, jobs.serve follows it).

Why torch.export and not TorchScript: TorchScript is in maintenance mode upstream and cannot script
TorchRec's KeyedJaggedTensor; torch.export is PyTorch's supported path to serving (AOTInductor
compiles the same program ahead of time), and its ExportedProgram carries the graph and weights in
one file that torch.export.load runs without this project's model code.

Example::

    >>> manifest = export_run(Path("runs/mmoe"), Path("models/mmoe"), tables="int8")
    >>> manifest["targets"]
    [{'name': 'ctr', ...}, {'name': 'cvr', ...}, {'name': 'cart', ...}]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch
import torch._inductor
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.export import Dim

from mtl_rec.checkpoint import load_model_state, saved_model_state
from mtl_rec.config.features import SPEC_FILE, FeatureSpec, saved_feature_spec
from mtl_rec.config.loader import ConfigError
from mtl_rec.config.run import RunConfig
from mtl_rec.metrics import EvalTarget, eval_targets
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.run_config import run_config_from_dict
from mtl_rec.stack import describe_stack

EXPORT_FORMAT = 1
PROGRAM = "model.pt2"
COMPILED = "model.aoti.pt2"  # optional: the same program compiled ahead of time by AOTInductor
MANIFEST = "manifest.json"
STATS_FILE = "feature_stats.json"
CONFIG_FILE = "config.yaml"
TABLE_FORMATS = ("float32", "float16", "int8")
# The backbone's weights and matmuls (the experts: ~95% of a forward's FLOPs); towers and heads stay
# float32 so the final logits keep their resolution (bfloat16 probabilities would tie many rows).
DENSE_FORMATS = ("float32", "bfloat16")
CURRENT = "current.json"  # in a serving directory: {"model": <export dir name>, ...}, the live export
MAX_ROWS = 1 << 24  # the largest batch the program accepts (a bound torch.export asks for)
# The smallest: tracing specialises a batch of 1 away in several backbones (einsum and broadcasting
# guard on B != 1), so the program takes B >= 2 and the Predictor runs one row as two.
MIN_ROWS = 2


def gather_model(checkpoint: Path, cfg: RunConfig, spec: FeatureSpec) -> MultiTaskModel:
    """An unsharded MultiTaskModel on the CPU holding the checkpoint's weights, every table whole.
    No process group: DCP plans the load for one process and reads each shard into place."""
    model = MultiTaskModel(spec, cfg.model, cfg.tasks, device="cpu")
    state = {"model": saved_model_state(model.state_dict(), checkpoint / "model")}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... load in a single process": yes
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(checkpoint / "model"), no_dist=True)
    load_model_state(model, state["model"])
    return model.eval()


class TableLookup(nn.Module):
    """One embedding table for serving: ids [N] -> rows [N, D] float32.

    float32: the trained weights; float16: half the bytes, rounded to nearest; int8: row-wise
    asymmetric quantisation like FBGEMM's (each row's min and step in float32, values 0..255), a
    quarter of the bytes. Max error per value: float16 |w| * 2**-11, int8 (max - min) / 510 of its row.
    """

    def __init__(self, weight: Tensor, table_format: str) -> None:
        super().__init__()
        self.table_format = table_format
        weight = weight.detach().float()  # [N, D]
        if table_format == "float32":
            self.register_buffer("weight", weight.clone())
        elif table_format == "float16":
            self.register_buffer("weight", weight.half())
        elif table_format == "int8":
            low = weight.min(dim=1).values  # [N]
            step = (weight.max(dim=1).values - low) / 255.0  # [N]
            step = torch.where(step > 0, step, torch.ones_like(step))  # a constant row: any step
            codes = torch.round((weight - low[:, None]) / step[:, None])  # [N, D] in [0, 255]
            self.register_buffer("weight", codes.to(torch.uint8))
            self.register_buffer("low", low)
            self.register_buffer("step", step)
        else:
            raise ConfigError(f"tables must be one of {TABLE_FORMATS}, got {table_format!r}")

    def forward(self, ids: Tensor) -> Tensor:
        rows = F.embedding(ids, self.weight)  # [N] -> [N, D]
        if self.table_format == "int8":
            return rows.float() * self.step[ids, None] + self.low[ids, None]  # [N, D] * [N, 1] + [N, 1]
        return rows.float()

    def dequantized(self) -> Tensor:
        """[N, D] float32: what serving reads for every row (for error bounds and tests)."""
        return self(torch.arange(self.weight.shape[0]))


class LowPrecisionBackbone(nn.Module):
    """A backbone run in `dtype` (bfloat16): [B, In] float32 -> cast -> backbone -> {task: [B, H_task]}
    float32. On CPUs with AVX512-BF16 or AMX its matmuls run ~2x the float32 rate; each value keeps
    8 bits of mantissa (relative error ~2**-9 a rounding), so scores move in the third decimal and
    `python -m jobs.bench serve` measures what that costs in AUC."""

    def __init__(self, backbone: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.dtype = backbone.to(dtype), dtype
        self.reads_batch = getattr(backbone, "reads_batch", False)
        self.output_dims = backbone.output_dims

    def forward(self, x: Tensor, *batch) -> dict[str, Tensor]:
        features = self.inner(x.to(self.dtype), *batch)  # [B, In] -> {task: [B, H_task]} in dtype
        return {task: h.float() for task, h in features.items()}  # -> float32 for the towers


class ServingModel(nn.Module):
    """Plain tensors in, probabilities out; the trained network in between.

    forward(single, dense, [domain,] *multi):
        single: [B, S] int64 table rows of the single-hot features (spec order)
        dense:  [B, D] float32 scaled dense features
        domain: [B] int64 each row's domain id, only for a backbone that reads it (STAR, alone or under
                ESCM2) and a spec with a domain_column (`reads_domain`; the manifest's inputs.domain)
        multi:  values_1 [N_1] int64, offsets_1 [B + 1] int64, values_2, offsets_2, ...: one pair per
                multi-hot feature (spec order), offsets from 0 (mtl_rec.transform.model_inputs)
        -> [B, T] float32: p of each evaluation target (`targets` order): entire-space chain
           probabilities and the chained tasks' conditional ones (p(conversion | click)).
    """

    def __init__(
        self,
        model: MultiTaskModel,
        spec: FeatureSpec,
        targets: list[EvalTarget],
        tables: str,
        dense: str = "float32",
    ):
        super().__init__()
        if dense not in DENSE_FORMATS:
            raise ConfigError(f"dense must be one of {DENSE_FORMATS}, got {dense!r}")
        # A backbone that reads the batch reads its per-row domain ids (batch.meta[domain_column]):
        # the program takes them as an input of their own.
        self.domain_column = spec.domain_column if getattr(model.backbone, "reads_batch", False) else ""
        if self.domain_column:
            _check_domains(model.backbone, spec)
        self.model = model
        bags = model.sparse_arch.ebc.embedding_bags
        self.tables = nn.ModuleDict({name: TableLookup(bags[name].weight, tables) for name in spec.tables})
        self.single = [(f.name, f.table) for f in spec.sparse if not f.multi_hot]
        self.multi = [(f.name, f.table, spec.table_pooling(f.table)) for f in spec.sparse if f.multi_hot]
        self.order = list(spec.sparse_names)
        self.targets = list(targets)
        del self.model.sparse_arch  # its tables live in self.tables now (and only there)
        if dense == "bfloat16":
            if min(model.backbone.output_dims.values()) <= 1:  # STAR (also under ESCM2): it makes the logits
                raise ConfigError(
                    f"dense=bfloat16: model.arch={type(model.backbone).__name__} computes the task logits "
                    "itself, which bfloat16 would round (8-bit mantissa: many rows would tie); export it "
                    "with dense=float32"
                )
            self.model.backbone = LowPrecisionBackbone(self.model.backbone, torch.bfloat16)

    @property
    def reads_domain(self) -> bool:
        return bool(self.domain_column)

    def forward(self, single: Tensor, dense: Tensor, *rest: Tensor) -> Tensor:
        batch, multi = None, rest
        if self.reads_domain:
            batch = SimpleNamespace(meta={self.domain_column: rest[0]})  # [B] ids, as a Batch carries them
            multi = rest[1:]
        pooled = {}
        for j, (name, table) in enumerate(self.single):
            pooled[name] = self.tables[table](single[:, j])  # [B] -> [B, D_k]; a bag of one id is its row
        for j, (name, table, mode) in enumerate(self.multi):
            values, offsets = multi[2 * j], multi[2 * j + 1]  # [N], [B + 1]
            rows = self.tables[table](values)  # [N] -> [N, D_k]
            positions = torch.arange(values.shape[0], device=values.device)  # [N]
            pooled[name] = F.embedding_bag(positions, rows, offsets, mode=mode, include_last_offset=True)
        x = torch.cat([pooled[name] for name in self.order], dim=1)  # K x [B, D_k] -> [B, sum_k D_k]
        outputs = self.model.forward_pooled(x, dense, batch)  # -> TaskOutputs of {task: [B]}
        return torch.stack([t.predictions(outputs).float() for t in self.targets], dim=1)  # -> [B, T]


def _check_domains(backbone: nn.Module, spec: FeatureSpec) -> None:
    """The exported program gets the spec's domain column, whose ids the Predictor checks against the
    spec's num_domains: the backbone that reads them (STAR, or STAR under ESCM2) must read that column
    and hold weights for that many domains, or a row that passes the checks indexes past them."""
    while not hasattr(backbone, "num_domains") and hasattr(backbone, "backbone"):
        backbone = backbone.backbone  # ESCM2 wraps the backbone that reads the batch
    column, domains = getattr(backbone, "domain_column", None), getattr(backbone, "num_domains", None)
    if column != spec.domain_column or domains is None or domains < spec.num_domains:
        raise ConfigError(
            f"model.arch={type(backbone).__name__} reads domain column {column!r} with {domains} domains, "
            f"the feature spec has {spec.domain_column!r} with {spec.num_domains}: serving checks rows "
            "against the spec's, so set model.params.domain_column and num_domains to match"
        )


def example_inputs(
    spec: FeatureSpec, batch: int = 4, domain: bool = False
) -> tuple[tuple[Tensor, ...], tuple]:
    """(inputs, dynamic_shapes) for torch.export: a batch of `batch` rows of id 0 (and domain 0), every
    multi-hot list two long; the batch and every list's total length dynamic."""
    single = sum(1 for f in spec.sparse if not f.multi_hot)
    rows = Dim("rows", min=MIN_ROWS, max=MAX_ROWS)
    inputs: list[Tensor] = [torch.zeros(batch, single, dtype=torch.int64), torch.zeros(batch, spec.num_dense)]
    shapes: list = [{0: rows}, {0: rows}]
    varargs: list = [{0: rows}] if domain else []  # forward's *rest: the domain ids first
    if domain:
        inputs.append(torch.zeros(batch, dtype=torch.int64))
    multi_shapes = []
    for k, feature in enumerate(f for f in spec.sparse if f.multi_hot):
        inputs += [torch.zeros(2 * batch, dtype=torch.int64), torch.arange(0, 2 * batch + 1, 2)]
        multi_shapes += [{0: Dim(f"ids_{k}_{feature.name}", min=0, max=64 * MAX_ROWS)}, {0: rows + 1}]
    # forward's *rest gets one tuple of shapes; a program with no domain and no multi-hot feature takes
    # no varargs at all, and torch.export then wants no entry for them (an empty tuple is an arity
    # mismatch).
    varargs += multi_shapes
    return tuple(inputs), (*shapes, tuple(varargs)) if varargs else tuple(shapes)


def export_program(serving: ServingModel, spec: FeatureSpec) -> torch.export.ExportedProgram:
    inputs, shapes = example_inputs(spec, domain=serving.reads_domain)
    with torch.no_grad():
        return torch.export.export(serving, inputs, dynamic_shapes=shapes)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_run(run_dir: Path) -> tuple[Path, RunConfig, FeatureSpec]:
    """(checkpoint, config, saved spec) of a trained run; clear errors where something is missing."""
    checkpoint = Path(run_dir) / "checkpoint"
    if not (checkpoint / "MANIFEST.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint (checkpoint/MANIFEST.json missing)")
    cfg = run_config_from_dict(yaml.safe_load((checkpoint / CONFIG_FILE).read_text()))
    spec = saved_feature_spec(checkpoint)
    if spec is None:
        raise ConfigError(f"{checkpoint}: no {SPEC_FILE} (trained before runs saved their spec); retrain it")
    return checkpoint, cfg, spec


def export_run(
    run_dir: Path, out_dir: Path, tables: str = "float32", compile: bool = False, dense: str = "float32"
) -> dict:
    """Export RUN_DIR's checkpoint to OUT_DIR (see module doc), atomically: a half-written export is
    never at OUT_DIR. compile: also build model.aoti.pt2 (AOTInductor); dense: the backbone's
    precision (DENSE_FORMATS). Returns the manifest."""
    run_dir, out_dir = Path(run_dir).resolve(), Path(out_dir)
    checkpoint, cfg, spec = read_run(run_dir)
    targets = eval_targets(cfg.tasks, spec)
    serving = ServingModel(gather_model(checkpoint, cfg, spec), spec, targets, tables, dense).eval()
    program = export_program(serving, spec)

    staging = out_dir.parent / f".{out_dir.name}.tmp-{dt.datetime.now().strftime('%H%M%S%f')}"
    staging.mkdir(parents=True)
    torch.export.save(program, staging / PROGRAM)
    files = [PROGRAM, SPEC_FILE, STATS_FILE, CONFIG_FILE]
    if compile:
        torch._inductor.aoti_compile_and_package(program, package_path=str(staging / COMPILED))
        files.append(COMPILED)
    for name in (SPEC_FILE, STATS_FILE, CONFIG_FILE):
        shutil.copyfile(checkpoint / name, staging / name)
    source = json.loads((checkpoint / "MANIFEST.json").read_text())
    manifest = {
        "format": EXPORT_FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir),
        "checkpoint": {k: source.get(k) for k in ("world_size", "step", "epoch", "done")},
        "stack": describe_stack(),
        "arch": cfg.model.arch,
        "tables": tables,
        "dense": dense,
        "compiled": compile,
        "table_bytes": sum(b.numel() * b.element_size() for b in serving.tables.buffers()),
        "targets": [asdict(t) for t in targets],
        "inputs": {
            "single": [name for name, _ in serving.single],
            "multi": [name for name, _, _ in serving.multi],
            "dense": list(spec.dense_names),
            "domain": serving.domain_column or None,  # given after dense, when the program reads it
            "columns": spec.model_columns(),
        },
        "files": {name: sha256_file(staging / name) for name in files},
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    previous = out_dir.parent / f".{out_dir.name}.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(previous)
    staging.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return manifest


def publish(serving_dir: Path, name: str, info: dict | None = None) -> None:
    """Make SERVING_DIR/NAME (an export) the live model: current.json replaced atomically, so a
    watcher (jobs.serve) reads the old pointer or the new one, never half of one."""
    if not (Path(serving_dir) / name / MANIFEST).is_file():
        raise FileNotFoundError(f"{serving_dir}/{name}: not a complete export ({MANIFEST} missing)")
    temporary = Path(serving_dir) / f".{CURRENT}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps({"model": name, **(info or {})}, indent=2))
    os.replace(temporary, Path(serving_dir) / CURRENT)


def resolve_model(path: str | Path) -> tuple[Path, str]:
    """(export directory, model id) of an export, or of a serving directory's live export."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path, path.name
    if (path / CURRENT).is_file():
        name = json.loads((path / CURRENT).read_text())["model"]
        return path / name, name
    raise FileNotFoundError(f"{path}: neither an export ({MANIFEST}) nor a serving directory ({CURRENT})")
