"""pyproject.toml declares ranges users can install beside their own torch/vLLM; requirements.lock pins them."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]


def lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip()).groups()
            pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_pins_versions_inside_every_declared_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = lock()
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"lock {name}=={pins[name]} !~ {requirement}"
        )


def test_only_the_packages_that_must_be_exact_are_pinned_exactly():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    exact = sorted(Requirement(r).name for r in project["dependencies"] if "==" in r)
    assert exact == ["torchtune"]  # torch, datasets, tokenizers, ... take ranges so a CUDA torch or vLLM fits


def test_make_installs_the_exact_lock_with_the_locked_torch_first():
    makefile = (REPO / "Makefile").read_text()
    assert f"pip install --quiet torch=={lock()['torch']}" in makefile
    assert makefile.index("torch==") < makefile.index("-r requirements.lock") < makefile.index("--no-deps -e .")
