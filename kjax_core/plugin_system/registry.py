"""Plugin loading and the model registry.

Entry points of the ``kjax`` group are loaded on first use, one at a time: a plugin that fails to
import, or whose hook raises, is reported on stderr and skipped, and the others keep working. Hooks
are called through pluggy one plugin at a time (:func:`plugin_hook`).

Environment:
    KJAX_PLUGINS: comma-separated entry-point names; when set, only these are loaded.
    KJAX_DISABLE_PLUGINS: comma-separated entry-point names never to load.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from ..errors import PluginError, UnknownModelError
from ..version import __version__
from .types import CORE_MATCHERS, LayerOp, LayerRule, ModelSpec

ENTRY_POINT_GROUP = "kjax"
CORE_PLUGIN = "kjax_core"


@dataclass
class PluginInfo:
    """What `kjax plugins` shows about one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None  # why it failed to load; None when it loaded


@dataclass
class Registry:
    """Everything the loaded plugins registered."""

    plugins: list[PluginInfo]
    models: dict[str, ModelSpec]
    rules: dict[str, LayerRule]
    ops: dict[str, LayerOp]
    conflicts: dict[str, list[str]]  # model name -> plugins that all registered it
    manager: pluggy.PluginManager

    def plugin_hook(self, plugin_name: str, hook_name: str) -> Any:
        """:func:`plugin_hook` of a loaded plugin by name; None when it is not loaded (never
        was, or was refused)."""
        plugin = self.manager.get_plugin(plugin_name)
        return None if plugin is None else plugin_hook(self.manager, plugin, hook_name)


