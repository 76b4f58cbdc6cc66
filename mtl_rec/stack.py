"""Check that torch, fbgemm and torchrec pair, before any of them is imported.

A mismatched trio fails deep inside FBGEMM's operator registration with an undefined-symbol
traceback that names none of the packages. The rule, from the release pairing of the three projects:

    torchrec 1.X  <->  fbgemm-gpu (or fbgemm-gpu-cpu) 1.X  <->  torch 2.(X+5)

Versions are read from package metadata (importlib.metadata), so the check costs milliseconds and
runs on a Ray driver that never imports torch. Set MTL_REC_SKIP_STACK_CHECK=1 to bypass it when
running a build you paired by hand (a nightly, a source build).

Example::

    >>> from mtl_rec.stack import check_stack
    >>> check_stack()  # raises StackMismatchError with the fix when the trio does not pair
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import metadata

FBGEMM_DISTRIBUTIONS = ("fbgemm-gpu", "fbgemm-gpu-cpu")
PINNED = {"torch": "2.13.0", "fbgemm": "1.8.0", "torchrec": "1.8.0"}


class StackMismatchError(ImportError):
    """torch / fbgemm / torchrec are missing or do not pair; the message says how to fix it."""


@dataclass(frozen=True)
class Stack:
    """Installed versions (None when a package is absent)."""

    torch: str | None
    torchrec: str | None
    fbgemm: dict[str, str]  # distribution name -> version; both names present is itself an error


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def installed_stack() -> Stack:
    fbgemm = {d: v for d in FBGEMM_DISTRIBUTIONS if (v := _version(d)) is not None}
    return Stack(torch=_version("torch"), torchrec=_version("torchrec"), fbgemm=fbgemm)


def _minor(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise StackMismatchError(f"cannot parse version {version!r}")
    return int(match.group(1)), int(match.group(2))


def stack_problems(stack: Stack) -> list[str]:
    """Return human-readable problems with `stack`; empty when the trio pairs."""
    problems = []
    if stack.torch is None:
        problems.append("torch is not installed")
    if stack.torchrec is None:
        problems.append("torchrec is not installed")
    if not stack.fbgemm:
        problems.append("neither fbgemm-gpu nor fbgemm-gpu-cpu is installed")
    if len(stack.fbgemm) > 1:
        problems.append(
            "both fbgemm-gpu and fbgemm-gpu-cpu are installed; they provide the same `fbgemm_gpu` module "
            "and overwrite each other's files: uninstall one"
        )
    if problems:
        return problems
    torch_major, torch_minor = _minor(stack.torch)
    rec_major, rec_minor = _minor(stack.torchrec)
    ((fbgemm_dist, fbgemm_version),) = stack.fbgemm.items()
    fb_major, fb_minor = _minor(fbgemm_version)
    if (rec_major, rec_minor) != (fb_major, fb_minor):
        problems.append(
            f"torchrec {stack.torchrec} needs {fbgemm_dist} {rec_major}.{rec_minor}.x, found {fbgemm_version}"
        )
    if (torch_major, torch_minor) != (2, rec_minor + 5) or rec_major != 1:
        problems.append(
            f"torchrec {stack.torchrec} needs torch 2.{rec_minor + 5}.x, found torch {stack.torch}"
        )
    return problems


def describe_stack(stack: Stack | None = None) -> str:
    stack = stack or installed_stack()
    fbgemm = ", ".join(f"{d} {v}" for d, v in stack.fbgemm.items()) or "no fbgemm"
    return f"torch {stack.torch}, {fbgemm}, torchrec {stack.torchrec}"


def check_stack(stack: Stack | None = None) -> None:
    """Raise StackMismatchError naming the versions found, the pairing rule and the fix."""
    if os.environ.get("MTL_REC_SKIP_STACK_CHECK") == "1":
        return
    stack = stack or installed_stack()
    problems = stack_problems(stack)
    if problems:
        raise StackMismatchError(
            "mtl-rec: the torch / fbgemm / torchrec stack does not pair.\n"
            f"  found:    {describe_stack(stack)}\n"
            + "".join(f"  problem:  {p}\n" for p in problems)
            + "  required: torchrec 1.X with fbgemm-gpu[-cpu] 1.X and torch 2.(X+5); this project pins "
            f"torch {PINNED['torch']}, fbgemm {PINNED['fbgemm']}, torchrec {PINNED['torchrec']}.\n"
            "  fix:      run `make setup` (it rebuilds .venv with the pinned stack), or install by hand:\n"
            f"            pip install torch=={PINNED['torch']} fbgemm-gpu-cpu=={PINNED['fbgemm']}   "
            "# fbgemm-gpu on CUDA machines\n"
            f"            pip install --no-deps torchrec=={PINNED['torchrec']}\n"
            "  (set MTL_REC_SKIP_STACK_CHECK=1 to bypass this check for a hand-paired build)"
        )
