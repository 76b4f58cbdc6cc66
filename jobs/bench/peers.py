"""Peer libraries on the same converted dataset: torch-rechub and DeepCTR-Torch, in their own venv.

The peers are not dependencies of mtl-rec: `ensure_peers_venv` builds (once, idempotently) a separate
virtual environment with pinned versions, and `peer_runs` runs jobs/bench/peer_runner.py with that
venv's Python. The runner imports only the peer libraries, torch, pandas, numpy and sklearn; it reads
the converted Parquet days (`python -m jobs.datasets adult --out DIR`), so it trains on exactly the
rows mtl-rec trains on, and is scored on exactly the rows mtl-rec is scored on.

    python -m jobs.bench.peers --data data/adult --epochs 1        # prints a JSON list of records

Each record: {"dataset", "library": "torch-rechub" | "deepctr-torch", "model": "shared_bottom" |
"mmoe" | "ple", "epochs", "auc": {task: x}, "oracle_auc": {}, "pred_over_obs": {task: x},
"samples_per_s", "train_seconds", "train_rows", "test_rows"}. Model sizes follow torch-rechub's
census example (embedding dim 4; MMoE 8 experts [16]; PLE 1 level, 1 shared + 2 specific experts
[16]; Shared-Bottom [117]; towers [8]), Adam 1e-3, batch 1024; see the runner's docstring for the
preprocessing and what each timing covers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEERS_VENV = REPO / ".cache" / "peers-venv"
RUNNER = Path(__file__).resolve().with_name("peer_runner.py")
# torch 2.13.0 as in the project's own venv (the peers accept it); TORCH_INDEX_URL, as for `make setup`,
# takes it from another index (e.g. PyTorch's CPU wheels instead of PyPI's CUDA build).
PEER_PINS = (
    "torch==2.13.0",
    "torch-rechub==0.9.0",
    "deepctr-torch==0.3.0",
    "pandas>=2.2",
    "pyarrow>=17",
    "scikit-learn>=1.4",
    # deepctr_torch imports requests without declaring it (a PyPI version check the runner turns off)
    "requests",
)
# deepctr_torch asks PyPI for its latest version when imported (in a thread): the check turns that off.
IMPORT_CHECK = """
import requests
def offline(*args, **kwargs):
    raise requests.ConnectionError("no network in the peers' import check")
requests.get = offline
import torch, torch_rechub, deepctr_torch, pandas, pyarrow, sklearn
print(torch.__version__)
"""


def _stamp(venv: Path) -> Path:
    key = hashlib.sha256("\n".join(PEER_PINS).encode()).hexdigest()[:16]
    return venv / f".peers-{key}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_peers_venv(venv: Path = PEERS_VENV, python: str = sys.executable, quiet: bool = True) -> Path:
    """The peers' venv (created or updated to PEER_PINS when its stamp is missing); returns its python.

    Idempotent: a stamp keyed on the pins, plus an import check, makes a second call a no-op.
    """
    venv = Path(venv)
    stamp, interpreter = _stamp(venv), venv_python(venv)
    if (
        stamp.is_file()
        and subprocess.run([interpreter, "-c", IMPORT_CHECK], capture_output=True).returncode == 0
    ):
        return interpreter
    if not interpreter.is_file():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [
        str(interpreter),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        *(["-q"] if quiet else []),
    ]
    if os.environ.get("TORCH_INDEX_URL"):
        subprocess.run([*pip, "--index-url", os.environ["TORCH_INDEX_URL"], PEER_PINS[0]], check=True)
    subprocess.run([*pip, *PEER_PINS], check=True)
    subprocess.run([interpreter, "-c", IMPORT_CHECK], check=True, capture_output=quiet)
    for old in venv.glob(".peers-*"):
        old.unlink()
    stamp.touch()
    return interpreter


def peer_runs(
    dataset_dir: Path,
    epochs: int = 1,
    models: tuple[str, ...] = ("shared_bottom", "mmoe", "ple"),
    libraries: tuple[str, ...] = ("torch-rechub", "deepctr-torch"),
    venv: Path = PEERS_VENV,
    seed: int = 2022,
) -> list[dict]:
    """Train every (library, model) on DATASET_DIR's train dates, score its eval dates; the records."""
    interpreter = ensure_peers_venv(venv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peers.json"
        command = [str(interpreter), str(RUNNER), "--data", str(Path(dataset_dir).resolve())]
        command += ["--epochs", str(epochs), "--seed", str(seed), "--out", str(out)]
        command += ["--models", *models, "--libraries", *libraries]
        # The runner must not see mtl-rec's packages (nor this venv's site-packages).
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        # The libraries print progress on stdout: send it to stderr, so main() prints only the JSON.
        subprocess.run(command, check=True, env=env, cwd=tmp, stdout=sys.stderr)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a `python -m jobs.datasets` output folder")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["shared_bottom", "mmoe", "ple"])
    parser.add_argument("--libraries", nargs="+", default=["torch-rechub", "deepctr-torch"])
    parser.add_argument(
        "--venv", type=Path, default=PEERS_VENV, help=f"the peers' venv (default {PEERS_VENV})"
    )
    args = parser.parse_args(argv)
    records = peer_runs(args.data, args.epochs, tuple(args.models), tuple(args.libraries), args.venv)
    print(json.dumps(records, indent=2))
    return records


if __name__ == "__main__":
    main()
