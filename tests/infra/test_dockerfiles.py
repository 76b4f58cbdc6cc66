"""infra/docker: the images install exactly the pinned stack, check it at build time, run as non-root.

Docker cannot run here, so the Dockerfiles are read statically and compared with the files that own
each pin: infra/setup-venv.sh (torch / FBGEMM / TorchRec) and pyproject.toml (Ray and the rest),
and with the manifests that run the images (working directory, user).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re

import pytest

from tests.infra.infra_files import (
    IMAGE_REPO_ROOT,
    REPO,
    cluster_specs,
    dockerfiles,
    load_manifests,
    pyproject,
    ray_pod_specs,
    setup_venv_pins,
)

DOCKERFILES = dockerfiles()
FBGEMM_DISTRIBUTION = {"cpu": "fbgemm-gpu-cpu", "cuda": "fbgemm-gpu"}


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_base_images_are_pinned(flavor):
    images = DOCKERFILES[flavor].base_images()
    assert images, f"Dockerfile.{flavor} has no FROM"
    for image in images:
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest", f"Dockerfile.{flavor}: base image {image} must pin a tag"
        assert re.search(r"\d+\.\d+", tag), f"Dockerfile.{flavor}: {image} pins no version"
        assert "$" not in image, f"Dockerfile.{flavor}: unresolved ARG in {image}"


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_the_stack_pins_equal_setup_venv(flavor):
    dockerfile = DOCKERFILES[flavor]
    assert {k: dockerfile.arg_defaults().get(k) for k in setup_venv_pins()} == setup_venv_pins()
    runs = dockerfile.expand(dockerfile.runs())
    pins = setup_venv_pins()
    fbgemm = FBGEMM_DISTRIBUTION[flavor]
    other = FBGEMM_DISTRIBUTION["cuda" if flavor == "cpu" else "cpu"]
    assert f"torch=={pins['TORCH_VERSION']}" in runs
    assert f"{fbgemm}=={pins['FBGEMM_VERSION']}" in runs
    assert re.search(rf"{re.escape(other)}==", runs) is None, f"Dockerfile.{flavor} must not install {other}"
    # torchrec's metadata requires fbgemm-gpu: resolving it would overwrite the CPU build.
    assert f'pip install --no-deps "torchrec=={pins["TORCHREC_VERSION"]}"' in runs
    assert runs.index(f"{fbgemm}==") < runs.index("torchrec=="), "torchrec goes in after FBGEMM"


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_pyproject_dependencies_are_installed_from_pyproject(flavor):
    runs = DOCKERFILES[flavor].runs()
    # Ray and the rest come from pyproject.toml itself, so its pins (ray==2.60.0) cannot drift.
    assert "tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']" in runs
    assert "pip install -r /tmp/requirements.txt" in runs
    assert "pip install --no-deps -e ." in runs
    assert any(dep.startswith("ray[") and "==" in dep for dep in pyproject()["project"]["dependencies"])
    copies = [args.split() for args in DOCKERFILES[flavor].all("COPY") if not args.startswith("--from")]
    sources = {src.rstrip("/") for args in copies for src in args[:-1]}
    packages = {p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert sources == {"pyproject.toml"} | packages, f"Dockerfile.{flavor} copies {sorted(sources)}"


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_the_stack_check_runs_at_build_time(flavor):
    dockerfile = DOCKERFILES[flavor]
    instructions = dockerfile.instructions
    check = [
        i
        for i, (name, args) in enumerate(instructions)
        if name == "RUN" and 'python -c "import mtl_rec"' in args
    ]
    assert check, f'Dockerfile.{flavor} must RUN python -c "import mtl_rec" (the stack check at import)'
    install = [i for i, (name, args) in enumerate(instructions) if name == "RUN" and "-e ." in args]
    assert install and check[-1] >= install[-1], "the check runs after the package is installed"
    # The constraints keep later installs from swapping the trio for another torch build.
    assert "PIP_CONSTRAINT=/etc/mtl-rec-constraints.txt" in " ".join(dockerfile.all("ENV"))
    assert "> /etc/mtl-rec-constraints.txt" in dockerfile.runs()


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_runs_as_non_root_with_a_sane_default_command(flavor):
    dockerfile = DOCKERFILES[flavor]
    user = dockerfile.all("USER")
    assert user, f"Dockerfile.{flavor} must switch to a non-root USER"
    uid = user[-1].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it; the manifests run as the same uid.
    assert uid.isdigit() and int(uid) != 0, user[-1]
    last_user = max(i for i, (name, _) in enumerate(dockerfile.instructions) if name == "USER")
    assert all(name != "RUN" for name, _ in dockerfile.instructions[last_user:]), (
        "nothing runs as root after USER"
    )
    for where, cluster in cluster_specs(load_manifests()):
        for group, pod in ray_pod_specs(cluster):
            assert str(pod["securityContext"]["runAsUser"]) == uid, f"{where} {group}"
    (workdir,) = set(dockerfile.all("WORKDIR"))
    assert workdir == IMAGE_REPO_ROOT
    (cmd,) = dockerfile.all("CMD")
    argv = json.loads(cmd)  # exec form: no shell in between
    assert argv[:2] == ["python", "-m"], argv
    parser = importlib.import_module(argv[2]).build_parser()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(argv[3:])
    assert exited.value.code == 0, f"CMD {argv} must exit 0"
    assert not dockerfile.all("ENTRYPOINT"), "KubeRay sets the container command; an ENTRYPOINT would wrap it"


def test_cpu_and_cuda_images_share_the_python_version():
    # The head runs the CPU image and the GPU workers the CUDA one: Ray refuses mixed Pythons.
    versions = {flavor: d.arg_defaults()["PYTHON_VERSION"] for flavor, d in DOCKERFILES.items()}
    assert len(set(versions.values())) == 1, versions
    assert re.fullmatch(r"3\.\d+\.\d+", versions["cpu"]), versions
    assert any(image.startswith(f"python:{versions['cpu']}-") for image in DOCKERFILES["cpu"].base_images())
    assert 'uv python install "$PYTHON_VERSION"' in DOCKERFILES["cuda"].runs()


def test_torch_wheel_index_matches_the_image_flavor():
    cpu, cuda = DOCKERFILES["cpu"], DOCKERFILES["cuda"]
    assert cpu.arg_defaults()["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    cuda_index = cuda.arg_defaults()["TORCH_INDEX_URL"]
    wheel_cuda = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", cuda_index)
    assert wheel_cuda, cuda_index
    (base,) = [image for image in cuda.base_images() if image.startswith("nvidia/cuda:")]
    base_cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-", base)
    assert base_cuda, base
    assert base_cuda.groups() == wheel_cuda.groups(), f"{base} vs the wheels of {cuda_index}"
    for dockerfile in (cpu, cuda):
        assert '--index-url "$TORCH_INDEX_URL"' in dockerfile.runs()


def test_dockerignore_keeps_the_context_small_without_hiding_what_the_dockerfiles_copy():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv", "data"} <= set(patterns)
    for flavor, dockerfile in DOCKERFILES.items():
        for args in dockerfile.all("COPY"):
            if args.startswith("--from"):
                continue
            for source in args.split()[:-1]:
                hidden = [p for p in patterns if fnmatch.fnmatch(source.rstrip("/"), p.rstrip("/"))]
                assert not hidden, (
                    f"Dockerfile.{flavor} copies {source}, which .dockerignore drops ({hidden})"
                )
                assert (REPO / source).exists(), f"Dockerfile.{flavor} copies missing {source}"
