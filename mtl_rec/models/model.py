"""The full multi-task model: TorchRec pooled embeddings + dense MLP -> backbone -> task heads.

    batch.sparse (KJT, K features) -> sparse_arch.ebc -> [B, sum_k D_k]   (pooled, spec feature order)
    batch.dense  [B, D]           -> dense_arch      -> [B, H_dense]
    concat                                            -> [B, In]
    backbone (registered arch)                        -> {task: [B, H_task]}
    heads (towers, ESMM chains)                       -> TaskOutputs {task: [B]}

The EmbeddingBagCollection is built on the meta device by default: DistributedModelParallel
materialises only each rank's shards, so a 1M-row table never exists in full on one host.

Example::

    >>> spec = load_feature_spec("jobs/configs/features.yaml")
    >>> tasks = parse_tasks([{"name": "ctr", "label": "click"},
    ...                      {"name": "cvr", "label": "conversion", "space": "click == 1"}], spec.labels)
    >>> model = MultiTaskModel(spec, ModelConfig(arch="mmoe"), tasks)            # EBC on meta
    >>> model = DistributedModelParallel(model, device=device, plan=plan)      # shards, materialises
    >>> outputs = model(batch)                                                 # TaskOutputs
    >>> outputs.log_p["ctr"].shape
    torch.Size([4096])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from mtl_rec.batch import Batch
from mtl_rec.config.features import FeatureSpec
from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import ModelConfig, TaskConfig, validate_tasks
from mtl_rec.models import build_backbone
from mtl_rec.models.heads import TaskHeads, TaskOutputs
from mtl_rec.models.layers import MLP

POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
# Largest initial |weight| of an embedding row. TorchRec's default, sqrt(1 / num_embeddings), is
# 0.38 for a 7-row weekday table: a value the training days never show (the eval day's weekday, a
# new device type) then keeps a large random row and shifts every prediction of that day, which
# wrecks calibration. Rows start near 0 (DeepCTR-Torch initialises with std 1e-4) and an unseen
# value stays near neutral; row-wise Adagrad's first steps are normalised, so learning is as fast.
EMBEDDING_INIT_BOUND = 0.01


def init_bound(num_embeddings: int) -> float:
    """The uniform init bound of a table: min(sqrt(1 / num_embeddings), EMBEDDING_INIT_BOUND)."""
    return min(math.sqrt(1.0 / num_embeddings), EMBEDDING_INIT_BOUND)


class SparseArch(nn.Module):
    """KJT with one key per sparse feature -> [B, sum_k D_k] pooled embeddings in spec feature order.

    One EmbeddingBagConfig per spec table; features sharing a table (category and
    recent_categories) share its rows. The `ebc` attribute is what the sharding planner shards.
    """

    def __init__(self, spec: FeatureSpec, device: torch.device) -> None:
        super().__init__()
        tables = []
        for name, table in spec.tables.items():
            bound = init_bound(table.num_embeddings)
            tables.append(
                EmbeddingBagConfig(
                    name=name,
                    num_embeddings=table.num_embeddings,
                    embedding_dim=table.dim,
                    feature_names=list(spec.table_features(name)),
                    pooling=POOLING[spec.table_pooling(name)],
                    weight_init_min=-bound,  # sharded tables (FBGEMM) initialise from these
                    weight_init_max=bound,
                    init_fn=partial(nn.init.uniform_, a=-bound, b=bound),  # unsharded and replicated ones
                )
            )
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)
        self.feature_names = spec.sparse_names
        self.output_dim = sum(spec.tables[feature.table].dim for feature in spec.sparse)

    def forward(self, features: KeyedJaggedTensor) -> Tensor:
        # The EBC's KeyedTensor lists features table by table; the model reads them in spec order.
        pooled = self.ebc(features).to_dict()  # KJT -> KeyedTensor [B, sum_k D_k] -> {k: [B, D_k]}
        return torch.cat([pooled[name] for name in self.feature_names], dim=1)  # K x [B, D_k] -> [B, sum D_k]


class MultiTaskModel(nn.Module):
    """Batch -> TaskOutputs ({task: [B]} logit, log_p, log_1mp; see mtl_rec.models.heads).

    spec:      the feature spec (tables, sparse and dense features, labels)
    model_cfg: backbone arch + params, and the dense-feature MLP
    tasks:     task configs, checked against spec.labels
    device:    where the embedding tables are built: "meta" (default) for DistributedModelParallel
               to materialise when sharding, or a real device to use the model unsharded. The dense
               layers are built on that device, or on the CPU when it is meta (DMP moves them).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        model_cfg: ModelConfig,
        tasks: Sequence[TaskConfig],
        device: torch.device | str = "meta",
    ) -> None:
        super().__init__()
        device = torch.device(device)
        tasks = validate_tasks(tasks, spec.labels)
        self.task_names = tuple(task.name for task in tasks)
        self.sparse_arch = SparseArch(spec, device)
        # No dense features is a valid spec: the backbone then reads the pooled embeddings alone.
        self.dense_arch = MLP(spec.num_dense, model_cfg.dense_arch) if spec.num_dense else None
        input_dim = self.sparse_arch.output_dim + (self.dense_arch.output_dim if self.dense_arch else 0)
        self.interaction = model_cfg.interaction
        if self.interaction == "dot":
            dims = {spec.tables[f.table].dim for f in spec.sparse}
            if len(dims) != 1:
                raise ConfigError(
                    f"model.interaction=dot needs one embedding dim for all tables, got {sorted(dims)}"
                )
            num_features, self.embedding_dim = len(spec.sparse), dims.pop()
            upper = torch.triu_indices(num_features, num_features, offset=1)  # [2, K(K-1)/2]
            self.register_buffer("pair_rows", upper[0], persistent=False)
            self.register_buffer("pair_cols", upper[1], persistent=False)
            input_dim += upper.shape[1]
        self.backbone = build_backbone(model_cfg, input_dim, self.task_names)
        self.heads = TaskHeads(self.backbone.output_dims, tasks)
        if device.type != "meta":
            self.to(device)  # the dense layers; the tables are already there

    def forward(self, batch: Batch) -> TaskOutputs:
        pooled = self.sparse_arch(batch.sparse)  # KJT -> [B, sum_k D_k]
        outputs = self.forward_pooled(pooled, batch.dense, batch)  # -> TaskOutputs of {task: [B]}
        outputs.pooled = pooled
        if hasattr(self.backbone, "auxiliary_losses"):
            outputs.aux = self.backbone.auxiliary_losses(outputs, batch)  # {name: [B] or []}
        return outputs

    def forward_pooled(self, pooled: Tensor, dense: Tensor, batch: Batch | None = None) -> TaskOutputs:
        """Everything after the table lookups: [B, sum_k D_k] pooled embeddings (spec feature order)
        and [B, D] dense features -> TaskOutputs without auxiliary terms. The exported serving model
        (mtl_rec.export) does its own lookups and calls this, so serving runs training's network."""
        x = pooled
        if self.interaction == "dot":
            embeddings = x.view(x.shape[0], -1, self.embedding_dim)  # [B, K * D] -> [B, K, D]
            gram = torch.bmm(embeddings, embeddings.transpose(1, 2))  # [B, K, D] x [B, D, K] -> [B, K, K]
            pairs = gram[:, self.pair_rows, self.pair_cols]  # [B, K, K] -> [B, K(K-1)/2]
            x = torch.cat([x, pairs], dim=1)  # [B, K * D] ++ [B, K(K-1)/2]
        if self.dense_arch is not None:
            dense = self.dense_arch(dense)  # [B, D] -> [B, H_dense]
            x = torch.cat([x, dense], dim=1)  # [B, sum_k D_k] ++ [B, H_dense] -> [B, In]
        if getattr(self.backbone, "reads_batch", False):
            features = self.backbone(x, batch)  # [B, In] (+ batch.meta) -> {task: [B, H_task]}
        else:
            features = self.backbone(x)  # [B, In] -> {task: [B, H_task]}
        return self.heads(features)  # {task: [B, H_task]} -> TaskOutputs of {task: [B]}

    def auxiliary_spaces(self) -> dict[str, str]:
        """{aux term name: sample-space key its per-row terms are averaged over} (default "all")."""
        return dict(getattr(self.backbone, "auxiliary_spaces", {}))

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the embedding tables (dense arch, backbone, towers), in module order.

        Stable under DistributedModelParallel: the sharded tables replace `sparse_arch.ebc`, nothing else.
        """
        return [param for name, param in self.named_parameters() if not name.startswith("sparse_arch.")]
