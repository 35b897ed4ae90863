"""JSON Logic, compiled: a rule becomes a tree of Python closures, built once.

The semantics are JSON Logic's as json-logic-js 2.0.5 implements them, JavaScript's coercions
included, so a condition means the same here as in a browser. Rules and data are JSON values
(``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``); other types in the data
behave as JavaScript objects would (truthy, not a number, ``"[object Object]"``).

Where Python and JavaScript differ, JavaScript wins:

- numbers are doubles: an integral result within ±2**53 comes back as ``int``, a larger one as
  ``float``, and NaN and ±Infinity as ``float`` (``max`` of nothing is ``-inf``);
- an argument that is not there is ``undefined``, not ``null``: ``{"==": [null]}`` is true,
  ``{"-": [1]}`` negates, ``{"<": [1, 2, null]}`` is a "between" test;
- arrays and objects are ``==``, ``===`` and ``in`` only when they are the same object;
- ``var`` reads the data's own keys, never JavaScript's prototype properties (``constructor``);
- strings are indexed, sliced and ordered by UTF-16 code unit.

Compiling rejects, with a :class:`LogicError` that names the place, what json-logic-js throws
on (unknown operators, ``*`` with nothing to multiply, ``missing_some`` without its two
arguments) and, stricter than json-logic-js, which passes them through as data, objects with
several keys, values that are not JSON, and rules nested deeper than :data:`MAX_DEPTH`.
Where json-logic-js would throw on odd data at run time (``missing_some`` of ``null``), the
evaluator returns the nearest sensible value instead: evaluation never raises.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "Evaluator",
    "LogicError",
    "Operation",
    "compile_logic",
    "reads",
    "register_operation",
    "to_number",
    "to_string",
    "truthy",
]

Evaluator = Callable[[Any], Any]
"""A compiled rule: the data in, the rule's value out."""

MAX_DEPTH: Final = 100
"""How deeply operations and arrays may nest: evaluation recurses once per level."""

_log = logging.getLogger(__name__)
_SAFE: Final = 2**53  # JavaScript's doubles hold every integer up to here, and no further
_NAN: Final = math.nan
_INF: Final = math.inf
_ABSENT: Final[Any] = object()  # a key that is not there (JavaScript's undefined)
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


class LogicError(ValueError):
    """A rule that does not compile; the message reads ``"<path>: <problem>"``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# --- JavaScript's coercions -----------------------------------------------------------------

# The white space Number() and parseFloat() skip: JavaScript's set, not str.strip()'s
_WS: Final = (
    "\t\n\v\f\r \xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_DECIMAL: Final = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_NON_DECIMAL: Final = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)")


def _number(x: int | float) -> int | float:
    """A JavaScript number as Python reads it best: integral values within ±2**53 as ``int``."""
    if isinstance(x, int):
        if -_SAFE <= x <= _SAFE:
            return x
        try:
            return float(x)  # rounds as JavaScript does
        except OverflowError:
            return _INF if x > 0 else -_INF
    # -0.0 stays a float: 1 / -0 is -Infinity
    if x.is_integer() and -_SAFE <= x <= _SAFE and (x or math.copysign(1.0, x) > 0):
        return int(x)
    return x


def _parse_number(text: str) -> int | float:
    """``Number(text)``: the whole string, trimmed, is a number, or it is NaN ("" is 0)."""
    s = text.strip(_WS)
    if len(s) < 16 and s.isascii() and s.isdigit():  # the common case, and within int()'s limit
        return _number(int(s))
    if not s:
        return 0
    if _DECIMAL.fullmatch(s):
        if s[-1] == "y":  # Infinity
            return -_INF if s[0] == "-" else _INF
        return _number(float(s))
    if _NON_DECIMAL.fullmatch(s):
        return _number(int(s, 0))
    return _NAN


def to_number(value: Any) -> int | float:
    """JavaScript's ``Number(value)``, the coercion of ``-``, ``/``, ``%``, ``<`` and ``==``."""
    t = type(value)
    if t is int:
        return value if -_SAFE <= value <= _SAFE else _number(value)
    if t is float:
        return value  # type: ignore[no-any-return]
    if value is None:
        return 0
    if t is bool:
        return 1 if value else 0
    if t is str:
        return _parse_number(value)
    if t is list:
        return _parse_number(_join(value))  # an array is read as its string
    return _NAN


