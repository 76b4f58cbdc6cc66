"""Serve an export over HTTP with Ray Serve: JSON rows in, per-target probabilities out.

    python -m jobs.serve --model MODEL_DIR|SERVING_DIR [--host 127.0.0.1] [--port 8000]
        [--replicas 1] [--replica-cpus 1] [--max-batch 32] [--batch-wait-ms 0] [--address ADDR]

    POST /predict   {"rows": [{column: value, ...}, ...]}, a list of rows, or one row object
                    -> 200 {"predictions": {target: [p, ...]}, "model": MODEL_ID}
                    -> 400 {"error": ...}: a body that is not JSON, a missing field, a value of the wrong
                       kind, a bad row (mtl_rec.serve.Predictor's message: column, reason, counts)
    GET  /health    -> 200 {"status": "ok", "model": MODEL_ID, "targets": [...]}
    GET  /manifest  -> 200 the export's manifest (versions, checksums, the run it came from)

It listens on loopback unless --host says otherwise: the endpoint runs a model, not a public API.
Each replica is a mtl_rec.serve.Predictor (the training code's row checks, id maps and scaling).
Requests arriving together are scored as one batch (Ray Serve's @serve.batch: up to --max-batch
requests; those that queued while the previous batch ran go together, and --batch-wait-ms > 0 also
waits that long for company, which only adds latency at low load); each request is checked on its
own first, so a bad row fails its request alone.

MODEL_DIR is one export (python -m jobs.export). SERVING_DIR is where jobs.daily publishes the promoted
model: exports side by side and current.json naming the live one, replaced atomically. Every replica
watches current.json (once a second, in a thread) and loads a new promotion beside the old one, then
swaps: requests in flight finish on the model they started with, none is dropped.

Example::

    $ python -m jobs.serve --model daily/serving --port 8000 &
    $ curl -s localhost:8000/predict -d '{"rows": [{"user_id": 7, "item_id": 42, "price": 19.9, ...}]}'
    {"predictions": {"ctr": [0.0312], "ctcvr": [0.0011], "cvr": [0.0354]}, "model": "2026-11-21"}
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from jobs.cli import run_job
from mtl_rec.export import CURRENT, resolve_model
from mtl_rec.serve import Predictor

APP_NAME = "mtl-rec"


def _rows(body: bytes) -> list | dict:
    """The rows of a request body; ValueError with the reason where it is not usable JSON."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"request body is not JSON: {e}") from None
    if isinstance(data, dict) and "rows" in data:
        data = data["rows"]
    elif isinstance(data, dict):
        data = [data]  # one row object
    if not isinstance(data, list):
        raise ValueError(f"request body: expected rows (a list of objects), got {type(data).__name__}")
    return data


@serve.deployment(name="predictor")
class PredictorDeployment:
    """One replica: a Predictor, swapped for a newer promotion when SERVING_DIR/current.json changes."""

    def __init__(self, model: str, threads: int, max_batch: int, batch_wait_ms: float, poll_s: float = 1.0):
        self.source, self.threads = Path(model), threads
        directory, self.model_id = resolve_model(self.source)
        self.predictor = Predictor(directory, threads=threads)
        self._score.set_max_batch_size(max_batch)
        self._score.set_batch_wait_timeout_s(batch_wait_ms / 1000)
        if (self.source / CURRENT).is_file():
            threading.Thread(target=self._watch, args=(poll_s,), daemon=True).start()

    def _watch(self, poll_s: float) -> None:
        while True:
            time.sleep(poll_s)
            try:
                directory, model_id = resolve_model(self.source)
                if model_id != self.model_id:
                    predictor = Predictor(directory, threads=self.threads)  # loaded beside the live one
                    self.predictor, self.model_id = predictor, model_id  # one reference swap
            except Exception as e:  # noqa: BLE001 - a half-published or bad promotion: keep serving
                print(f"serve: keeping {self.model_id}: cannot load the new promotion: {e}", flush=True)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _score(self, requests: list[tuple[Predictor, pa.Table]]) -> list[dict]:
        """Checked tables of the requests batched together -> one {target: [n_i]} per request."""
        results: list[dict | None] = [None] * len(requests)
        by_model: dict[int, list[int]] = {}
        for i, (predictor, _) in enumerate(requests):  # a swap mid-batch: each request keeps its model
            by_model.setdefault(id(predictor), []).append(i)
        for members in by_model.values():
            predictor = requests[members[0]][0]
            tables = [requests[i][1] for i in members]
            scores = predictor.predict_checked(pa.concat_tables(tables))  # {target: [sum n_i]}
            bounds = np.cumsum([0] + [t.num_rows for t in tables])
            for k, i in enumerate(members):
                results[i] = {name: v[bounds[k] : bounds[k + 1]].tolist() for name, v in scores.items()}
        return results

    async def __call__(self, request: Request) -> JSONResponse:
        route = request.url.path.rstrip("/") or "/"
        predictor, model_id = self.predictor, self.model_id  # this request's model, whatever swaps next
        if route == "/health" and request.method == "GET":
            return JSONResponse({"status": "ok", "model": model_id, "targets": list(predictor.targets)})
        if route == "/manifest" and request.method == "GET":
            return JSONResponse(predictor.manifest)
        if route != "/predict":
            return JSONResponse(
                {"error": f"no route {route}: POST /predict, GET /health, GET /manifest"}, 404
            )
        if request.method != "POST":
            return JSONResponse({"error": "/predict takes POST with a JSON body"}, 405)
        try:
            table = predictor.check(_rows(await request.body()))
        except ValueError as e:  # InvalidRowsError too
            return JSONResponse({"error": str(e)}, 400)
        if table.num_rows == 0:
            return JSONResponse({"predictions": {t: [] for t in predictor.targets}, "model": model_id})
        return JSONResponse({"predictions": await self._score((predictor, table)), "model": model_id})


def start_server(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    replica_cpus: float = 1.0,
    max_batch: int = 32,
    batch_wait_ms: float = 0.0,
    address: str | None = None,
) -> str:
    """Start (or join) Ray, start Serve's HTTP proxy on host:port and deploy the predictor; returns
    the base URL. Raises before deploying where MODEL is not a loadable export."""
    import ray

    directory, _ = resolve_model(model)
    Predictor(directory)  # a bad export fails here, with its reason, not inside a replica
    if not ray.is_initialized():
        ray.init(address=address, configure_logging=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    threads = max(1, int(replica_cpus))
    app = PredictorDeployment.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus}
    ).bind(str(Path(model).resolve()), threads, max_batch, batch_wait_ms)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an export, or a SERVING_DIR with current.json")
    parser.add_argument("--host", default="127.0.0.1", help="default loopback; 0.0.0.0 listens everywhere")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--max-batch", type=int, default=32, help="requests scored together at most")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0)
    parser.add_argument("--address", default=None, help="a Ray cluster to join (default: start one)")
    args = parser.parse_args(argv)
    url = start_server(
        args.model,
        args.host,
        args.port,
        args.replicas,
        args.replica_cpus,
        args.max_batch,
        args.batch_wait_ms,
        args.address,
    )
    print(f"serve: {url}/predict (POST), {url}/health, {url}/manifest; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    run_job(main)
