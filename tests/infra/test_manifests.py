"""infra/k8s: every manifest parses, has the fields its kind needs, and agrees with the code.

Agreement checked here: images are the ones infra/docker builds; entrypoints name `jobs.*` modules
whose argparse parser accepts the manifest's arguments (date placeholders evaluated by bash); the
presets they name load; paths live on the shared volume every Ray pod mounts; token auth is on in
every Ray cluster; the cron schedules are valid 5-field schedules; the RayCluster, RayJob,
RayCronJob and CronJob-fallback copies of the cluster spec are identical. No Kubernetes needed.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import re
import shutil
import subprocess

import pytest
import yaml

from tests.infra.infra_files import (
    IMAGE_REPO_ROOT,
    NAMESPACE,
    REPO,
    TOKEN_SECRET,
    all_pod_specs,
    cluster_specs,
    cron_problems,
    embedded_rayjobs,
    entrypoint_argv,
    load_manifests,
    of_kind,
    pyproject,
    pyproject_pin,
    ray_pod_specs,
    rayjob_specs,
)

MANIFESTS = load_manifests()
KNOWN_KINDS = {
    ("ray.io/v1", "RayCluster"),
    ("ray.io/v1", "RayJob"),
    ("ray.io/v1", "RayCronJob"),
    ("batch/v1", "CronJob"),
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
}
# Tools the manifests run that are not ours to build; pinned like our own images.
THIRD_PARTY_IMAGES = {"registry.k8s.io/kubectl"}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def shared_claim() -> tuple[str, str]:
    """(PVC name, mount path) of the shared volume: the one ReadWriteMany claim in pvc.yaml."""
    (pvc,) = of_kind(MANIFESTS, "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc.doc["spec"]["accessModes"], "logs and runs are shared by every node: RWX"
    assert pvc.doc["spec"]["resources"]["requests"]["storage"]
    mounts = set()
    for where, cluster in cluster_specs(MANIFESTS):
        for group, pod in ray_pod_specs(cluster):
            volumes = {v["name"]: v for v in pod["volumes"]}
            container = pod["containers"][0]
            paths = [
                mount["mountPath"]
                for mount in container["volumeMounts"]
                if volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName")
                == pvc.doc["metadata"]["name"]
            ]
            assert len(paths) == 1, f"{where} {group}: the shared claim must be mounted once, found {paths}"
            mounts.add(paths[0])
    assert len(mounts) == 1, (
        f"the shared volume must sit at the same path on every pod, found {sorted(mounts)}"
    )
    return pvc.doc["metadata"]["name"], mounts.pop()


def test_every_manifest_parses_with_known_kind_name_and_namespace():
    assert {p.name for p in (REPO / "infra" / "k8s").glob("*.yaml")} >= {
        "pvc.yaml",
        "raycluster.yaml",
        "rayjob-train.yaml",
        "raycronjob-daily.yaml",
        "cronjob-daily-fallback.yaml",
    }
    for m in MANIFESTS:
        assert (m.doc.get("apiVersion"), m.doc.get("kind")) in KNOWN_KINDS, m.where
        name = m.doc["metadata"]["name"]
        assert DNS_LABEL.fullmatch(name) and len(name) <= 63, f"{m.where}: name {name!r} is not a DNS label"
        assert m.doc["metadata"].get("namespace") == NAMESPACE, f"{m.where}: namespace must be {NAMESPACE}"


def test_rayjobs_have_an_entrypoint_a_cluster_and_clean_up():
    specs = rayjob_specs(MANIFESTS)
    assert len(specs) == 3  # the training RayJob, the RayCronJob template, the fallback's RayJob
    for where, spec in specs:
        assert spec["entrypoint"].strip() and "rayClusterSpec" in spec, where
        assert spec["submissionMode"] == "K8sJobMode", where
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0, where
        assert spec["activeDeadlineSeconds"] > 0, f"{where}: bound a run so the next one gets the GPUs"
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert runtime_env["env_vars"] == {"FBGEMM_TBE_BOUNDS_CHECK_MODE": "0"}, where
    (cron,) = of_kind(MANIFESTS, "RayCronJob")
    assert cron.doc["spec"]["suspend"] is False


def test_ray_clusters_have_head_gpu_workers_and_string_start_params():
    assert len(cluster_specs(MANIFESTS)) == 4  # RayCluster, training RayJob, RayCronJob, CronJob fallback
    for where, cluster in cluster_specs(MANIFESTS):
        assert cluster["rayVersion"] == pyproject_pin("ray"), f"{where}: rayVersion vs pyproject.toml"
        head = cluster["headGroupSpec"]
        params = [head["rayStartParams"]] + [g["rayStartParams"] for g in cluster["workerGroupSpecs"]]
        assert all(isinstance(v, str) for p in params for v in p.values()), (
            f"{where}: rayStartParams are strings"
        )
        (gpu_group,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
        assert gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"], where
        for group, pod in ray_pod_specs(cluster):
            ray_container = pod["containers"][0]  # KubeRay runs Ray in the first container
            resources = ray_container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), f"{where} {group}: cpu/memory {kind}"
            gpus = int(resources["limits"].get("nvidia.com/gpu", 0))
            assert gpus == (1 if group == "gpu" else 0), (
                f"{where} {group}: one GPU per worker pod, none on head"
            )
            assert ray_container["image"].endswith("-cuda" if gpus else "-cpu"), f"{where} {group}: image"
            assert ray_container["workingDir"] == IMAGE_REPO_ROOT, f"{where} {group}: job cwd = the code"
            volumes = {v["name"]: v for v in pod["volumes"]}
            shm = [m for m in ray_container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            assert len(shm) == 1, f"{where} {group}: mount an in-memory /dev/shm for Ray's object store"
            assert volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory", f"{where} {group}"
            security = pod["securityContext"]
            assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, f"{where} {group}"


def test_token_auth_is_on_in_every_cluster_and_the_dashboard_is_not_exposed():
    for where, cluster in cluster_specs(MANIFESTS):
        assert cluster["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}, where
        head = cluster["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: no LoadBalancer/NodePort"
        ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
        assert ports["dashboard"] == 8265, where
        for group, pod in ray_pod_specs(cluster):
            for container in pod["containers"]:
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert env.get("RAY_AUTH_MODE", "token") == "token", f"{where} {group}: auth switched off"
    readme = (REPO / "README.md").read_text()
    assert f"kubectl -n {NAMESPACE} create secret generic {TOKEN_SECRET} --from-literal=auth_token=" in readme


def test_every_ray_pod_mounts_the_shared_volume_at_one_path():
    claim, mount = shared_claim()
    assert (claim, mount) == ("mtl-rec-shared", "/mnt/mtl-rec")


def test_cluster_spec_and_daily_job_copies_are_identical():
    clusters = cluster_specs(MANIFESTS)
    (reference_where, reference), *others = clusters
    for where, cluster in others:
        assert cluster == reference, f"{where} differs from {reference_where}"
    (cron,) = of_kind(MANIFESTS, "RayCronJob")
    (embedded,) = embedded_rayjobs(MANIFESTS)
    assert embedded.doc["spec"] == cron.doc["spec"]["jobTemplate"], (
        "fallback RayJob vs RayCronJob jobTemplate"
    )
    assert embedded.doc["metadata"]["generateName"], (
        "kubectl create needs generateName for a new RayJob a day"
    )


def test_every_image_is_built_by_infra_docker_or_a_pinned_tool():
    version = pyproject()["project"]["version"]
    flavors = {p.suffix.lstrip(".") for p in (REPO / "infra" / "docker").glob("Dockerfile.*")}
    ours = re.compile(rf"registry\.example\.com/mtl-rec:{re.escape(version)}-(\w+)")
    seen = set()
    for where, pod in all_pod_specs(MANIFESTS):
        for container in pod["containers"]:
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            if repository in THIRD_PARTY_IMAGES:
                assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"{where}: {image} must pin a version"
                continue
            match = ours.fullmatch(image)
            assert match, f"{where}: {image} is not registry.example.com/mtl-rec:{version}-<flavor>"
            assert match.group(1) in flavors, f"{where}: no infra/docker/Dockerfile.{match.group(1)}"
            seen.add(match.group(1))
    assert seen == flavors == {"cpu", "cuda"}


def test_cron_schedules_are_valid_and_the_same_in_both_daily_manifests():
    (cron,) = of_kind(MANIFESTS, "RayCronJob")
    (fallback,) = of_kind(MANIFESTS, "CronJob")
    for m in (cron, fallback):
        assert cron_problems(m.doc["spec"]["schedule"]) == [], m.where
    assert cron.doc["spec"]["schedule"] == fallback.doc["spec"]["schedule"]
    assert fallback.doc["spec"]["timeZone"] == "Etc/UTC"  # the date placeholder is UTC too


@pytest.mark.parametrize(
    "schedule, problem",
    [
        ("30 2 * *", "4 fields"),
        ("60 2 * * *", "minute '60' is outside 0-59"),
        ("30 24 * * *", "hour '24' is outside 0-23"),
        ("30 2 0 * *", "day of month '0' is outside 1-31"),
        ("30 2 * 1-13 *", "month '1-13' is outside 1-12"),
        ("30 2 * * mon", "day of week 'mon' is not N"),
        ("*/0 2 * * *", "step in '*/0' is 0"),
        ("30 5-2 * * *", "range '5-2' runs backwards"),
    ],
)
def test_cron_validator_rejects(schedule, problem):
    assert any(problem in p for p in cron_problems(schedule)), cron_problems(schedule)


def test_cron_validator_accepts_ranges_steps_and_lists():
    for schedule in ("30 2 * * *", "*/15 0-6 1,15 */2 0-5/2", "0 0 31 12 7"):
        assert cron_problems(schedule) == [], schedule


def test_fallback_launcher_may_create_rayjobs_and_nothing_else():
    (fallback,) = of_kind(MANIFESTS, "CronJob")
    pod = fallback.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    assert fallback.doc["spec"]["concurrencyPolicy"] == "Forbid"
    (account,) = of_kind(MANIFESTS, "ServiceAccount")
    (role,) = of_kind(MANIFESTS, "Role")
    (binding,) = of_kind(MANIFESTS, "RoleBinding")
    assert pod["serviceAccountName"] == account.doc["metadata"]["name"]
    assert binding.doc["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role.doc["metadata"]["name"],
    }
    assert binding.doc["subjects"] == [
        {"kind": "ServiceAccount", "name": account.doc["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert role.doc["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]}
    ]
    (container,) = pod["containers"]
    command = container.get("command", []) + container.get("args", [])
    assert command[:3] == ["kubectl", "create", "-f"], command
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    manifest_dir, _, manifest_file = command[3].rpartition("/")
    (cm,) = of_kind(MANIFESTS, "ConfigMap")
    assert volumes[mounts[manifest_dir]]["configMap"]["name"] == cm.doc["metadata"]["name"]
    assert manifest_file in cm.doc["data"], (
        f"{command[3]} is not a key of ConfigMap {cm.doc['metadata']['name']}"
    )


def evaluate_placeholder(word: str) -> str:
    """Run a `$(...)` word of an entrypoint through bash, as KubeRay's submitter does."""
    if shutil.which("bash") is None or shutil.which("date") is None:
        pytest.skip("bash and date are needed to evaluate the entrypoint's date placeholder")
    result = subprocess.run(["bash", "-c", f'printf %s "{word}"'], capture_output=True, text=True, check=True)
    return result.stdout


