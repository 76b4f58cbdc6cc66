"""Readers for infra/: the Kubernetes manifests, the Dockerfiles, and the pins they must agree with.

Static checks only (no Docker engine, no Kubernetes API): the manifests are parsed with PyYAML, the
Dockerfiles with a small instruction parser, and the pins are read from the files that own them
(infra/setup-venv.sh for the torch / FBGEMM / TorchRec trio, pyproject.toml for Ray).

Example::

    >>> docs = load_manifests()                      # [Manifest(path, doc), ...] for every YAML doc
    >>> [m.doc["kind"] for m in docs if m.path.name == "raycluster.yaml"]
    ['RayCluster']
    >>> cron_problems("30 2 * * *")
    []
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser under its PyPI name
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
DOCKER = REPO / "infra" / "docker"
NAMESPACE = "mtl-rec"
TOKEN_SECRET = "mtl-rec-ray-token"
# Where the image keeps the code (Dockerfile WORKDIR) is the repository root seen from a container.
IMAGE_REPO_ROOT = "/home/ray/mtl-rec"


@dataclass(frozen=True)
class Manifest:
    """One YAML document of a file under infra/k8s/."""

    path: Path
    doc: dict

    @property
    def where(self) -> str:
        metadata = self.doc["metadata"]
        name = metadata.get("name") or metadata.get("generateName", "") + "*"
        return f"{self.path.relative_to(REPO)} ({self.doc.get('kind')} {name})"


def load_manifests() -> list[Manifest]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append(Manifest(path, doc))
    return docs


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.doc.get("kind") == kind]


def embedded_rayjobs(manifests: list[Manifest]) -> list[Manifest]:
    """RayJobs stored as text in ConfigMaps (the CronJob fallback creates them with kubectl)."""
    found = []
    for cm in of_kind(manifests, "ConfigMap"):
        for text in cm.doc.get("data", {}).values():
            doc = yaml.safe_load(text)
            if isinstance(doc, dict) and doc.get("kind") == "RayJob":
                found.append(Manifest(cm.path, doc))
    return found


def rayjob_specs(manifests: list[Manifest]) -> list[tuple[str, dict]]:
    """(where, RayJobSpec) for every RayJob: applied ones, RayCronJob templates, ConfigMap-embedded."""
    specs = [(m.where, m.doc["spec"]) for m in of_kind(manifests, "RayJob")]
    specs += [
        (m.where + " jobTemplate", m.doc["spec"]["jobTemplate"]) for m in of_kind(manifests, "RayCronJob")
    ]
    specs += [(m.where + " embedded RayJob", m.doc["spec"]) for m in embedded_rayjobs(manifests)]
    return specs


def cluster_specs(manifests: list[Manifest]) -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) for every Ray cluster the manifests start."""
    specs = [(m.where, m.doc["spec"]) for m in of_kind(manifests, "RayCluster")]
    specs += [(where, spec["rayClusterSpec"]) for where, spec in rayjob_specs(manifests)]
    return specs


def ray_pod_specs(cluster: dict) -> Iterator[tuple[str, dict]]:
    """(group name, pod spec) for the head and every worker group of a RayClusterSpec."""
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def all_pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, dict]]:
    """Every pod spec the manifests define: Ray pods and the CronJob's launcher pod."""
    for where, cluster in cluster_specs(manifests):
        for group, pod in ray_pod_specs(cluster):
            yield f"{where} {group}", pod
    for cron in of_kind(manifests, "CronJob"):
        yield cron.where, cron.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# ---- cron -------------------------------------------------------------------------------------

CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


def cron_problems(schedule: str) -> list[str]:
    """What is wrong with a 5-field cron schedule (numbers, `*`, ranges, steps, lists); [] if valid."""
    fields = schedule.split()
    if len(fields) != 5:
        return [f"{schedule!r} has {len(fields)} fields, a cron schedule has 5"]
    problems = []
    for text, (name, low, high) in zip(fields, CRON_FIELDS):
        for item in text.split(","):
            match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", item)
            if match is None:
                problems.append(f"{name} {item!r} is not N, N-M, * or a /step of them")
                continue
            values = [int(v) for v in match.group(2, 3) if v is not None]
            if any(not low <= v <= high for v in values):
                problems.append(f"{name} {item!r} is outside {low}-{high}")
            if len(values) == 2 and values[0] > values[1]:
                problems.append(f"{name} range {item!r} runs backwards")
            if match.group(4) is not None and int(match.group(4)) == 0:
                problems.append(f"{name} step in {item!r} is 0")
    return problems


# ---- pins -------------------------------------------------------------------------------------


def setup_venv_pins() -> dict[str, str]:
    """{'TORCH_VERSION': '2.13.0', 'FBGEMM_VERSION': ..., 'TORCHREC_VERSION': ...} from setup-venv.sh."""
    text = (REPO / "infra" / "setup-venv.sh").read_text()
    pins = dict(re.findall(r"^(TORCH_VERSION|FBGEMM_VERSION|TORCHREC_VERSION)=(\S+)$", text, re.MULTILINE))
    assert len(pins) == 3, f"infra/setup-venv.sh pins {sorted(pins)}, expected the torch/fbgemm/torchrec trio"
    return pins


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pyproject_pin(package: str) -> str:
    """The `==` version pyproject.toml pins for `package` (extras allowed), e.g. ray -> '2.60.0'."""
    for requirement in pyproject()["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml does not pin {package}== in [project].dependencies")


# ---- Dockerfiles ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dockerfile:
    """Instructions of a Dockerfile with continuation lines joined and comments dropped."""

    path: Path
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments)

    def all(self, name: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == name]

    def arg_defaults(self) -> dict[str, str]:
        defaults = {}
        for args in self.all("ARG"):
            name, _, value = args.partition("=")
            if value:
                defaults[name] = value
        return defaults

    def expand(self, text: str) -> str:
        """Substitute ${NAME} / $NAME with the ARG defaults."""
        defaults = self.arg_defaults()
        return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), text)

    def base_images(self) -> list[str]:
        """The image of every FROM, ARGs expanded (stage names dropped)."""
        return [self.expand(args.split()[0]) for args in self.all("FROM")]

    def runs(self) -> str:
        return "\n".join(self.all("RUN"))


def parse_dockerfile(path: Path) -> Dockerfile:
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    instructions = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instructions.append((instruction.upper(), " ".join(args.split())))
    return Dockerfile(path, instructions)


def dockerfiles() -> dict[str, Dockerfile]:
    """{'cpu': Dockerfile, 'cuda': Dockerfile} from infra/docker/Dockerfile.<flavor>."""
    found = {p.suffix.lstrip("."): parse_dockerfile(p) for p in sorted(DOCKER.glob("Dockerfile.*"))}
    assert set(found) == {"cpu", "cuda"}, (
        f"expected Dockerfile.cpu and Dockerfile.cuda, found {sorted(found)}"
    )
    return found


# ---- entrypoints ------------------------------------------------------------------------------


def entrypoint_argv(entrypoint: str) -> list[str]:
    """The entrypoint's words as bash would split them (quotes removed, `$(...)` left unevaluated)."""
    return shlex.split(entrypoint)
