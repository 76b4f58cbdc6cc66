"""mtl-rec: multi-task CTR models on TorchRec sharded embeddings, trained under Ray Train + DDP."""

from mtl_rec.stack import check_stack

check_stack()
