"""jobs.serve: a real Ray Serve app on a free loopback port, real HTTP requests.

Scores equal mtl_rec.serve.Predictor's on the same rows (1e-6: the replica runs other thread counts
and batch shapes than this process), bad requests get 4xx with the Predictor's message, and a
promotion published while requests are in flight loses none: each response names its model and
carries that model's scores."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.export import main as export_main
from jobs.serve import APP_NAME, start_server
from mtl_rec.export import publish
from mtl_rec.serve import Predictor
from tests.harness import _free_port
from tests.jobs.test_evaluate import evaluated  # noqa: F401  (the shared session fixture)

pytestmark = pytest.mark.e2e
DAY = "2026-11-19"


def _call(url: str, body=None, method: str | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(evaluated, tmp_path_factory, ray_local):  # noqa: F811
    """(base URL, serving dir, {model id: Predictor}, rows of the eval day as dicts)."""
    from ray import serve

    serving = tmp_path_factory.mktemp("serving")
    root = evaluated["root"]
    export_main(["--run", str(root / "run"), "--out", str(serving / "run")])
    export_main(["--run", str(root / "base"), "--out", str(serving / "base")])  # another model, 1 step
    publish(serving, "run")
    url = start_server(serving, port=_free_port(), replica_cpus=0.5, batch_wait_ms=5)
    files = sorted((evaluated["logs"] / f"dt={DAY}").glob("*.parquet"))
    rows = pq.read_table(files[0], partitioning=None).slice(0, 2000).to_pylist()
    predictors = {name: Predictor(serving / name) for name in ("run", "base")}
    yield url, serving, predictors, rows
    serve.delete(APP_NAME)
    serve.shutdown()


def _expected(predictor, rows) -> dict[str, np.ndarray]:
    return predictor.predict(rows)


def _assert_scores(predictions: dict, expected: dict) -> None:
    assert set(predictions) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(np.asarray(predictions[name]), values, rtol=0, atol=1e-6, err_msg=name)


def test_health_manifest_and_scores_of_single_rows_and_batches(server):
    url, _, predictors, rows = server
    status, health = _call(f"{url}/health")
    assert status == 200 and health == {"status": "ok", "model": "run", "targets": ["ctr", "cvr", "cart"]}
    status, manifest = _call(f"{url}/manifest")
    assert status == 200 and manifest["arch"] == "mmoe" and manifest["checkpoint"]["world_size"] == 2
    for body, chosen in ((rows[0], rows[:1]), ([rows[1]], rows[1:2]), ({"rows": rows[:64]}, rows[:64])):
        status, reply = _call(f"{url}/predict", body)
        assert status == 200 and reply["model"] == "run"
        _assert_scores(reply["predictions"], _expected(predictors["run"], chosen))
    status, reply = _call(f"{url}/predict", {"rows": rows[:1024]})
    assert status == 200 and len(reply["predictions"]["ctr"]) == 1024
    _assert_scores(reply["predictions"], _expected(predictors["run"], rows[:1024]))
    unseen = dict(rows[2], user_id=10**15, item_id=10**15 + 1)  # ids never seen: hashed rows, scored
    status, reply = _call(f"{url}/predict", unseen)
    assert status == 200
    _assert_scores(reply["predictions"], _expected(predictors["run"], [unseen]))


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server):
    url, _, predictors, rows = server
    replies = [None] * 24

    def send(i):
        replies[i] = _call(f"{url}/predict", {"rows": rows[10 * i : 10 * i + 1 + i % 3]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, (status, reply) in enumerate(replies):
        assert status == 200, reply
        _assert_scores(reply["predictions"], _expected(predictors["run"], rows[10 * i : 10 * i + 1 + i % 3]))


@pytest.mark.parametrize(
    "body, raw, code, message",
    [
        (None, b"{not json", 400, "request body is not JSON"),
        ({"rows": "a string"}, None, 400, "expected rows (a list of objects), got str"),
        ("drop price", None, 400, "request: missing field(s) price (1 rows)"),
        ("device 99", None, 400, "device: id >= num_embeddings"),
        ("user_id null", None, 400, "request: 1 bad of 1 rows (user_id: null id: 1 rows)"),
        ("price text", None, 400, "price: expected numbers, got string"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(server, body, raw, code, message):
    url, _, _, rows = server
    row = dict(rows[0])
    if body == "drop price":
        body = [{k: v for k, v in row.items() if k != "price"}]
    elif body == "device 99":
        body = [dict(row, device=99)]
    elif body == "user_id null":
        body = [dict(row, user_id=None)]
    elif body == "price text":
        body = [dict(row, price="cheap")]
    status, reply = _call(f"{url}/predict", body, raw=raw)
    assert status == code and message in reply["error"], reply
    assert _call(f"{url}/health")[0] == 200  # and the server is still up


def test_unknown_routes_and_methods(server):
    url = server[0]
    assert _call(f"{url}/nope")[0] == 404
    assert _call(f"{url}/predict", method="GET")[0] == 405


def test_a_promotion_during_traffic_loses_no_request(server):
    url, serving, predictors, rows = server
    expected = {name: _expected(p, rows[:8]) for name, p in predictors.items()}
    assert np.abs(expected["run"]["ctr"] - expected["base"]["ctr"]).max() > 1e-3  # the two models differ
    replies, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            replies.append(_call(f"{url}/predict", {"rows": rows[:8]}))

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    publish(serving, "base")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r[1].get("model") == "base" for r in replies[-4:]):
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    assert all(status == 200 for status, _ in replies), [r for r in replies if r[0] != 200][:3]
    models = [reply["model"] for _, reply in replies]
    assert models[0] == "run" and models[-1] == "base", models[:3] + models[-3:]
    for _, reply in replies:
        _assert_scores(reply["predictions"], expected[reply["model"]])
    publish(serving, "run")  # back, for any test after this one
