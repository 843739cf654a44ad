"""``--set name=value[,value...]``: text from the command line to checked head parameters, one
dict per combination (the grid a ``train`` call runs)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from classifiers import SettingError

if TYPE_CHECKING:
    from classifiers import Head


def parse_settings(items: Sequence[str]) -> dict[str, list[str]]:
    """``["C=0.1,1", "pooling=avg"]`` -> ``{"C": ["0.1", "1"], "pooling": ["avg"]}``."""
    settings: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not name or not all(parts):
            raise SettingError(f"--set {item!r} is not name=value[,value...]; e.g. --set C=0.1,1,10")
        if name in settings:
            raise SettingError(f"--set {name} is given twice; list all its values once, e.g. --set {name}=a,b")
        settings[name] = parts
    return settings


def coerce(head_cls: type[Head], name: str, text: str) -> Any:
    """A ``--set`` value converted to the type of the setting's default."""
    defaults = head_cls.defaults()
    if name not in defaults:
        raise SettingError(f"head {head_cls.name!r} has no setting {name!r}; its settings are {', '.join(defaults)}")
    default = defaults[name]
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if text.lower() == "none":
            return None
        if text.lower() in ("true", "false"):  # a setting that is "auto" or a switch, as jit_compile
            return text.lower() == "true"
        if text.lstrip("-").isdigit():
            return int(text)
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else f"a number like {default!r}"
        raise SettingError(f"--set {name}={text}: not {kind}") from None
    return text


def expand(head_cls: type[Head], settings: dict[str, list[str]], seed: int) -> list[dict[str, Any]]:
    """One full, checked parameter dict per combination of the listed values."""
    names = list(settings)
    grid = []
    for values in itertools.product(*(settings[n] for n in names)):
        params = head_cls.defaults()
        if "seed" in params:
            params["seed"] = seed
        params.update({n: coerce(head_cls, n, v) for n, v in zip(names, values)})
        head_cls(**params).check_params()
        grid.append(params)
    return grid
