"""A small registry filled by entry points, so rlmin never imports ``agents`` or ``envs``.

Packages declare what they add in their ``pyproject.toml``::

    [project.entry-points."rlmin.tasks"]
    locomotion = "envs.tasks:TASKS"

and rlmin finds it with ``load_group("rlmin.tasks")`` -> ``{"locomotion": TASKS}``. In-process
additions (tests, notebooks) go through ``register(group, name, obj)`` and take precedence over
an entry point of the same name. Loading is lazy and cached per group; ``clear_cache()`` forgets
the loaded entry points (not the in-process registrations).

A broken entry point does not break the whole group: listing warns and skips it, asking for it
by name raises with the original import error chained.
"""
from __future__ import annotations

import importlib.metadata
import warnings
from typing import Any

from rlmin.errors import RegistryError

# The groups rlmin itself knows about (others work too; these are just named once).
TASKS = "rlmin.tasks"
AGENTS = "rlmin.agents"
BUILDERS = "rlmin.builders"

_loaded: dict[str, dict[str, Any]] = {}      # group -> name -> object, from entry points
_failed: dict[str, dict[str, Exception]] = {}  # group -> name -> why loading failed
_registered: dict[str, dict[str, Any]] = {}  # group -> name -> object, from register()


def _load_entry_points(group: str) -> None:
    loaded: dict[str, Any] = {}
    failed: dict[str, Exception] = {}
    for ep in importlib.metadata.entry_points(group=group):
        try:
            loaded[ep.name] = ep.load()
        except Exception as exc:  # a third-party plugin may be broken; keep the others
            failed[ep.name] = exc
    _loaded[group] = loaded
    _failed[group] = failed


def load_group(group: str) -> dict[str, Any]:
    """All objects of ``group``: entry points (loaded once, cached) plus ``register``-ed ones."""
    if group not in _loaded:
        _load_entry_points(group)
    for name, exc in _failed.get(group, {}).items():
        warnings.warn(f"rlmin: entry point {name!r} of group {group!r} failed to load "
                      f"and is skipped: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
    return {**_loaded[group], **_registered.get(group, {})}


def names(group: str) -> list[str]:
    """Sorted names known in ``group`` (entry points that failed to load included)."""
    if group not in _loaded:
        _load_entry_points(group)
    return sorted({*_loaded[group], *_failed[group], *_registered.get(group, {})})


def get(group: str, name: str) -> Any:
    """The object registered as ``name`` in ``group``; a clear error listing known names."""
    if name in _registered.get(group, {}):
        return _registered[group][name]
    if group not in _loaded:
        _load_entry_points(group)
    if name in _loaded[group]:
        return _loaded[group][name]
    if name in _failed[group]:
        raise RegistryError(f"{group} entry point {name!r} failed to load: "
                            f"{type(_failed[group][name]).__name__}: {_failed[group][name]}"
                            ) from _failed[group][name]
    known = ", ".join(names(group)) or "(none: is the package providing them installed?)"
    raise RegistryError(f"unknown {group} name {name!r}; known: {known}")


def register(group: str, name: str, obj: Any, overwrite: bool = False) -> Any:
    """Add ``obj`` as ``name`` in ``group`` for this process; returns ``obj`` (usable as decorator
    helper). Refuses to replace an in-process registration unless ``overwrite``."""
    entries = _registered.setdefault(group, {})
    if name in entries and not overwrite and entries[name] is not obj:
        raise ValueError(f"{group} name {name!r} is already registered; pass overwrite=True")
    entries[name] = obj
    return obj


def unregister(group: str, name: str) -> None:
    """Remove an in-process registration (entry points cannot be removed)."""
    _registered.get(group, {}).pop(name, None)


def clear_cache() -> None:
    """Forget loaded entry points so the next lookup reads them again."""
    _loaded.clear()
    _failed.clear()


# ------------------------------------------------------------------------- typed shortcuts

BUILDER_ENTRY_POINT_HINT = ('[project.entry-points."rlmin.builders"]\n'
                            'locomotion = "envs.builder:build_dataset"')


def load_agent_class(name: str) -> Any:
    """The agent class registered as ``name`` in ``rlmin.agents`` (e.g. ``decision``, ``bc``)."""
    return get(AGENTS, name)


def load_builder(name: str | None = None) -> Any:
    """The dataset builder ``build(env_name, level, n_steps=..., policy_path=..., sac_run_dir=...,
    seed=..., overwrite=...) -> dataset_id`` from the ``rlmin.builders`` group.

    With no ``name``: the only builder, or the one called ``locomotion`` when there are several.
    """
    if name is not None:
        return get(BUILDERS, name)
    known = names(BUILDERS)
    if not known:
        raise RegistryError("no dataset builder is installed: a package must declare one, e.g. in "
                            "pyproject.toml\n" + BUILDER_ENTRY_POINT_HINT + "\n(then reinstall it: "
                            "pip install -e .)")
    if len(known) == 1:
        return get(BUILDERS, known[0])
    if "locomotion" in known:
        return get(BUILDERS, "locomotion")
    raise RegistryError(f"several dataset builders are installed ({', '.join(known)}); name one")