def _parse_float(value: Any) -> int | float:
    """``parseFloat(value)``, the coercion of ``+`` and ``*``: the number its string starts with."""
    t = type(value)
    if t is int:
        return value if -_SAFE <= value <= _SAFE else _number(value)
    if t is float:
        return value  # type: ignore[no-any-return]
    text = (value if t is str else to_string(value)).lstrip(_WS)
    if len(text) < 16 and text.isascii() and text.isdigit():
        return _number(int(text))
    match = _DECIMAL.match(text)
    if match is None:
        return _NAN
    s = match.group()
    if s[-1] == "y":
        return -_INF if s[0] == "-" else _INF
    return _number(float(s))


def _number_text(x: int | float) -> str:
    """``Number.prototype.toString()``: shortest round-trip digits, JavaScript's layout."""
    if type(x) is int:
        if -_SAFE <= x <= _SAFE:
            return str(x)
        x = _number(x)
    if math.isnan(x):
        return "NaN"
    if x in (_INF, -_INF):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    mantissa, _, exponent = repr(abs(x)).partition("e")  # repr is shortest round-trip too
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    significant = digits.rstrip("0")
    k = len(significant)
    # the value is 0.<significant> × 10**n
    n = k + (int(exponent) if exponent else 0) - len(fraction) + len(digits) - k
    if k <= n <= 21:
        return sign + significant + "0" * (n - k)
    if 0 < n <= 21:
        return f"{sign}{significant[:n]}.{significant[n:]}"
    if -6 < n <= 0:
        return f"{sign}0.{'0' * -n}{significant}"
    power = f"e{'+' if n >= 1 else '-'}{abs(n - 1)}"
    if k == 1:
        return sign + significant + power
    return f"{sign}{significant[0]}.{significant[1:]}{power}"


