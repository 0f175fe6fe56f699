"""The conda environment and the pip project list the same pinned packages."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = sorted(p for p in pip_section if not p.startswith("-e"))
    assert conda_pins == sorted(deps)
    assert "python=3.11" in env["dependencies"]


def test_behaviour_critical_pins_are_exact():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(re.match(r"([A-Za-z0-9_.-]+)==(.+)", d).groups() for d in deps)
    assert pins["transformer-lens"] == "4.3.0"
    assert pins["torch"] == "2.13.0"
    assert pins["nbgrader"] == "0.9.6"


def test_ci_runs_make_test():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


def test_setup_installs_the_pinned_cluster_extra():
    """`make setup` (so `make test` and CI) and the conda environment install `.[cluster]`, so the cluster tests run."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cluster"]
    assert extra and all("==" in d for d in extra), extra
    assert "-e '.[cluster]'" in (ROOT / "Makefile").read_text()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "-e .[cluster]" in next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
