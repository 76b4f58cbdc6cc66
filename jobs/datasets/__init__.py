"""Public datasets converted into the project's log layout and feature spec (`python -m jobs.datasets`).

Each module writes `OUT/logs/dt=YYYY-MM-DD/part-*.parquet`, `OUT/features.yaml`, presets that read
that spec and `OUT/dataset.json` (split, tasks, vocabularies); see jobs/datasets/adult.py.
"""
