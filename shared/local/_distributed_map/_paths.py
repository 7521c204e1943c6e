"""JSONPath payload templates, as Step Functions evaluates them (pure).

A Distributed Map's `ItemSelector`, `ItemBatcher.BatchInput`, `ItemReader.Parameters` and
`ResultWriter.Parameters` are payload templates: a field whose name ends in `.$` takes the
value of a path (`$...` into the state's input, `$$...` into the context object) or of an
intrinsic function (`States.Format(...)`), under the name without `.$`; every other field is
copied. Locally the map-runs process evaluates them, so they follow the rules of the Amazon
States Language ("Paths", "Payload templates", "Intrinsic functions" in the Step Functions
Developer Guide):

- a path that matches nothing is an error (`States.Runtime` for the Map state);
- a definite path (no `*`, `..`, filter, slice or union) gives one value, an indefinite one
  the list of what it matched;
- the intrinsic functions are the ones AWS documents for JSONPath states.

Paths are evaluated with jsonpath-ng (moto's dependency: the `local` extra), imported on first
use and compiled once per path.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from shared.local._distributed_map._errors import MapRunError

__all__ = ["evaluate", "evaluate_template", "resolve_path"]

_INDEFINITE_MARKS = ("*", "..", "?(", ":", ",")


@functools.lru_cache(maxsize=512)
def _compiled(path: str) -> Any:
    from jsonpath_ng.ext.parser import parse

    try:
        return parse(path)
    except Exception as exc:  # jsonpath-ng raises bare Exceptions for syntax errors
        raise MapRunError("States.Runtime", f"invalid JSONPath {path!r}: {exc}") from None


def _is_definite(path: str) -> bool:
    """True when `path` names one value (no wildcard, descent, filter, slice or union)."""
    outside_quotes = []
    quote: str | None = None
    for char in path:
        if quote:
            if char == quote:
                quote = None
            continue
        if char in "'\"":
            quote = char
            continue
        outside_quotes.append(char)
    text = "".join(outside_quotes)
    return not any(mark in text for mark in _INDEFINITE_MARKS)


def resolve_path(path: str, data: Any, *, context: Any = None, field: str = "") -> Any:
    """The value `path` selects: `$...` from `data`, `$$...` from `context`.

    Raises MapRunError(States.Runtime) when the path is invalid or matches nothing.
    """
    source = data
    expression = path
    if path.startswith("$$"):
        source, expression = context, path[1:]
    if not expression.startswith("$"):
        raise MapRunError("States.Runtime", f"{field or 'path'}: {path!r} is not a JSONPath")
    if expression == "$":
        return source
    matches = [m.value for m in _compiled(expression).find(source)]
    if _is_definite(expression):
        if not matches:
            where = f" specified for the field {field!r}" if field else ""
            raise MapRunError(
                "States.Runtime",
                f"The JSONPath {path!r}{where} could not be found in the input "
                f"{json.dumps(source)[:500]!r}",
            )
        return matches[0]
    return matches


def evaluate(expression: str, data: Any, *, context: Any = None, field: str = "") -> Any:
    """A `.$` field's value: a path, or an intrinsic function call.

    Raises MapRunError(States.Runtime) as Step Functions fails a state on a bad one.
    """
    text = expression.strip()
    if text.startswith("States."):
        return _Intrinsic(text, data, context, field).call()
    return resolve_path(text, data, context=context, field=field)


def evaluate_template(template: Any, data: Any, *, context: Any = None) -> Any:
    """`template` with every `name.$` field replaced by `name` and its evaluated value,
    recursively through objects and arrays.

    Raises MapRunError(States.Runtime) for a path that matches nothing or a bad function.
    """
    if isinstance(template, Mapping):
        out: dict[str, Any] = {}
        for key, value in template.items():
            if key.endswith(".$") and isinstance(value, str):
                out[key[:-2]] = evaluate(value, data, context=context, field=key)
            else:
                out[key] = evaluate_template(value, data, context=context)
        return out
    if isinstance(template, list):
        return [evaluate_template(value, data, context=context) for value in template]
    return template


# -- intrinsic functions ------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _format(template: str, *args: Any) -> str:
    parts = template.replace("\\{", "\0").replace("\\}", "\1").split("{}")
    if len(parts) - 1 != len(args):
        raise ValueError(f"{len(parts) - 1} placeholders for {len(args)} arguments")
    out = parts[0]
    for arg, part in zip(args, parts[1:], strict=True):
        out += _text(arg) + part
    return out.replace("\0", "{").replace("\1", "}")


def _partition(items: list[Any], size: int) -> list[list[Any]]:
    if size <= 0:
        raise ValueError("chunk size must be positive")
    return [items[i : i + size] for i in range(0, len(items), size)]


def _range(start: int, end: int, step: int) -> list[int]:
    if step == 0:
        raise ValueError("step must not be 0")
    return list(range(start, end + (1 if step > 0 else -1), step))


def _unique(items: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _merge(left: dict[str, Any], right: dict[str, Any], deep: bool) -> dict[str, Any]:
    if deep:
        raise ValueError("States.JsonMerge supports shallow merges only (false)")
    return {**left, **right}


_HASHES = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384",
           "SHA-512": "sha512"}

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "States.Format": _format,
    "States.StringToJson": lambda text: json.loads(text),
    "States.JsonToString": lambda value: json.dumps(value, separators=(",", ":")),
    "States.Array": lambda *values: list(values),
    "States.ArrayPartition": _partition,
    "States.ArrayContains": lambda items, value: value in items,
    "States.ArrayRange": _range,
    "States.ArrayGetItem": lambda items, index: items[index],
    "States.ArrayLength": lambda items: len(items),
    "States.ArrayUnique": _unique,
    "States.Base64Encode": lambda text: base64.b64encode(text.encode()).decode(),
    "States.Base64Decode": lambda text: base64.b64decode(text).decode(),
    "States.Hash": lambda value, name: hashlib.new(_HASHES[name], _text(value).encode())
    .hexdigest(),
    "States.JsonMerge": _merge,
    "States.MathRandom": lambda start, end, *seed: random.Random(*seed).randint(start, end - 1),
    "States.MathAdd": lambda left, right: left + right,
    "States.StringSplit": lambda text, separators: [
        part for part in _split(text, separators) if part
    ],
    "States.UUID": lambda: str(uuid.uuid4()),
}


def _split(text: str, separators: str) -> list[str]:
    parts = [text]
    for separator in separators:
        parts = [piece for part in parts for piece in part.split(separator)]
    return parts


class _Intrinsic:
    """A recursive-descent reader of one intrinsic function call: `States.Name(arg, ...)`
    where an argument is a quoted string ('...' with \\' escapes), a number, true, false,
    null, a path, or another call."""

    def __init__(self, text: str, data: Any, context: Any, field: str) -> None:
        self._text = text
        self._at = 0
        self._data = data
        self._context = context
        self._field = field

    def call(self) -> Any:
        try:
            value = self._call()
            self._skip_space()
            if self._at != len(self._text):
                raise ValueError(f"unexpected {self._text[self._at:]!r}")
        except MapRunError:
            raise
        except Exception as exc:
            raise MapRunError(
                "States.Runtime", f"{self._field or 'intrinsic function'}: {self._text}: {exc}"
            ) from None
        return value

    def _skip_space(self) -> None:
        while self._at < len(self._text) and self._text[self._at].isspace():
            self._at += 1

    def _call(self) -> Any:
        start = self._at
        while self._text[self._at] not in "(":
            self._at += 1
        name = self._text[start : self._at].strip()
        function = _FUNCTIONS.get(name)
        if function is None:
            raise ValueError(f"unknown intrinsic function {name}")
        self._at += 1  # (
        args: list[Any] = []
        self._skip_space()
        if self._text[self._at] == ")":
            self._at += 1
            return function()
        while True:
            args.append(self._argument())
            self._skip_space()
            char = self._text[self._at]
            self._at += 1
            if char == ")":
                return function(*args)
            if char != ",":
                raise ValueError(f"expected ',' or ')' at {self._text[self._at - 1:]!r}")

    def _argument(self) -> Any:
        self._skip_space()
        char = self._text[self._at]
        if char == "'":
            return self._string()
        if self._text.startswith("States.", self._at):
            return self._call()
        start = self._at
        depth = 0
        while self._at < len(self._text):
            char = self._text[self._at]
            if char in "[(":
                depth += 1
            elif char in "])":
                if depth == 0:
                    break
                depth -= 1
            elif char == "," and depth == 0:
                break
            self._at += 1
        token = self._text[start : self._at].strip()
        if token.startswith("$"):
            return resolve_path(token, self._data, context=self._context, field=self._field)
        return json.loads(token)  # a number, true, false or null

    def _string(self) -> str:
        self._at += 1  # opening quote
        out: list[str] = []
        while True:
            char = self._text[self._at]
            self._at += 1
            if char == "\\":
                escaped = self._text[self._at]
                self._at += 1
                # \{ and \} stay escaped for States.Format; \' and \\ are literal characters.
                out.append("\\" + escaped if escaped in "{}" else escaped)
            elif char == "'":
                return "".join(out)
            else:
                out.append(char)