def _names_from_env(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _warn(message: str) -> None:
    print(f"kjax: warning: {message}", file=sys.stderr)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _load_entry_points(pm: pluggy.PluginManager) -> list[PluginInfo]:
    allowed = _names_from_env("KJAX_PLUGINS")
    blocked = _names_from_env("KJAX_DISABLE_PLUGINS") or set()
    infos = []
    seen = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(ep.name)
        if ep.name in blocked or (allowed is not None and ep.name not in allowed):
            continue
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        info = PluginInfo(ep.name, dist, version, ep.value)
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as error:  # a broken plugin must not break the others
            info.error = _one_line(error)
            _warn(f"plugin '{ep.name}' ({dist}) failed to load and is skipped: {info.error}")
        infos.append(info)
    return infos


def plugin_hook(pm: pluggy.PluginManager, plugin: object, hook_name: str) -> Any:
    """The hook ``hook_name`` restricted to ``plugin``'s own implementation.

    kjax calls every hook one plugin at a time, through pluggy (a ``subset_hook_caller`` with
    every other plugin removed), rather than all plugins in one call, for two reasons:

    - attribution: pluggy lets a hook implementation's exception through unchanged and does not
      say whose it was; called per plugin, the caller knows which plugin raised, and refuses or
      names that one (a hook wrapper of the core would see the failure of the whole call, with
      no owner either);
    - ownership: ``kjax_match_layers`` is called only for the plugin that registered the model,
      so a plugin cannot answer for another plugin's models, even by forgetting to check the name.

    Calling a hook this way keeps pluggy's own semantics: argument selection by name,
    ``firstresult`` (the plugin's answer, or None when it does not implement the hook), and
    ``tryfirst``/``trylast`` among the plugin's implementations. With no implementation the call
    returns None for a ``firstresult`` hook, ``[]`` otherwise.
    """
    others = [p for p in pm.get_plugins() if p is not plugin]
    return pm.subset_hook_caller(hook_name, remove_plugins=others)


def _registrations(pm: pluggy.PluginManager, plugin: object, hook_name: str) -> list[Any]:
    """What one plugin's implementation of a registration hook registers."""
    items: list[Any] = []
    plugin_hook(pm, plugin, hook_name)(register=items.append)
    return items


def _check_matcher(spec: ModelSpec) -> None:
    matcher = spec.matcher
    module, _, attr = matcher.partition(":") if isinstance(matcher, str) else ("", "", "")
    if matcher not in CORE_MATCHERS and not (module and attr):
        raise PluginError(
            f"model '{spec.name}' names matcher {matcher!r}, which is neither a core matcher "
            f"({', '.join(CORE_MATCHERS)}) nor a \"module:attr\" reference"
        )


def _admit(
    pm: pluggy.PluginManager,
    plugin: object,
    models: dict[str, ModelSpec],
    rules: dict[str, LayerRule],
    ops: dict[str, LayerOp],
) -> tuple[list[str], list[ModelSpec], list[LayerRule], list[LayerOp]]:
    """Check everything one plugin implements and registers, before any of it is used.

    Returns (hook names, models, rules, ops); raises on the first problem, so that a plugin is taken
    whole or not at all.
    """
    hooks = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.spec is None:
            raise PluginError(f"implements unknown hook {caller.name} (misspelled?)")
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and (impl.hookwrapper or getattr(impl, "wrapper", False)):
                raise PluginError(f"implements {caller.name} as a wrapper; kjax calls plain hooks")
        hooks.append(caller.name)
    new_models = _registrations(pm, plugin, "kjax_register_models")
    new_rules = _registrations(pm, plugin, "kjax_register_layer_rules")
    names: set[str] = set()
    for spec in new_models:
        if not isinstance(spec, ModelSpec):
            raise PluginError(f"registered a {type(spec).__name__} where a ModelSpec belongs")
        if not spec.name or spec.name != spec.name.strip().lower():
            raise PluginError(f"model names are lower case without spaces, got {spec.name!r}")
        if spec.name in names:
            raise PluginError(f"registered model '{spec.name}' twice")
        _check_matcher(spec)
        names.add(spec.name)
    _check_per_class(new_rules, LayerRule, rules, "layer rule")
    new_ops = _registrations(pm, plugin, "kjax_register_layer_ops")
    _check_per_class(new_ops, LayerOp, ops, "layer op")
    return hooks, new_models, new_rules, new_ops


def _check_per_class(new: list[Any], kind: type, registered: dict[str, Any], label: str) -> None:
    """One rule (or op) per Keras class: of the right type, and no class registered twice."""
    seen: set[str] = set()
    for item in new:
        if not isinstance(item, kind):
            raise PluginError(f"registered a {type(item).__name__} where a {kind.__name__} belongs")
        if item.keras_class in registered or item.keras_class in seen:
            owner = registered[item.keras_class].plugin if item.keras_class in registered else "itself"
            raise PluginError(f"{label} for {item.keras_class} is already registered by '{owner}'")
        seen.add(item.keras_class)


def build_registry() -> Registry:
    """Load the plugins and collect what they register. Prefer :func:`registry` (cached)."""
    from . import core_plugin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(core_plugin, name=CORE_PLUGIN)
    infos = [PluginInfo(CORE_PLUGIN, "kjax", __version__, core_plugin.__name__)]
    infos += _load_entry_points(pm)

    models: dict[str, ModelSpec] = {}
    owners: dict[str, list[str]] = {}
    rules: dict[str, LayerRule] = {}
    ops: dict[str, LayerOp] = {}
    for info in infos:
        plugin = pm.get_plugin(info.name)
        if info.error or plugin is None:
            continue
        try:
            info.hooks, new_models, new_rules, new_ops = _admit(pm, plugin, models, rules, ops)
        except Exception as error:  # the whole plugin is left out, its other hooks too
            info.error = _one_line(error)
            _warn(f"plugin '{info.name}' is skipped: {info.error}")
            pm.unregister(plugin)
            continue
        for spec in new_models:
            owners.setdefault(spec.name, []).append(info.name)
            models.setdefault(spec.name, replace(spec, plugin=info.name))
        for rule in new_rules:
            rules[rule.keras_class] = replace(rule, plugin=info.name)
        for op in new_ops:
            ops[op.keras_class] = replace(op, plugin=info.name)
    conflicts = {name: plugins for name, plugins in owners.items() if len(plugins) > 1}
    for name, plugins in conflicts.items():
        _warn(
            f"model '{name}' is registered by several plugins ({', '.join(plugins)}); "
            "using it fails until all but one are disabled with KJAX_DISABLE_PLUGINS"
        )
    return Registry(infos, models, rules, ops, conflicts, pm)


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry, built on first use."""
    return build_registry()


def reset() -> None:
    """Forget the loaded plugins (after installing one, or changing KJAX_PLUGINS)."""
    registry.cache_clear()


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the available models, naturally sorted (resnet50 before resnet101).

    :param pattern: shell wildcard (``"resnet*"``, ``"efficientnetb[0-3]"``); case-insensitive.
        A pattern without wildcard characters matches names containing it.
    """
    names = registry().models
    if pattern:
        pattern = pattern.lower()
        if not any(ch in pattern for ch in "*?["):
            pattern = f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return sorted(names, key=_natural_key)


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; UnknownModelError with suggestions otherwise."""
    reg = registry()
    key = name.strip().lower()
    if key in reg.conflicts:
        raise PluginError(
            f"model '{key}' is registered by several plugins ({', '.join(reg.conflicts[key])}); "
            "disable all but one, e.g. KJAX_DISABLE_PLUGINS=" + reg.conflicts[key][-1]
        )
    if key not in reg.models:
        close = difflib.get_close_matches(key, list(reg.models), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown model '{name}'.{hint} Run `kjax list` to see all models.")
    return reg.models[key]