def parser_for(module_name: str):
    module = importlib.import_module(module_name)
    assert hasattr(module, "build_parser"), f"{module_name} must expose build_parser() for this check"
    return module.build_parser()


ENTRYPOINTS = [(where, spec["entrypoint"]) for where, spec in rayjob_specs(MANIFESTS)]


def test_entrypoints_cover_training_and_daily():
    modules = sorted({entrypoint_argv(e)[2] for _, e in ENTRYPOINTS})
    assert modules == ["jobs.daily", "jobs.train"], modules


@pytest.mark.parametrize("where, entrypoint", ENTRYPOINTS, ids=[w for w, _ in ENTRYPOINTS])
def test_entrypoint_module_exists_and_its_parser_accepts_the_flags(where, entrypoint, capsys):
    words = entrypoint_argv(entrypoint)
    assert words[:2] == ["python", "-m"], f"{where}: entrypoint must be `python -m jobs.X ...`"
    module_name, argv = words[2], words[3:]
    assert module_name.startswith("jobs."), where
    assert importlib.util.find_spec(module_name), f"{where}: no module {module_name}"
    resolved = []
    for word in argv:
        if "$(" in word:
            assert word == "$(date -u -d yesterday +%F)", f"{where}: unexpected shell expansion {word!r}"
            word = evaluate_placeholder(word)
            today = dt.datetime.now(dt.timezone.utc).date()
            assert word in {(today - dt.timedelta(days=d)).isoformat() for d in (0, 1, 2)}, word
        resolved.append(word)

    parser = parser_for(module_name)
    try:
        args = parser.parse_args(resolved)
    except SystemExit as e:
        pytest.fail(f"{where}: {module_name} rejects {resolved}: {capsys.readouterr().err.strip()} ({e})")

    _, mount = shared_claim()
    for name in ("logs", "out", "root"):
        value = getattr(args, name, None)
        if value is not None:
            assert str(value).startswith(mount + "/"), (
                f"{where}: --{name} {value} is not on the shared volume"
            )
    config = getattr(args, "config", None)
    if config is not None:
        from mtl_rec.run_config import load_run_config

        assert not str(config).startswith("/"), f"{where}: name presets relative to {IMAGE_REPO_ROOT}"
        cfg = load_run_config(REPO / config)  # the image's WORKDIR holds this repository's files
        assert (REPO / cfg.features).is_file(), f"{where}: feature spec {cfg.features} missing"
    for name in ("train_dates", "eval_dates", "date", "dates"):
        value = getattr(args, name, None)
        if value is not None:
            from pipelines.read import parse_dates

            assert parse_dates(str(value)), f"{where}: --{name} {value}"


