"""Plugin registry for learners, backbones and datasets, driven by Python entry points.

Every plugin, built-in or third-party, is an entry point ``name = module:Class`` in one of the groups of
:data:`GROUPS`. The built-ins are declared in vlprompt's own ``pyproject.toml`` exactly like third-party
plugins, e.g.::

    [project.entry-points."vlprompt.learners"]
    coop = "vlprompt.learners.coop:CoOp"

A plugin that fails to import is logged and listed in :attr:`Registry.broken`; the others keep working.
Setting ``VLPROMPT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only vlprompt's built-ins, plus the distributions named
in the comma-separated ``VLPROMPT_PLUGINS``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


log = logging.getLogger(__name__)

#: registry kind -> entry-point group. Add a line here to add a plugin group.
GROUPS: dict[str, str] = {
    "learners": "vlprompt.learners",
    "backbones": "vlprompt.backbones",
    "datasets": "vlprompt.datasets",
    "protocols": "vlprompt.protocols",
    "generators": "vlprompt.generators",
}

#: the ``family`` shown for a plugin class without a ``family`` attribute.
DEFAULT_FAMILY: dict[str, str] = {"learners": "?", "backbones": "backbone", "datasets": "dataset", "protocols": "protocol", "generators": "generator"}

BUILTIN_DISTRIBUTION = "vlprompt"
DISABLE_AUTOLOAD_ENV = "VLPROMPT_DISABLE_PLUGIN_AUTOLOAD"
ALLOWED_PLUGINS_ENV = "VLPROMPT_PLUGINS"
_TRUTHY = {"1", "true", "yes"}
_UNKNOWN_DIST = "<unknown>"


class RegistryError(LookupError):
    """A plugin cannot be found, loaded or told apart from another one."""


@dataclass(frozen=True)
class PluginInfo:
    """A successfully loaded plugin."""

    name: str
    group: str
    value: str
    distribution: str
    version: str
    obj: type

    @property
    def class_path(self) -> str:
        """Dotted import path of the loaded class, e.g. ``vlprompt.learners.coop.CoOp``."""
        return f"{self.obj.__module__}.{self.obj.__qualname__}"

    @property
    def family(self) -> str:
        """The class's ``family`` attribute, else a default for its kind (``?`` for learners)."""
        kind = _kind_of_group(self.group)
        return str(getattr(self.obj, "family", DEFAULT_FAMILY.get(kind, "?")))


@dataclass
class BrokenPlugin:
    """A plugin whose entry point could not be loaded."""

    name: str
    group: str
    value: str
    distribution: str
    error: str


@dataclass(frozen=True)
class _Candidate:
    """An entry point before it is loaded."""

    name: str
    value: str
    distribution: str
    version: str
    entry_point: md.EntryPoint


