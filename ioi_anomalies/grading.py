"""What a grader may rely on in this package: how its objects cross between two processes.

A grader that runs a student's notebook in one process and the tests in another moves values
between them as plain data (tensors, numbers, strings, and lists, tuples, dicts and sets of them).
This module declares everything else, so that the grader names none of the package's functions:

- **data types** (:data:`DATA_TYPES`): classes whose objects travel as their fields, which are
  plain data, and are rebuilt on the other side with :func:`from_state` (an ``IOIDataset``);
- **recipes**: an object made by a deterministic constructor (a :func:`~ioi_anomalies.random_model`)
  is remembered with how it was made (:func:`recipe_of`), and the other process makes the same one
  with :func:`rebuild`, which runs only the constructors in :data:`REBUILDERS`; the files the
  constructor keeps (:func:`recipe_files`) may travel along, so they are not made twice;
- **parts** (:data:`PARTS`, :func:`parts`): objects that belong to a shared object and are known
  on the other side under its name (a model's or a dataset's tokenizer).

Everything here is plain plumbing: no graded answer, no test.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import weakref
from pathlib import Path

DATA_TYPES = ("ioi_anomalies.dataset:IOIDataset",)
# constructor -> (the function, the function giving the folder it keeps its files in, from the same arguments)
REBUILDERS = {"random_model": ("ioi_anomalies.models:random_model", "ioi_anomalies.models:random_model_dir")}
PARTS = ("tokenizer",)
MAX_RECIPE_FILES = 64 << 20  # bytes of files that may travel with a recipe
_CONTAINERS = (dict, list, tuple, set, frozenset, type)

_recipes: "weakref.WeakKeyDictionary[object, tuple[str, dict]]" = weakref.WeakKeyDictionary()


class NotRebuildable(ValueError):
    """A type or recipe this package does not declare."""


# ---- data types
def type_name(obj) -> str:
    """``"module:QualName"`` of ``obj``'s class."""
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def is_data(obj) -> bool:
    """Whether ``obj`` is an object of a declared data type (it travels as its fields)."""
    return type_name(obj) in DATA_TYPES


def state_of(obj) -> dict:
    """The fields of a data-type object (for the caller to send as plain data)."""
    if not is_data(obj):
        raise NotRebuildable(f"{type_name(obj)} is not one of the declared data types {DATA_TYPES}")
    return dict(vars(obj))


def data_type(name: str) -> type:
    """The class of a declared data type, from its ``"module:QualName"``."""
    if name not in DATA_TYPES:
        raise NotRebuildable(f"{name[:100]} is not one of the declared data types")
    mod, _, qual = name.partition(":")
    return getattr(importlib.import_module(mod), qual)


def from_state(name: str, fields: dict):
    """An object of the declared data type ``name`` with ``fields`` (names must be identifiers)."""
    cls = data_type(name)
    if not all(type(k) is str and k.isidentifier() for k in fields):
        raise NotRebuildable("field names must be identifiers")
    obj = cls.__new__(cls)
    obj.__dict__.update(fields)
    return obj


# ---- recipes
def remember(obj, constructor: str, kwargs: dict):
    """Record that ``obj`` is ``REBUILDERS[constructor](**kwargs)``; returns ``obj``."""
    if constructor not in REBUILDERS:
        raise NotRebuildable(f"unknown constructor {constructor!r}; declared: {sorted(REBUILDERS)}")
    _recipes[obj] = (constructor, dict(kwargs))
    return obj


def recipe_of(obj) -> tuple[str, dict] | None:
    """``(constructor, kwargs)`` that makes ``obj`` again, or None if it was not made by a declared recipe."""
    try:
        r = _recipes.get(obj)
    except TypeError:  # not weak-referenceable: not made here
        return None
    return (r[0], dict(r[1])) if r is not None else None


def _function(spec: str):
    mod, _, qual = spec.partition(":")
    return getattr(importlib.import_module(mod), qual)


def _check(constructor: str, kwargs) -> None:
    if constructor not in REBUILDERS:
        raise NotRebuildable(f"unknown constructor {constructor!r}; declared: {sorted(REBUILDERS)}")
    if type(kwargs) is not dict or not all(type(k) is str and type(v) in (int, float, str, bool) for k, v in kwargs.items()):
        raise NotRebuildable("a recipe's arguments are plain keyword values")


def recipe_files(constructor: str, kwargs: dict) -> dict[str, bytes]:
    """The files the constructor keeps for these arguments (its cache folder), so that another process
    need not make them again; empty if there are none or they are larger than ``MAX_RECIPE_FILES``."""
    _check(constructor, kwargs)
    folder = Path(_function(REBUILDERS[constructor][1])(**kwargs))
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not files or sum(p.stat().st_size for p in files) > MAX_RECIPE_FILES:
        return {}
    return {p.name: p.read_bytes() for p in files}


def rebuild(constructor: str, kwargs: dict, files: dict[str, bytes] | None = None):
    """Make the object of a recipe (a declared constructor with plain keyword arguments).

    ``files`` (from :func:`recipe_files` in the other process) are put in the constructor's cache
    folder first, if it has none, so the constructor finds them instead of making them.
    """
    _check(constructor, kwargs)
    if files:
        folder = Path(_function(REBUILDERS[constructor][1])(**kwargs))
        if not folder.exists():
            if not all(type(n) is str and n and "/" not in n and n not in (".", "..") and type(b) is bytes for n, b in files.items()):
                raise NotRebuildable("a recipe's files are plain names and bytes")
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".rebuild-"))
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            try:
                tmp.rename(folder)
            except OSError:  # made meanwhile: the same files
                shutil.rmtree(tmp, ignore_errors=True)
    return _function(REBUILDERS[constructor][0])(**kwargs)


# ---- parts
def parts(obj) -> dict[str, object]:
    """Objects that belong to ``obj`` and are shared with it, by attribute name (``{"tokenizer": ...}``)."""
    if isinstance(obj, _CONTAINERS) or type(obj).__module__ == "builtins":
        return {}
    out = {}
    for name in PARTS:
        try:
            part = getattr(obj, name, None)
        except Exception:  # noqa: BLE001 - an object whose attributes cannot be read has no parts
            part = None
        if part is not None:
            out[name] = part
    return out