def test_readme_cluster_commands_name_existing_files_images_and_objects():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Run on a cluster", 1)[1].split("\n## ", 1)[0]
    mentioned = set(re.findall(r"infra/(?:k8s|docker)/[\w.-]+", section))
    for path in mentioned:
        assert (REPO / path).is_file(), f"README names {path}, which does not exist"
    for path in (REPO / "infra" / "k8s").glob("*.yaml"):
        assert f"infra/k8s/{path.name}" in mentioned, f"README never applies infra/k8s/{path.name}"
    version = pyproject()["project"]["version"]
    for flavor in ("cpu", "cuda"):
        build = f"docker build -f infra/docker/Dockerfile.{flavor} -t $REGISTRY/mtl-rec:{version}-{flavor} ."
        assert build in section, build
    assert 'sed -i "s#registry.example.com/mtl-rec#$REGISTRY/mtl-rec#" infra/k8s/*.yaml' in section
    (cluster,) = of_kind(MANIFESTS, "RayCluster")
    name = cluster.doc["metadata"]["name"]
    assert f"ray.io/cluster={name}," in section and f"svc/{name}-head-svc" in section
    (train,) = of_kind(MANIFESTS, "RayJob")
    assert f"get rayjob {train.doc['metadata']['name']} -w" in section
    operator = re.search(r"kuberay/kuberay-operator --version (\d+)\.(\d+)\.\d+", section)
    assert operator and tuple(map(int, operator.groups())) >= (1, 6), "RayCronJob needs KubeRay >= 1.6"
    assert """--set-json 'featureGates=[{"name":"RayCronJob","enabled":true}]'""" in section
