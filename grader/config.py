"""The grader's settings: ``grader/grader_config.toml``, overridable per command."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = ROOT / "grader" / "grader_config.toml"
MODELS = ("embedded", "gpt2-small")


@dataclass(frozen=True)
class Config:
    model: str = "embedded"
    wall_time_s: float = 600.0
    memory_gb: float = 6.0
    judge_memory_gb: float = 8.0
    disk_mb: int = 1024
    processes: int = 64
    jobs: int = 0
    sandbox: str = "bwrap"
    hidden_seed_pool: int = 0  # 0: every submission its own hidden inputs; N: N keys per assignment
    submitted: Path = ROOT / "grader" / "submitted"
    results: Path = ROOT / "grader" / "results"
    feedback: Path = ROOT / "grader" / "feedback"
    grades: Path = ROOT / "grader" / "grades.csv"
    roster: Path = ROOT / "grader" / "roster.csv"
    solutions: Path = ROOT / "solutions"
    course: Path = ROOT / "grader" / "course"  # nbgrader's gradebook and the autograded notebooks (formgrader)
    extra_env: dict = field(default_factory=dict)

    @property
    def n_jobs(self) -> int:
        return self.jobs if self.jobs > 0 else default_jobs(self.model)

    def fingerprint(self) -> str:
        """What a stored grade depends on besides the two notebooks."""
        return f"model={self.model}" + (f";seeds={self.hidden_seed_pool}" if self.hidden_seed_pool else "")

    def with_(self, **kw) -> "Config":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


#: Memory one grading job holds at its peak (judge and worker together, GB; measured with ``make bench``:
#: about 0.9 + 1 on the embedded model, 2.7 + 2.5 on GPT-2 small), with a margin.
JOB_MEMORY_GB = {"embedded": 2.5, "gpt2-small": 6.0}


def default_jobs(model: str = "embedded", cores: int | None = None, memory_gb: float | None = None) -> int:
    """Jobs at a time when ``jobs = 0``: one more than the cores, as many as the memory holds.

    A grading job leaves its core idle part of the time (the judge waits for the worker's cells,
    the worker for the judge's checks, the sandbox starts), so one job more than the cores keeps
    them busy: one full submission on 2 cores took 38.8 s with 2 jobs and 33.5 s with 3
    (``grader.bench --only one --jobs N``, references cached).
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    if memory_gb is None:
        try:
            memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError, AttributeError):
            memory_gb = float("inf")
    fits = int(memory_gb // JOB_MEMORY_GB.get(model, max(JOB_MEMORY_GB.values())))
    return max(1, min(cores + 1, fits))


def config_to_json(cfg: Config) -> str:
    """The settings as JSON (for the judge's process, a preprocessor's trait or a cluster job)."""
    import json
    from dataclasses import asdict

    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}, sort_keys=True)


def config_from_json(text: str) -> Config:
    import json

    data = json.loads(text)
    paths = {f.name for f in fields(Config) if isinstance(f.default, Path)}
    return Config(**{k: (Path(v) if k in paths else v) for k, v in data.items() if k in {f.name for f in fields(Config)}})


def venv_env(base: dict | None = None) -> dict:
    """``base`` (default: this environment) with this Python's bin/ first on PATH: what Jupyter and nbgrader start by
    name (``jupyter-*`` commands) comes from this environment."""
    import sys

    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def restore_environ(before: dict[str, str | None]) -> None:
    """Put the variables of ``before`` back into ``os.environ`` as they were (None: not set)."""
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def load(path: Path | None = None) -> Config:
    path = Path(path) if path else CONFIG_FILE
    if not path.exists():
        return Config()
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"{path}: not valid TOML ({e})")
    paths = data.pop("paths", {})
    known = {f.name for f in fields(Config)}
    unknown = set(data) - known
    if unknown:
        raise SystemExit(f"{path}: unknown setting(s) {sorted(unknown)}; known: {sorted(known - {'extra_env'})}")
    cfg = Config(**data)
    cfg = replace(cfg, **{k: (ROOT / v if not Path(v).is_absolute() else Path(v)) for k, v in paths.items()})
    if cfg.model not in MODELS:
        raise SystemExit(f"{path}: model must be one of {MODELS}, not {cfg.model!r}")
    if not isinstance(cfg.hidden_seed_pool, int) or isinstance(cfg.hidden_seed_pool, bool) or cfg.hidden_seed_pool < 0:
        raise SystemExit(f"{path}: hidden_seed_pool must be 0 (a seed per submission) or a positive number of seeds, "
                         f"not {cfg.hidden_seed_pool!r}")
    if cfg.sandbox not in ("bwrap", "none"):
        raise SystemExit(f"{path}: sandbox must be 'bwrap' or 'none', not {cfg.sandbox!r}")
    return cfg
