"""The offline evaluation report behind `python -m jobs.evaluate` (see jobs/evaluate.py).

score.py    RunArtifacts (a run directory read back) and the Ray Train scoring of a checkpoint:
            every row of the chosen days through the training pipeline, predictions to Parquet
store.py    merge the run's and the baseline's predictions row by row (request id), and read
            them back in bounded chunks: PredictionStore, Cohort
compute.py  metrics per target x cohort (overall, per day, per slice value), deltas with a
            paired bootstrap CI
gate.py     the promotion gate: AUC drop, pred/obs band, logloss rise against the baseline
plots.py    matplotlib (Agg) PNGs: ROC, reliability, AUC over days, training loss and weights
render.py   report.md and the self-contained report.html (images as data URIs)
"""
