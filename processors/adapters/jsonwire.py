"""JSON for external APIs whose money fields are JSON numbers.

Amounts travel as numbers on these wires (the providers' shape), so they are written from
``Decimal`` digit for digit and read back with ``parse_float=Decimal``: no float ever touches
an amount.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

__all__ = ["JsonRejected", "dumps", "loads", "loads_strict"]

_encode_str = json.encoder.encode_basestring_ascii


def dumps(obj: Any) -> bytes:
    parts: list[str] = []
    _write(obj, parts)
    return "".join(parts).encode("ascii")


def _write(obj: Any, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(_encode_str(obj))
    elif obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ValueError("non-finite decimal cannot be sent")
        out.append(format(obj, "f"))
    elif isinstance(obj, int):
        out.append(str(obj))
    elif isinstance(obj, dict):
        out.append("{")
        first = True
        for key, value in obj.items():
            if not first:
                out.append(",")
            first = False
            out.append(_encode_str(str(key)))
            out.append(":")
            _write(value, out)
        out.append("}")
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, value in enumerate(obj):
            if i:
                out.append(",")
            _write(value, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(obj).__name__} (floats are refused on purpose)")


class JsonRejected(ValueError):
    """Untrusted JSON this project refuses, with the reason: not JSON, nested too deeply, a key
    given twice (whichever one a reader keeps, another reader may keep the other), or a
    non-standard constant (``NaN``, ``Infinity``)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonRejected(f"the key {json.dumps(key[:64])} appears twice in one object")
            seen.add(key)
    return document


def _no_constant(name: str) -> Any:
    raise JsonRejected(f"{name} is not a JSON value")


def loads_strict(data: bytes | str, *, decimals: bool = True) -> Any:
    """Untrusted JSON, parsed strictly: :class:`JsonRejected` (a ``ValueError``) for anything
    but standard JSON with unique keys, nested at most as deep as the interpreter allows.
    Numbers with a fraction become ``Decimal`` unless ``decimals`` is false."""
    try:
        return json.loads(
            data,
            parse_float=Decimal if decimals else None,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except JsonRejected:
        raise
    except RecursionError as exc:
        raise JsonRejected("nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonRejected("not valid JSON") from exc


def loads(data: bytes | str) -> Any:
    """JSON from a provider (amounts as ``Decimal``); strict as :func:`loads_strict`."""
    return loads_strict(data)