def to_string(value: Any) -> str:
    """JavaScript's ``String(value)``, as ``cat``, ``substr`` and ``in`` on strings see values."""
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if t is int or t is float:
        return _number_text(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is list:
        return _join(value)
    return "[object Object]"


def _join(items: list[Any]) -> str:
    # Array.prototype.join: null (and undefined) items become the empty string
    return ",".join("" if item is None else to_string(item) for item in items)


def _primitive(value: Any) -> Any:
    """ToPrimitive: arrays and objects become strings, everything else is one already."""
    t = type(value)
    if t in _SCALARS:
        return value
    return _join(value) if t is list else "[object Object]"


def truthy(value: Any) -> bool:
    """JSON Logic's truthiness: JavaScript's, except that an empty array is false."""
    if value is True:
        return True
    if value is False or value is None:
        return False
    t = type(value)
    if t is str or t is list or t is int:
        return bool(value)
    if t is float:
        return bool(value) and not math.isnan(value)  # NaN is false
    return True  # objects, even empty ones


def _loose_equal(a: Any, b: Any) -> bool:
    """JavaScript's ``a == b``."""
    ta, tb = type(a), type(b)
    if ta is tb:
        return a == b if ta in _SCALARS else a is b
    if (ta is int or ta is float) and (tb is int or tb is float):
        return a == b  # type: ignore[no-any-return]
    if a is None or b is None:
        return False
    if ta is bool:
        return _loose_equal(int(a), b)
    if tb is bool:
        return _loose_equal(a, int(b))
    if ta not in _SCALARS:
        return tb in _SCALARS and _loose_equal(_primitive(a), b)
    if tb not in _SCALARS:
        return _loose_equal(a, _primitive(b))
    return to_number(a) == to_number(b)  # a number and a string


def _strict_equal(a: Any, b: Any) -> bool:
    """JavaScript's ``a === b``."""
    ta, tb = type(a), type(b)
    if ta is tb:
        return a == b if ta in _SCALARS else a is b
    return (ta is int or ta is float) and (tb is int or tb is float) and a == b


def _compare(a: Any, b: Any) -> int | None:
    """JavaScript's relational comparison: -1, 0 or 1, or None when a side is NaN."""
    a, b = _primitive(a), _primitive(b)
    if type(a) is str and type(b) is str:
        if not (a.isascii() and b.isascii()):
            # JavaScript orders UTF-16 code units, which puts astral characters elsewhere
            x, y = a.encode("utf-16-be", "surrogatepass"), b.encode("utf-16-be", "surrogatepass")
            return (x > y) - (x < y)
        return (a > b) - (a < b)
    m, n = to_number(a), to_number(b)
    if math.isnan(m) or math.isnan(n):
        return None
    return (m > n) - (m < n)


def _less(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return a < b  # type: ignore[no-any-return]
    order = _compare(a, b)
    return order is not None and order < 0


def _less_equal(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return a <= b  # type: ignore[no-any-return]
    order = _compare(a, b)
    return order is not None and order <= 0


def _greater(a: Any, b: Any) -> bool:
    return _less(b, a)


def _greater_equal(a: Any, b: Any) -> bool:
    return _less_equal(b, a)


def _utf16(text: str) -> bytes | None:
    """The UTF-16 code units of a text beyond the BMP; None when characters are code units."""
    if text.isascii() or max(text) <= "\uffff":
        return None
    return text.encode("utf-16-le", "surrogatepass")


def _length(text: str) -> int:
    units = _utf16(text)
    return len(text) if units is None else len(units) // 2


def _integer(value: Any) -> int | float:
    """ToIntegerOrInfinity: NaN is 0, fractions truncate toward zero, infinities stay."""
    x = to_number(value)
    if math.isnan(x):
        return 0
    return x if x in (_INF, -_INF) else int(x)


def _substr(source: Any, start: Any, length: Any = _ABSENT) -> str:
    """``String.prototype.substr``: a negative start counts from the end."""
    text = to_string(source)
    units = _utf16(text)
    size = len(text) if units is None else len(units) // 2
    first = _integer(start)
    first = 0 if first == -_INF else max(size + first, 0) if first < 0 else min(first, size)
    count = size if length is _ABSENT else min(max(_integer(length), 0), size)
    begin, end = int(first), int(min(first + count, size))
    if units is None:
        return text[begin:end]
    return units[2 * begin : 2 * end].decode("utf-16-le", "surrogatepass")


def _logic_substr(source: Any, start: Any, length: Any) -> str:
    """JSON Logic's ``substr``: a negative length stops that many characters before the end."""
    if length is not _ABSENT and _less(length, 0):
        if type(length) is not int and type(length) is not float:
            return ""  # JavaScript adds it to a length as a string: NaN, so nothing
        rest = _substr(source, start)
        return _substr(rest, 0, _length(rest) + length)
    return _substr(source, start, length)


# --- Data lookup ------------------------------------------------------------------------------

Step = tuple[str, int]  # the key for objects; the index for arrays, -1 when it is none


def _index(part: str) -> int:
    # Arrays answer only canonical decimal indexes: "1", never "01" or "+1"
    if len(part) < 16 and part.isascii() and part.isdigit() and (part == "0" or part[0] != "0"):
        return int(part)
    return -1


@lru_cache(maxsize=4096)
def _steps(path: str) -> tuple[Step, ...]:
    """A dotted ``var`` path as lookup steps."""
    return tuple((part, _index(part)) for part in path.split("."))


def _unit(text: str, index: int) -> Any:
    """``text[index]`` as in JavaScript: a UTF-16 code unit, or absent."""
    units = _utf16(text)
    if units is None:
        return text[index] if 0 <= index < len(text) else _ABSENT
    if 0 <= index < len(units) // 2:
        return units[2 * index : 2 * index + 2].decode("utf-16-le", "surrogatepass")
    return _ABSENT


def _key_steps(key: Any) -> tuple[Step, ...] | None:
    """The steps of a ``var`` key; None for the whole data (``""`` and ``null``)."""
    if key is None or (type(key) is str and not key):
        return None
    return _steps(to_string(key))


def _lookup(data: Any, steps: tuple[Step, ...], default: Any) -> Any:
    for key, index in steps:
        t = type(data)
        if t is dict:
            data = data.get(key, _ABSENT)
        elif t is list:
            if 0 <= index < len(data):
                data = data[index]
            elif key == "length":
                data = len(data)
            else:
                return default
        elif data is None:
            return default
        elif t is str:
            data = _length(data) if key == "length" else _unit(data, index)
        elif isinstance(data, Mapping):
            data = data.get(key, _ABSENT)
        else:
            return default  # numbers and booleans have no keys
        if data is _ABSENT:
            return default
    return data


def _missing(data: Any, targets: list[tuple[Any, tuple[Step, ...] | None]]) -> list[Any]:
    """The keys whose values are null, absent or the empty string."""
    out = []
    for key, steps in targets:
        value = data if steps is None else _lookup(data, steps, None)
        if value is None or (type(value) is str and not value):
            out.append(key)
    return out


def _targets(keys: list[Any]) -> list[tuple[Any, tuple[Step, ...] | None]]:
    # missing's keys: its arguments, or its first argument when that is an array
    if keys and type(keys[0]) is list:
        keys = keys[0]
    return [(key, _key_steps(key)) for key in keys]


# --- Compiling --------------------------------------------------------------------------------

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _member_path(path: str, name: str) -> str:
    if _IDENTIFIER.fullmatch(name):
        return f"{path}.{name}"
    return f"{path}[{json.dumps(name, ensure_ascii=False)}]"


def _constant(value: Any) -> Evaluator:
    return lambda data: value


def _scalar(value: Any) -> bool:
    return type(value) in _SCALARS


def _flat(value: Any) -> bool:
    """A literal needing no evaluation: a scalar or an array of scalars."""
    return type(value) in _SCALARS or (type(value) is list and all(map(_scalar, value)))


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a rule, as its compiler sees it.

    ``args`` are the raw arguments, with a lone one (``{"var": "x"}``) wrapped in a list as
    JSON Logic does; ``path`` locates the operation (``$.and[1].foo``) for error messages.
    """

    name: str
    args: list[Any]
    path: str
    lone: bool  # the argument was given bare, so it sits at ``path`` itself
    depth: int

    def arg_path(self, index: int) -> str:
        return self.path if self.lone else f"{self.path}[{index}]"

    def compile(self, index: int) -> Evaluator:
        """Argument ``index`` compiled; one that is not there evaluates to None."""
        if index >= len(self.args):
            return _constant(None)
        return _compile(self.args[index], self.arg_path(index), self.depth + 1)

    def compile_all(self) -> list[Evaluator]:
        return [self.compile(i) for i in range(len(self.args))]

    def test(self, index: int) -> Evaluator:
        """Argument ``index`` compiled to a Python bool: its JSON Logic truthiness."""
        if index >= len(self.args) or _scalar(self.args[index]):
            return _constant(truthy(self.args[index] if index < len(self.args) else None))
        evaluate = self.compile(index)
        if self.is_boolean(index):
            return evaluate
        return lambda data: truthy(evaluate(data))

    def is_literal(self, index: int) -> bool:
        """Whether argument ``index`` is there and a plain value (string, number, bool, null)."""
        return index < len(self.args) and _scalar(self.args[index])

    def is_boolean(self, index: int) -> bool:
        """Whether argument ``index`` always evaluates to a bool."""
        arg = self.args[index] if index < len(self.args) else None
        if type(arg) is bool:
            return True
        if type(arg) is dict and len(arg) == 1:
            spec = _OPERATIONS.get(next(iter(arg)))
            return spec is not None and spec.boolean
        return False

    def error(self, problem: str) -> LogicError:
        return LogicError(self.path, problem)


Compiler = Callable[[Operation], Evaluator]
Reads = Callable[[list[Any]], set[str]]


@dataclass(frozen=True, slots=True)
class _Spec:
    compiler: Compiler
    reads: Reads | None
    boolean: bool


_OPERATIONS: dict[str, _Spec] = {}


def register_operation(
    name: str,
    compiler: Compiler,
    *,
    reads: Reads | None = None,
    boolean: bool = False,
    replace: bool = False,
) -> None:
    """Add an operator to the language; it compiles exactly as the built-in ones do.

    ``compiler(op)`` runs once, when a rule using the operator is compiled: it gets the
    :class:`Operation`, compiles and checks the arguments (``op.compile(i)``, raising
    ``op.error("...")`` when they are malformed) and returns the evaluator, a function of the
    data that must not raise. For example::

        def compile_twice(op: Operation) -> Evaluator:
            value = op.compile(0)
            return lambda data: 2 * to_number(value(data))

        register_operation("twice", compile_twice)

    ``reads(args)`` gives the data paths the operation reads, from its raw arguments, for
    :func:`reads`; without it those are its arguments' paths. ``boolean=True`` promises that
    the evaluator returns a bool, which spares ``if``, ``and``, ``or`` and ``!`` a truthiness
    test. An existing operator is replaced only with ``replace=True``.
    """
    if name in _OPERATIONS and not replace:
        raise ValueError(f"operator {name!r} already exists")
    _OPERATIONS[name] = _Spec(compiler, reads, boolean)


def compile_logic(rule: Any, path: str = "$") -> Evaluator:
    """Compile a JSON Logic rule into a function of the data; :class:`LogicError` if malformed.

    ``path`` names the rule's place in a larger document, for error messages.
    """
    return _compile(rule, path, 0)


def _compile(rule: Any, path: str, depth: int) -> Evaluator:
    if depth > MAX_DEPTH:
        raise LogicError(path, f"nested more than {MAX_DEPTH} levels deep")
    t = type(rule)
    if t in _SCALARS:
        return _constant(rule)
    if t is list:
        if all(map(_scalar, rule)):
            items = list(rule)  # a copy: editing the rule later changes nothing
            return lambda data: items.copy()  # a new array each time, as in JavaScript
        parts = [_compile(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(rule)]
        return lambda data: [part(data) for part in parts]
    if t is dict:
        if len(rule) == 1:
            ((name, value),) = rule.items()
            return _compile_operation(name, value, path, depth)
        if not rule:
            return lambda data: {}
        keys = ", ".join(map(repr, rule))
        raise LogicError(path, f"an operation has one operator key, this object has {keys}")
    raise LogicError(path, f"not a JSON value: {t.__name__}")


def _compile_operation(name: Any, value: Any, path: str, depth: int) -> Evaluator:
    if type(name) is not str:
        raise LogicError(path, f"an operator is a string, not {type(name).__name__}")
    op_path = _member_path(path, name)
    spec = _OPERATIONS.get(name)
    if spec is None:
        near = difflib.get_close_matches(name, list(_OPERATIONS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise LogicError(op_path, f"unknown operator {name!r}{hint}")
    lone = type(value) is not list
    return spec.compiler(Operation(name, [value] if lone else list(value), op_path, lone, depth))


def reads(rule: Any) -> set[str]:
    """The data paths a rule reads, as its ``var``s (and ``missing``) spell them.

    ``"traits.plan"`` for ``{"var": "traits.plan"}``; ``"*"`` when the rule may read anything:
    the whole data (``{"var": ""}``) or a path computed at run time. Inside ``map``, ``filter``,
    ``reduce``, ``all``, ``none`` and ``some`` paths are relative to each element, so only the
    array's own path counts. Meant for rules that compile; it does not validate.
    """
    found: set[str] = set()
    _reads(rule, found)
    return found


def _reads(rule: Any, found: set[str]) -> None:
    if type(rule) is list:
        for item in rule:
            _reads(item, found)
    elif type(rule) is dict and len(rule) == 1:
        ((name, value),) = rule.items()
        args = value if type(value) is list else [value]
        spec = _OPERATIONS.get(name)
        if spec is not None and spec.reads is not None:
            found |= spec.reads(args)
        else:
            for arg in args:
                _reads(arg, found)


def _builtin(
    *names: str, boolean: bool = False, reads: Reads | None = None
) -> Callable[[Compiler], Compiler]:
    def add(compiler: Compiler) -> Compiler:
        for name in names:
            register_operation(name, compiler, reads=reads, boolean=boolean)
        return compiler

    return add


# --- Built-in operations ----------------------------------------------------------------------


@_builtin("if", "?:")
def _if(op: Operation) -> Evaluator:
    n = len(op.args)
    if n <= 1:
        return op.compile(0)  # the lone "else", or null
    if n == 3:
        test, then, otherwise = op.test(0), op.compile(1), op.compile(2)
        return lambda data: then(data) if test(data) else otherwise(data)
    branches = [(op.test(i), op.compile(i + 1)) for i in range(0, n - 1, 2)]
    fallback = op.compile(n - 1) if n % 2 else _constant(None)

    def choose(data: Any) -> Any:
        for test, then in branches:
            if test(data):
                return then(data)
        return fallback(data)

    return choose


@_builtin("and")
def _and(op: Operation) -> Evaluator:
    parts = op.compile_all()
    if len(parts) <= 1:
        return op.compile(0)  # no operand: JavaScript's undefined, null here
    if all(op.is_boolean(i) for i in range(len(parts))):
        return lambda data: all(part(data) for part in parts)

    def first_false(data: Any) -> Any:
        for part in parts:
            value = part(data)
            if not truthy(value):
                return value
        return value

    return first_false


@_builtin("or")
def _or(op: Operation) -> Evaluator:
    parts = op.compile_all()
    if len(parts) <= 1:
        return op.compile(0)
    if all(op.is_boolean(i) for i in range(len(parts))):
        return lambda data: any(part(data) for part in parts)

    def first_true(data: Any) -> Any:
        for part in parts:
            value = part(data)
            if truthy(value):
                return value
        return value

    return first_true


@_builtin("!", boolean=True)
def _not(op: Operation) -> Evaluator:
    test = op.test(0)
    return lambda data: not test(data)


@_builtin("!!", boolean=True)
def _truthy(op: Operation) -> Evaluator:
    return op.test(0)


def _binary(op: Operation, relation: Callable[[Any, Any], Any]) -> Evaluator:
    left, right = op.compile(0), op.compile(1)
    # A literal side is the common case ({"==": [{"var": "plan"}, "pro"]}): one call less
    if op.is_literal(1):
        constant = op.args[1]
        return lambda data: relation(left(data), constant)
    if op.is_literal(0):
        constant = op.args[0]
        return lambda data: relation(constant, right(data))
    return lambda data: relation(left(data), right(data))


def _equality(op: Operation, relation: Callable[[Any, Any], bool], strict: bool) -> Evaluator:
    if len(op.args) >= 2:
        return _binary(op, relation)
    if not op.args:
        return _constant(True)  # undefined equals undefined
    if strict:
        return _constant(False)  # no value is === undefined
    value = op.compile(0)
    return lambda data: value(data) is None  # null == undefined


@_builtin("==", boolean=True)
def _eq(op: Operation) -> Evaluator:
    return _equality(op, _loose_equal, strict=False)


@_builtin("===", boolean=True)
def _strict_eq(op: Operation) -> Evaluator:
    return _equality(op, _strict_equal, strict=True)


@_builtin("!=", boolean=True)
def _ne(op: Operation) -> Evaluator:
    equal = _equality(op, _loose_equal, strict=False)
    return lambda data: not equal(data)


@_builtin("!==", boolean=True)
def _strict_ne(op: Operation) -> Evaluator:
    equal = _equality(op, _strict_equal, strict=True)
    return lambda data: not equal(data)


def _ordering(op: Operation, relation: Callable[[Any, Any], bool], between: bool) -> Evaluator:
    if len(op.args) < 2:
        return _constant(False)  # nothing is ordered against undefined
    if len(op.args) == 2 or not between:
        return _binary(op, relation)  # > and >= ignore a third argument, as json-logic-js does
    low, middle, high = op.compile(0), op.compile(1), op.compile(2)

    def within(data: Any) -> bool:
        value = middle(data)
        return relation(low(data), value) and relation(value, high(data))

    return within


@_builtin("<", boolean=True)
def _lt(op: Operation) -> Evaluator:
    return _ordering(op, _less, between=True)


@_builtin("<=", boolean=True)
def _le(op: Operation) -> Evaluator:
    return _ordering(op, _less_equal, between=True)


@_builtin(">", boolean=True)
def _gt(op: Operation) -> Evaluator:
    return _ordering(op, _greater, between=False)


@_builtin(">=", boolean=True)
def _ge(op: Operation) -> Evaluator:
    return _ordering(op, _greater_equal, between=False)


@_builtin("max")
def _max(op: Operation) -> Evaluator:
    return _extreme(op, max, -_INF)


@_builtin("min")
def _min(op: Operation) -> Evaluator:
    return _extreme(op, min, _INF)


Pick = Callable[[list[int | float]], int | float]


def _extreme(op: Operation, pick: Pick, empty: float) -> Evaluator:
    parts = op.compile_all()
    if not parts:
        return _constant(empty)

    def evaluate(data: Any) -> int | float:
        numbers = [to_number(part(data)) for part in parts]
        if any(map(math.isnan, numbers)):
            return _NAN  # Math.max: NaN wins
        return pick(numbers)

    return evaluate


@_builtin("+")
def _plus(op: Operation) -> Evaluator:
    parts = op.compile_all()
    if not parts:
        return _constant(0)
    if len(parts) == 1:
        (only,) = parts
        return lambda data: _number(_parse_float(only(data)))  # unary + casts
    if len(parts) == 2:
        left, right = parts
        return lambda data: _number(_parse_float(left(data)) + _parse_float(right(data)))

    def total(data: Any) -> int | float:
        result: int | float = 0
        for part in parts:
            result = _number(result + _parse_float(part(data)))
        return result

    return total


@_builtin("*")
def _times(op: Operation) -> Evaluator:
    parts = op.compile_all()
    if not parts:
        raise op.error("'*' needs at least one argument")  # reduce of an empty array throws
    if len(parts) == 1:
        return parts[0]  # reduce hands a lone argument back untouched, even a string
    if len(parts) == 2:
        left, right = parts
        return lambda data: _number(_parse_float(left(data)) * _parse_float(right(data)))

    def product(data: Any) -> int | float:
        result = _parse_float(parts[0](data))
        for part in parts[1:]:
            result = _number(result * _parse_float(part(data)))
        return result

    return product


def _negate(value: Any) -> int | float:
    x = to_number(value)
    return _number(-x) if x or type(x) is float else -0.0  # -0 is a float


@_builtin("-")
def _minus(op: Operation) -> Evaluator:
    if not op.args:
        return _constant(_NAN)  # -undefined
    left = op.compile(0)
    if len(op.args) == 1:
        return lambda data: _negate(left(data))
    right = op.compile(1)
    return lambda data: _number(to_number(left(data)) - to_number(right(data)))


def _divide(a: Any, b: Any) -> int | float:
    x, y = to_number(a), to_number(b)
    if y == 0:
        if x == 0 or math.isnan(x):
            return _NAN
        return math.copysign(_INF, x) * math.copysign(1.0, y)
    return _number(x / y)


def _remainder(a: Any, b: Any) -> int | float:
    try:
        return _number(math.fmod(to_number(a), to_number(b)))  # fmod keeps the dividend's sign
    except ValueError:  # an infinite dividend or a zero divisor
        return _NAN


@_builtin("/")
def _div(op: Operation) -> Evaluator:
    return _binary(op, _divide) if len(op.args) >= 2 else _constant(_NAN)


@_builtin("%")
def _mod(op: Operation) -> Evaluator:
    return _binary(op, _remainder) if len(op.args) >= 2 else _constant(_NAN)


def _contains(haystack: Any, needle: Any) -> bool:
    t = type(haystack)
    if t is str:
        return bool(haystack) and to_string(needle) in haystack
    if t is list:
        if type(needle) is str:
            return needle in haystack  # str == is already strict equality
        return any(_strict_equal(needle, item) for item in haystack)
    return False


def _membership(items: list[Any]) -> Callable[[Any], bool]:
    """Strict-equality membership in a literal array, hashed once: ``in`` a long list is O(1)."""
    texts = frozenset(x for x in items if type(x) is str)
    numbers = frozenset(
        x for x in items if (type(x) is int or type(x) is float) and not math.isnan(x)
    )
    flags = frozenset(x for x in items if type(x) is bool)  # kept apart: True == 1 in Python
    has_null = None in items

    def member(value: Any) -> bool:
        t = type(value)
        if t is str:
            return value in texts
        if t is int or t is float:
            return value in numbers
        if t is bool:
            return value in flags
        return value is None and has_null

    return member


@_builtin("in", boolean=True)
def _in(op: Operation) -> Evaluator:
    if len(op.args) < 2:
        return _constant(False)
    needle, haystack = op.compile(0), op.args[1]
    if type(haystack) is list and all(map(_scalar, haystack)):
        member = _membership(haystack)
        return lambda data: member(needle(data))
    if type(haystack) is str:
        if not haystack:
            return _constant(False)  # the empty string is falsy: json-logic-js stops there
        return lambda data: to_string(needle(data)) in haystack
    within = op.compile(1)
    return lambda data: _contains(within(data), needle(data))


def _piece(value: Any) -> str:
    return "" if value is None else to_string(value)  # join leaves null out


@_builtin("cat")
def _cat(op: Operation) -> Evaluator:
    parts = op.compile_all()
    if len(parts) == 1:
        (only,) = parts
        return lambda data: _piece(only(data))
    return lambda data: "".join([_piece(part(data)) for part in parts])


@_builtin("substr")
def _substring(op: Operation) -> Evaluator:
    # String(undefined) is "undefined"; an absent length runs to the end
    source = op.compile(0) if op.args else _constant("undefined")
    start = op.compile(1)
    length = op.compile(2) if len(op.args) > 2 else _constant(_ABSENT)
    return lambda data: _logic_substr(source(data), start(data), length(data))


@_builtin("merge")
def _merge(op: Operation) -> Evaluator:
    parts = op.compile_all()

    def merge(data: Any) -> list[Any]:
        out: list[Any] = []
        for part in parts:
            value = part(data)
            if type(value) is list:
                out.extend(value)
            else:
                out.append(value)
        return out

    return merge


@_builtin("log")
def _log_value(op: Operation) -> Evaluator:
    value = op.compile(0)

    def log(data: Any) -> Any:
        result = value(data)
        _log.info("json logic log: %r", result)
        return result

    return log


def _var_reads(args: list[Any]) -> set[str]:
    key = args[0] if args else None
    found = set().union(*map(reads, args[1:]))  # the default
    if _flat(key):
        steps = _key_steps(key)
        found.add("*" if steps is None else to_string(key))
    else:
        found |= {"*"} | reads(key)
    return found


def _var_lookup(op: Operation, key: Any, default: Any) -> Evaluator:
    if not _flat(key):
        path = op.compile(0)

        def computed(data: Any) -> Any:
            steps = _key_steps(path(data))
            return data if steps is None else _lookup(data, steps, default)

        return computed
    steps = _key_steps(key)
    if steps is None:
        return lambda data: data
    if len(steps) == 1:
        ((name, _),) = steps

        def one(data: Any) -> Any:
            if type(data) is dict:
                return data.get(name, default)
            return _lookup(data, steps, default)

        return one
    if len(steps) == 2:
        (outer, _), (inner, _) = steps

        def two(data: Any) -> Any:
            if type(data) is dict:
                nested = data.get(outer)
                if type(nested) is dict:
                    return nested.get(inner, default)
            return _lookup(data, steps, default)

        return two
    return lambda data: _lookup(data, steps, default)


@_builtin("var", reads=_var_reads)
def _var(op: Operation) -> Evaluator:
    key = op.args[0] if op.args else None
    if len(op.args) < 2 or op.is_literal(1):
        return _var_lookup(op, key, op.args[1] if len(op.args) > 1 else None)
    # A computed default: evaluated only when the key is not found
    lookup, default = _var_lookup(op, key, _ABSENT), op.compile(1)

    def var(data: Any) -> Any:
        value = lookup(data)
        return default(data) if value is _ABSENT else value

    return var


def _static_keys(args: list[Any]) -> list[Any] | None:
    """The keys ``missing`` checks when they are literals; None when they are computed."""
    if args and type(args[0]) is list and all(map(_scalar, args[0])):
        return list(args[0])
    return list(args) if all(map(_scalar, args)) else None


def _keys_reads(keys: list[Any] | None, args: list[Any]) -> set[str]:
    found = set().union(*map(reads, args))
    if keys is None:
        return found | {"*"}
    return found | {"*" if _key_steps(key) is None else to_string(key) for key in keys}


def _missing_reads(args: list[Any]) -> set[str]:
    return _keys_reads(_static_keys(args), args)


@_builtin("missing", reads=_missing_reads)
def _missing_op(op: Operation) -> Evaluator:
    parts = op.compile_all()
    keys = _static_keys(op.args)
    if keys is not None:
        targets = _targets(keys)
        return lambda data: _missing(data, targets)
    return lambda data: _missing(data, _targets([part(data) for part in parts]))


def _missing_some_reads(args: list[Any]) -> set[str]:
    options = args[1:2]
    return reads(args[:1]) | _keys_reads(_static_keys(options), options)


@_builtin("missing_some", reads=_missing_some_reads)
def _missing_some(op: Operation) -> Evaluator:
    if len(op.args) < 2:
        raise op.error("'missing_some' needs two arguments: how many keys, and the keys")
    need, options = op.compile(0), op.compile(1)
    keys = _static_keys(op.args[1:2])
    fixed = None if keys is None else _targets(keys)

    def evaluate(data: Any) -> list[Any]:
        wanted = options(data)
        if fixed is None:
            absent = _missing(data, _targets(wanted if type(wanted) is list else [wanted]))
        else:
            absent = _missing(data, fixed)
        if type(wanted) is list:
            size = len(wanted)
        elif type(wanted) is str:
            size = _length(wanted)
        else:
            return absent  # no length: JavaScript compares NaN (or throws, for null)
        return [] if _greater_equal(size - len(absent), need(data)) else absent

    return evaluate


def _scoped_reads(args: list[Any]) -> set[str]:
    # The logic runs on each element: its paths are the element's, covered by the array's path
    return reads(args[:1]) | reads(args[2:3])  # reduce's initial value reads the data too


@_builtin("map", reads=_scoped_reads)
def _map(op: Operation) -> Evaluator:
    items, logic = op.compile(0), op.compile(1)

    def map_(data: Any) -> list[Any]:
        values = items(data)
        return [logic(value) for value in values] if type(values) is list else []

    return map_


@_builtin("filter", reads=_scoped_reads)
def _filter(op: Operation) -> Evaluator:
    items, test = op.compile(0), op.test(1)

    def filter_(data: Any) -> list[Any]:
        values = items(data)
        return [value for value in values if test(value)] if type(values) is list else []

    return filter_


@_builtin("reduce", reads=_scoped_reads)
def _reduce(op: Operation) -> Evaluator:
    items, logic, initial = op.compile(0), op.compile(1), op.compile(2)

    def reduce_(data: Any) -> Any:
        accumulator, values = initial(data), items(data)
        if type(values) is not list:
            return accumulator
        for current in values:
            accumulator = logic({"current": current, "accumulator": accumulator})
        return accumulator

    return reduce_


@_builtin("all", boolean=True, reads=_scoped_reads)
def _all(op: Operation) -> Evaluator:
    items, test = op.compile(0), op.test(1)

    def all_(data: Any) -> bool:
        values = items(data)
        if type(values) is not list or not values:
            return False  # all of nothing is false in JSON Logic
        return all(test(value) for value in values)

    return all_


@_builtin("none", boolean=True, reads=_scoped_reads)
def _none(op: Operation) -> Evaluator:
    items, test = op.compile(0), op.test(1)

    def none_(data: Any) -> bool:
        values = items(data)
        return type(values) is not list or not any(test(value) for value in values)

    return none_


@_builtin("some", boolean=True, reads=_scoped_reads)
def _some(op: Operation) -> Evaluator:
    items, test = op.compile(0), op.test(1)

    def some_(data: Any) -> bool:
        values = items(data)
        return type(values) is list and any(test(value) for value in values)

    return some_
