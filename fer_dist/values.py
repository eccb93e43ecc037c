"""Values typed on the command line or read from JSON, turned into config field values.

    python jobs/train.py --set dropout=0.3 --set head_units=512,256
    python jobs/tune.py --space global_batch_size=16,32

`parse_overrides` splits `--set key=value` items; `coerce` turns one string or JSON value
into a field's type (given by the caller: this module knows no config), or raises a
`UserError` naming the key and the expected type.
"""

from __future__ import annotations

import typing
from typing import Any

from fer_dist.errors import UserError


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """`["dropout=0.3", "head_units=256,128"]` -> {"dropout": "0.3", ...}."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def coerce(key: str, value: Any, kind: Any, source: str = "") -> Any:
    """Turns a JSON value or a `--set` string into `kind` (bool, int, float, str or
    tuple[int, ...]), or raises UserError `<source>: key=value: expected ...`."""
    where = f"{source}: " if source else ""
    bad = UserError(f"{where}{key}={value!r}: expected {_type_name(kind)}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            parts = [p for p in value.replace(" ", "").split(",") if p != ""]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise bad
        item = typing.get_args(kind)[0]
        if item is str and isinstance(value, str):  # names keep their inner spaces
            parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            return tuple(coerce(key, p, item, source) for p in parts)
        except UserError:
            raise bad from None
    raise bad  # pragma: no cover - every field type is handled above


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "comma-separated names" if typing.get_args(kind)[0] is str else "comma-separated integers"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


__all__ = ["parse_overrides", "coerce"]
