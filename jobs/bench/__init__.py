"""Benchmarks: `python -m jobs.bench SECTION --out FILE.json`, SECTION one of those below or `all`.

loader     rows/s from Parquet to Batch through Ray Data's streaming_split (2 consumer actors, as
           Ray Train's workers consume it), next to pyarrow alone and to one process without Ray
flops      the reference model's dense FLOPs per sample (counted, forward + backward), the machine's
           matmul rate, and the dense-FLOP floor: matmul FLOP/s / FLOPs per sample
train      the reference MMoE trained by `jobs.train` on one generated day: end-to-end samples/s next
           to the model-only ceiling (batches pre-built in memory) and the dense-FLOP floor, peak
           memory per worker
growth     how training time grows with rows (x1, x2, x4), table sizes (x2, x4) and workers (2 vs 1)
weighting  per-step time of every loss-weighting method relative to fixed weights
quality    the presets' AUC and pred/obs next to HistGBDT, logistic regression and single-task DNNs
           on the same generated rows, and on UCI Adult next to torch-rechub and DeepCTR-Torch
           (not part of `all`: `make bench` runs it after; jobs/bench/quality.py)
serve      the reference MMoE exported and served: batch rows/s, HTTP latency (jobs/bench/serve.py)
groups     task weights per domain against one weight vector, on logs whose domains trade the tasks
           off differently: per-domain AUC deltas with bootstrap CIs (jobs/bench/groups.py)

`all` runs them in that order and ends with one summary table (jobs.bench.report) against the
goals. Speed lives here, never in timed tests. Figures go to docs/benchmarks.md with the machine
and the command; `--quick` is a small smoke run of the same code (its figures mean nothing).
"""