def _normalize(dist_name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _kind_of_group(group: str) -> str:
    return next((kind for kind, grp in GROUPS.items() if grp == group), group)


def _autoload_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() in _TRUTHY


def _allowed_distributions() -> set[str]:
    raw = os.environ.get(ALLOWED_PLUGINS_ENV, "")
    return {_normalize(part.strip()) for part in raw.split(",") if part.strip()}


def _candidate(ep: md.EntryPoint) -> _Candidate:
    dist = ep.dist
    name = dist.name if dist is not None else _UNKNOWN_DIST
    version = dist.version if dist is not None else "?"
    return _Candidate(ep.name, ep.value, name, version, ep)


def _same(first: _Candidate, second: _Candidate) -> bool:
    return (first.value, _normalize(first.distribution)) == (second.value, _normalize(second.distribution))


def _duplicate_message(group: str, name: str, providers: list[_Candidate]) -> str:
    """Why a name registered by several distributions is disabled, naming every provider and the fixes."""
    listed = " and ".join(f"{c.value!r} by distribution {c.distribution!r}" for c in providers)
    paths = " or ".join(repr(c.value.replace(":", ".")) for c in providers)
    others = sorted({c.distribution for c in providers if _normalize(c.distribution) != BUILTIN_DISTRIBUTION})
    fix_dist = f"uninstall or rename the entry point of {' / '.join(others)}" if others else "rename one entry point"
    return (f"Plugin name {name!r} in group {group!r} is registered twice ({listed}), so the name is disabled; "
            f"everything else keeps working. Pick one by its full class path ({paths}) in the config, or "
            f"{fix_dist}.")


class Registry:
    """All plugins of one entry-point group, loaded when the registry is built."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.kind = _kind_of_group(group)
        self._plugins: dict[str, PluginInfo] = {}
        self._broken: dict[str, BrokenPlugin] = {}
        self._skipped: dict[str, str] = {}
        self._conflicts: dict[str, str] = {}
        for candidate in self._collect():
            self._load(candidate)

    def _collect(self) -> list[_Candidate]:
        """Entry points of the group after the autoload filter, deduplicated; a name registered by several
        distributions is disabled (recorded in ``_conflicts`` and listed as broken), the others load."""
        disabled, allowed = _autoload_disabled(), _allowed_distributions()
        chosen: dict[str, _Candidate] = {}
        clashes: dict[str, list[_Candidate]] = {}
        for candidate in map(_candidate, md.entry_points(group=self.group)):
            dist = _normalize(candidate.distribution)
            if disabled and dist != BUILTIN_DISTRIBUTION and dist not in allowed:
                log.debug("Skipping plugin %r from %s (%s is set)", candidate.name,
                          candidate.distribution, DISABLE_AUTOLOAD_ENV)
                self._skipped[candidate.name] = candidate.distribution
                continue
            if candidate.name in chosen:
                if not _same(chosen[candidate.name], candidate):
                    providers = clashes.setdefault(candidate.name, [chosen[candidate.name]])
                    if not any(_same(c, candidate) for c in providers):
                        providers.append(candidate)
                continue
            chosen[candidate.name] = candidate
        for name, providers in clashes.items():
            message = _duplicate_message(self.group, name, providers)
            log.warning("%s", message)
            self._conflicts[name] = message
            self._broken[name] = BrokenPlugin(name, self.group, " / ".join(c.value for c in providers),
                                              " / ".join(c.distribution for c in providers), message)
            del chosen[name]
        return [chosen[name] for name in sorted(chosen)]

    def _load(self, candidate: _Candidate) -> None:
        try:
            obj = candidate.entry_point.load()
            if not isinstance(obj, type):
                raise TypeError(f"{candidate.value} is a {type(obj).__name__}, expected a class")
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            error = f"{type(exc).__name__}: {exc}"
            log.warning("Plugin %r (%s) from distribution %r failed to load: %s",
                        candidate.name, candidate.value, candidate.distribution, error)
            self._broken[candidate.name] = BrokenPlugin(
                candidate.name, self.group, candidate.value, candidate.distribution, error)
            return
        self._plugins[candidate.name] = PluginInfo(
            candidate.name, self.group, candidate.value, candidate.distribution, candidate.version, obj)

    def names(self) -> list[str]:
        """Sorted names of the plugins that loaded."""
        return sorted(self._plugins)

    def entries(self) -> list[PluginInfo]:
        """The loaded plugins, sorted by name."""
        return [self._plugins[name] for name in self.names()]

    @property
    def broken(self) -> list[BrokenPlugin]:
        """Plugins that failed to load, sorted by name."""
        return [self._broken[name] for name in sorted(self._broken)]

    def info(self, name: str) -> PluginInfo:
        """The :class:`PluginInfo` of ``name``; raises :class:`RegistryError` if it is unknown or broken."""
        if name in self._plugins:
            return self._plugins[name]
        raise RegistryError(self._missing_message(name))

    def get(self, name: str) -> type:
        """The plugin class registered as ``name``."""
        return self.info(name).obj

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def failure(self, name: str) -> str | None:
        """Why ``name`` is unusable although installed (failed import, duplicate, skipped), or None."""
        if name in self._broken or name in self._skipped:
            return self._missing_message(name)
        return None

    def _missing_message(self, name: str) -> str:
        if name in self._conflicts:
            return self._conflicts[name]
        if name in self._broken:
            bad = self._broken[name]
            return (f"Plugin {name!r} ({bad.value}) from distribution {bad.distribution!r} failed to load: "
                    f"{bad.error}. Fix the import error or reinstall {bad.distribution!r}.")
        if name in self._skipped:
            return (f"Plugin {name!r} from distribution {self._skipped[name]!r} is installed but skipped because "
                    f"{DISABLE_AUTOLOAD_ENV} is set; add {self._skipped[name]!r} to {ALLOWED_PLUGINS_ENV} "
                    f"(comma-separated) or unset {DISABLE_AUTOLOAD_ENV}.")
        known = ", ".join(self.names()) or "<none>"
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return (f"Unknown {self.kind} name {name!r} (group {self.group!r}).{hint} Known: {known}. "
                f"Run `vlprompt list {self.kind}` to see installed plugins, or install the package providing it.")


_CACHE: dict[str, Registry] = {}


def _check_kind(kind: str) -> str:
    if kind not in GROUPS:
        raise RegistryError(f"Unknown registry kind {kind!r}; choose one of: {', '.join(GROUPS)}.")
    return kind


def get_registry(kind: str) -> Registry:
    """The (cached) registry of ``kind``, one of :data:`GROUPS`' keys."""
    _check_kind(kind)
    if kind not in _CACHE:
        _CACHE[kind] = Registry(GROUPS[kind])
    return _CACHE[kind]


def clear_cache() -> None:
    """Forget all built registries (and importlib's path caches); the next access rescans entry points."""
    _CACHE.clear()
    importlib.invalidate_caches()


def reload(kind: str) -> Registry:
    """Clear the cache and rebuild the registry of ``kind``."""
    clear_cache()
    return get_registry(kind)


def known_names() -> dict[str, list[str]]:
    """Registered names of every group, by kind."""
    return {kind: get_registry(kind).names() for kind in GROUPS}


def resolve_class_path(name: str, group: str | None = None) -> str | None:
    """Dotted class path of a registered plugin ``name``, or ``None`` if ``name`` is not registered.

    ``group`` (a kind such as ``"learners"``) restricts the lookup to one group; without it a name
    registered in several groups raises :class:`RegistryError`.
    """
    kinds = [_check_kind(group)] if group is not None else list(GROUPS)
    matches = [get_registry(kind).info(name) for kind in kinds if name in get_registry(kind)]
    if not matches:
        return None
    if len(matches) > 1:
        where = ", ".join(f"{_kind_of_group(m.group)} ({m.class_path})" for m in matches)
        raise RegistryError(f"Plugin name {name!r} is ambiguous, it exists in: {where}. "
                            f"Pass group=... or write the full class path instead.")
    return matches[0].class_path


# --------------------------------------------------------------------------- registered names in configs
#: which registry group a class_path under a config key belongs to
#: (a wrapping learner's ``inner`` learner, e.g. gram's, is a learner too)
KEY_GROUPS = {"learner": "learners", "backbone": "backbones", "dataset": "datasets", "data": "protocols", "inner": "learners"}


class ConfigError(ValueError):
    """A config names something that does not exist; the message lists what does."""


def resolve_config_names(node: Any, key: str | None = None, overridden: Mapping[str, str] | None = None) -> Any:
    """Rewrite ``class_path: <registered name>`` to the plugin's import path, recursively.

    ``overridden``: config keys whose class the command line sets, with that class path; an unknown name under
    such a key is replaced by it instead of failing (the command line wins over the config file).
    """
    overridden = {} if overridden is None else overridden
    if isinstance(node, list):
        return [resolve_config_names(v, key, overridden) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: resolve_config_names(v, k, overridden) for k, v in node.items()}
    cp = out.get("class_path")
    if isinstance(cp, str) and "." not in cp:
        group = KEY_GROUPS.get(key or "")
        path = resolve_class_path(cp, group=group) if group else resolve_class_path(cp)
        if path is None and key in overridden:
            # the command line replaces this class: an unusable name in a config file must not stop the run
            out["class_path"] = overridden[key]
            return out
        if path is None:
            failures = [f for k in ([group] if group else list(GROUPS))
                        if (f := get_registry(k).failure(cp)) is not None]
            if failures:  # installed but unusable: say why, not "unknown"
                raise ConfigError(f"{(group or 'plugin').rstrip('s')} {cp!r} under {key!r} failed to load: {failures[0]}")
            kinds = [group] if group else list(GROUPS)
            known = {k: get_registry(k).names() for k in kinds}
            listing = "; ".join(f"{k}: {', '.join(v) or '(none)'}" for k, v in known.items())
            raise ConfigError(
                f"unknown {(group or 'plugin').rstrip('s')} {cp!r} under {key!r}. Known {listing}. "
                "Run `vlprompt list learners|backbones|datasets|protocols`, or give a full import path."
            )
        out["class_path"] = path
    return out
