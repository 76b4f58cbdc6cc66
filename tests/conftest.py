import os

import pytest

# FBGEMM clamps out-of-range ids to row 0 with only a warning; make it fatal in tests.
os.environ.setdefault("FBGEMM_TBE_BOUNDS_CHECK_MODE", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Train's controller polls its workers every 2 s, so a fit ends up to 2 s after its workers
# do; the tests' runs last seconds (set here, before any Ray starts: drivers in subprocesses
# inherit it, and Ray Train hands RAY_TRAIN_* variables on to its controller).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session: 2 logical CPUs per core (as jobs.train starts it), no dashboard."""
    import ray
    from ray.data import DataContext

    ray.init(
        num_cpus=2 * (os.cpu_count() or 1),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def generated_logs(tmp_path_factory):
    """Two generated days of 30k rows each (the real generator, real Parquet)."""
    import datetime as dt

    from jobs.make_logs import GeneratorConfig, generate_logs

    root = tmp_path_factory.mktemp("logs")
    generate_logs(root, dt.date(2026, 11, 18), 2, 30_000, GeneratorConfig(seed=0, rows_per_file=10_000))
    return root


@pytest.fixture(scope="module")
def cluster():
    """A real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster): a head of 1 CPU (Ray
    Data's read tasks) and two worker nodes of 2 CPUs, each its own raylet and object store. A run
    that asks 1.5 CPUs a worker places one training worker on each worker node."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()
