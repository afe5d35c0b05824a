"""JSON for external APIs whose money fields are JSON numbers.

Amounts travel as numbers on these wires (the providers' shape), so they are written from
``Decimal`` digit for digit and read back with ``parse_float=Decimal``: no float ever touches
an amount.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

__all__ = ["dumps", "loads"]

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


def loads(data: bytes | str) -> Any:
    return json.loads(data, parse_float=Decimal)
