"""The condition language: JSON Logic's official cases, JavaScript's corners, errors, ``reads``.

The official cases come from ``shared/conformance/jsonlogic/tests.json`` beside the repository;
when it is missing they skip locally and fail in CI. Where the ``panzi-json-logic`` reference
is installed, random rules from a subset on which it agrees with json-logic-js are checked
against it too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.conftest import need
from worldflow.segments.logic import (
    Evaluator,
    LogicError,
    Operation,
    compile_logic,
    reads,
    register_operation,
    to_number,
    to_string,
)

try:  # the reference implementation, when installed: pip install panzi-json-logic
    import json_logic
except ImportError:
    json_logic = None

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = REPO.parent / "shared" / "conformance" / "jsonlogic" / "tests.json"
OFFICIAL_CASES = 277


def same(actual: Any, expected: Any) -> bool:
    """Equal as JSON values: 1 == 1.0 (JSON has one number type), but True is not 1."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    if isinstance(actual, int | float) and isinstance(expected, int | float):
        return actual == expected or (math.isnan(actual) and math.isnan(expected))
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(map(same, actual, expected))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            same(actual[k], expected[k]) for k in actual
        )
    return type(actual) is type(expected) and actual == expected


def test_same_compares_as_json_does() -> None:
    assert same(1, 1.0) and same([1, {"a": 2.0}], [1.0, {"a": 2}]) and same(math.nan, math.nan)
    assert not same(True, 1) and not same(0, False) and not same([True], [1])
    assert not same(None, 0) and not same("1", 1) and not same([1], [1, 2])


def _official() -> list[Any]:
    if not OFFICIAL.is_file():
        return [pytest.param(None, None, None, id="official-file-missing")]
    cases, section = [], ""
    for entry in json.loads(OFFICIAL.read_text()):
        if isinstance(entry, str):
            section = entry.lstrip("# ").strip()
            continue
        rule, data, expected = entry
        text = json.dumps(rule, separators=(",", ":"))
        label = f"{len(cases) + 1:03d} {section[:24]}: {text[:60]}"
        cases.append(pytest.param(rule, data, expected, id=label))
    return cases


OFFICIAL_PARAMS = _official()


def test_official_file_has_every_case() -> None:
    need("the JSON Logic conformance file", OFFICIAL.is_file(), str(OFFICIAL))
    assert len(OFFICIAL_PARAMS) == OFFICIAL_CASES  # none dropped by the loader


@pytest.mark.parametrize(("rule", "data", "expected"), OFFICIAL_PARAMS)
def test_official(rule: Any, data: Any, expected: Any) -> None:
    need("the JSON Logic conformance file", OFFICIAL.is_file(), str(OFFICIAL))
    result = compile_logic(rule)(data)
    assert same(result, expected), f"{json.dumps(rule)} on {json.dumps(data)}: {result!r}"


# JavaScript's answers (json-logic-js 2.0.5 in Node) where Python's would differ
NAN, INF = math.nan, math.inf
CORNERS = [
    # == and === coerce as JavaScript does; arrays and objects are equal only to themselves
    ({"==": [None, 0]}, None, False),
    ({"==": [None, None]}, None, True),
    ({"==": [[], False]}, None, True),
    ({"==": [[1, 2], "1,2"]}, None, True),
    ({"==": [{}, {}]}, None, False),
    ({"==": [{"var": "a"}, {"var": "a"}]}, {"a": [1]}, True),
    ({"==": [True, "1"]}, None, True),
    ({"==": [" 12 ", 12]}, None, True),
    ({"==": ["", 0]}, None, True),
    ({"==": ["0x10", 16]}, None, True),
    ({"===": [1, 1.0]}, None, True),
    ({"===": [1, True]}, None, False),
    ({"===": [[1], [1]]}, None, False),
    ({"!==": [0, False]}, None, True),
    ({"==": [{"/": [0, 0]}, {"/": [0, 0]}]}, None, False),
    # an absent argument is undefined, not null
    ({"==": [None]}, None, True),
    ({"===": [None]}, None, False),
    ({"==": []}, None, True),
    ({"<": [1]}, None, False),
    ({"<": [1, 2, None]}, None, False),  # 2 < null is 2 < 0
    ({">": [3, 2, 5]}, None, True),  # > ignores a third argument
    # ordering: strings by code unit when both are strings, numbers otherwise
    ({"<": [None, 1]}, None, True),
    ({"<": ["a", None]}, None, False),
    ({"<": ["10", "9"]}, None, True),
    ({"<": ["10", 9]}, None, False),
    ({"<": ["abc", 1]}, None, False),
    ({">=": ["abc", "abc"]}, None, True),
    ({"<": [[2], 10]}, None, True),
    ({"<": ["\uffff", "\U0001f600"]}, None, False),  # UTF-16: a surrogate is below U+FFFF
    # arithmetic: + and * read with parseFloat, - / % with Number
    ({"+": ["1abc", 1]}, None, 2),
    ({"+": [None]}, None, NAN),
    ({"+": [" 2.5e1x"]}, None, 25),
    ({"+": []}, None, 0),
    ({"-": ["1abc", 1]}, None, NAN),
    ({"-": [None, 1]}, None, -1),
    ({"-": [[5], "2"]}, None, 3),
    ({"*": ["2"]}, None, "2"),  # reduce returns a lone argument untouched
    ({"*": [True, 2]}, None, NAN),
    ({"/": [1, 0]}, None, INF),
    ({"/": [-1, 0]}, None, -INF),
    ({"/": [0, 0]}, None, NAN),
    ({"/": [1, {"-": [0]}]}, None, -INF),  # -0 survives
    ({"%": [-5, 3]}, None, -2),
    ({"%": [5.5, 2]}, None, 1.5),
    ({"%": [5, 0]}, None, NAN),
    ({"+": [9007199254740992, 1]}, None, 9007199254740992),  # doubles stop at 2**53
    ({"max": []}, None, -INF),
    ({"min": []}, None, INF),
    ({"max": [1, "3", 2]}, None, 3),
    ({"max": [1, "x"]}, None, NAN),
    # truthiness: NaN and empty arrays are false, objects and "0" true
    ({"!": {"/": [0, 0]}}, None, True),
    ({"!!": [{}]}, None, True),
    ({"!!": ["0"]}, None, True),
    ({"!": []}, None, True),
    ({"and": []}, None, None),
    ({"or": [0, "", []]}, None, []),
    # strings: join leaves null out, numbers print as JavaScript prints them
    ({"cat": [None, 1.5, True, [1, [2, None]]]}, None, "1.5true1,2,"),
    (
        {"cat": [1e21, " ", 1e-7, " ", 0.1, " ", 100.0, " ", -0.0, " ", 2**60]},
        None,
        "1e+21 1e-7 0.1 100 0 1152921504606847000",
    ),
    ({"cat": [{}, {"/": [1, 0]}, {"/": [0, 0]}]}, None, "[object Object]InfinityNaN"),
    ({"substr": ["jsonlogic", -100]}, None, "jsonlogic"),
    ({"substr": ["jsonlogic", 2, 100]}, None, "onlogic"),
    ({"substr": ["jsonlogic", "2", "3"]}, None, "onl"),
    ({"substr": ["jsonlogic", 0, "-2"]}, None, ""),  # the length is added as a string
    ({"substr": [12345, 1, 2]}, None, "23"),
    ({"substr": []}, None, "undefined"),
    ({"substr": ["a\U0001f600b", 1, 2]}, None, "\U0001f600"),  # two UTF-16 units
    ({"in": ["a", "abc"]}, None, True),
    ({"in": ["", ""]}, None, False),
    ({"in": [1, [True, "1"]]}, None, False),
    ({"in": [1, [1.0]]}, None, True),
    ({"in": [True, [1, True]]}, None, True),
    ({"in": [None, [0, None]]}, None, True),
    ({"in": [1, {"var": "l"}]}, {"l": [True, 1.0]}, True),
    ({"in": [[1], [[1]]]}, None, False),
    ({"in": ["a", {"var": "o"}]}, {"o": {"a": 1}}, False),
    ({"in": [2, "123"]}, None, True),
    # var: own keys, canonical indexes, a present null is not missing
    ({"var": ["a", 5]}, {"a": None}, None),
    ({"var": ["a.b", 5]}, {"a": None}, 5),
    ({"var": "l.length"}, {"l": [1, 2, 3]}, 3),
    ({"var": "s.1"}, {"s": "abc"}, "b"),
    ({"var": "l.01"}, {"l": [1, 2]}, None),
    ({"var": "constructor"}, {}, None),
    ({"var": 1.5}, {"1": {"5": "x"}}, "x"),
    ({"var": "a."}, {"a": {"": 7}}, 7),
    ({"var": ["x", {"var": "y"}]}, {"y": 3}, 3),
    ({"var": {"cat": ["a", ".", "b"]}}, {"a": {"b": 4}}, 4),
    ({"var": [{"var": "k"}, "d"]}, {"k": None}, {"k": None}),
    ({"var": "a"}, "abc", None),
    ({"var": "a"}, 5, None),
    # missing and friends on odd data
    ({"missing": ["a", ""]}, {"a": ""}, ["a"]),
    ({"missing": [""]}, None, [""]),
    ({"missing_some": [1, {"var": "keys"}]}, {"keys": None}, []),  # json-logic-js throws
    ({"missing_some": [2, "ab"]}, {}, ["ab"]),  # a string's length counts its characters
    ({"missing_some": ["1", ["a", "b"]]}, {"b": 1}, []),
    # arrays: not-an-array sources are empty
    ({"all": [None, True]}, None, False),
    ({"all": ["abc", True]}, None, False),
    ({"none": [{"var": "x"}, True]}, {"x": 3}, True),
    ({"some": [[0, [], ""], {"var": ""}]}, None, False),
    ({"map": [[1, 2]]}, None, [None, None]),
    ({"filter": [[1, 0, 2], {"var": ""}]}, None, [1, 2]),
    (
        {"reduce": [[1, 2], {"+": [{"var": "accumulator"}, {"var": "current"}]}, {"var": "s"}]},
        {"s": 10},
        13,
    ),
    ({"reduce": [[1, 2], {"var": "current"}]}, None, 2),
    ({"merge": [[1], [[2]], None]}, None, [1, [2], None]),
    ({"if": [[], "a", {}, "b", "c"]}, None, "b"),
    ({"?:": [0]}, None, 0),
    ({"log": "x"}, None, "x"),
]


@pytest.mark.parametrize(("rule", "data", "expected"), CORNERS, ids=lambda v: json.dumps(v)[:50])
def test_javascript_corners(rule: Any, data: Any, expected: Any) -> None:
    result = compile_logic(rule)(data)
    assert same(result, expected), f"{rule} on {data}: {result!r}"


def test_integral_results_are_ints() -> None:
    assert type(compile_logic({"/": [4, 2]})(None)) is int
    assert type(compile_logic({"+": ["1", 1.5, 0.5]})(None)) is int
    assert type(compile_logic({"+": [2**53, 2]})(None)) is float  # beyond 2**53, as JavaScript


def test_coercion_helpers() -> None:
    assert [to_number(v) for v in (None, True, "", " 7 ", "1e3", "-Infinity", [4])] == [
        0,
        1,
        0,
        7,
        1000,
        -INF,
        4,
    ]
    assert all(math.isnan(to_number(v)) for v in ("1_000", "inf", "0x", {}, [1, 2], "1a"))
    assert [to_string(v) for v in (None, False, 3.0, 1e16, 1.5e-6, [None, "a"])] == [
        "null",
        "false",
        "3",
        "10000000000000000",
        "0.0000015",
        ",a",
    ]


def test_compiled_rule_does_not_see_later_edits() -> None:
    rule: dict[str, Any] = {"in": [{"var": "plan"}, ["pro", "team"]]}
    evaluate = compile_logic(rule)
    rule["in"][1].append("free")
    assert evaluate({"plan": "pro"}) is True and evaluate({"plan": "free"}) is False
    first = compile_logic([1, [2]])(None)
    first[1].append(3)
    assert compile_logic([1, [2]])(None) == [1, [2]]


# --- Errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"and": [True, {"foo": 1}]}, "$.and[1].foo: unknown operator 'foo'"),
        ({"if": [{"vra": "x"}, 1]}, "$.if[0].vra: unknown operator 'vra' (did you mean 'var'?)"),
        ({"!": {"==": [1, {"Math.max": [1]}]}}, '$["!"]["=="][1]["Math.max"]: unknown operator'),
        (
            {"or": [{"var": "a", "==": 1}]},
            "$.or[0]: an operation has one operator key, this object has 'var', '=='",
        ),
        ({"*": []}, "$[\"*\"]: '*' needs at least one argument"),
        ({"missing_some": [1]}, "$.missing_some: 'missing_some' needs two arguments"),
        ({"==": [{1, 2}, 1]}, '$["=="][0]: not a JSON value: set'),
        ({"cat": [(1, 2)]}, "$.cat[0]: not a JSON value: tuple"),
        ([{1: "x"}], "$[0]: an operator is a string, not int"),
    ],
)
def test_errors_name_the_path(rule: Any, message: str) -> None:
    with pytest.raises(LogicError) as caught:
        compile_logic(rule)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ValueError)


def test_error_path_prefix_and_parts() -> None:
    with pytest.raises(LogicError) as caught:
        compile_logic({"some": [{"var": "xs"}, {"nope": []}]}, path="segments[3].condition")
    assert caught.value.path == "segments[3].condition.some[1].nope"
    assert caught.value.problem == "unknown operator 'nope' (did you mean 'none'?)"


def test_nesting_is_bounded() -> None:
    rule: Any = True
    for _ in range(150):
        rule = {"!": [rule]}
    with pytest.raises(LogicError, match="nested more than 100 levels deep"):
        compile_logic(rule)
    rule = True
    for _ in range(100):  # the limit itself compiles, and evaluates within Python's recursion
        rule = {"!": [rule]}
    assert compile_logic(rule)(None) is True


# --- reads -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "paths"),
    [
        (True, set()),
        (
            {"and": [{"==": [{"var": "traits.plan"}, "pro"]}, {">": [{"var": ["stats.n", 0]}, 3]}]},
            {"traits.plan", "stats.n"},
        ),
        ({"var": ["a", {"var": "b"}]}, {"a", "b"}),
        ({"var": 1}, {"1"}),
        ({"var": ""}, {"*"}),
        ({"var": []}, {"*"}),
        ({"var": {"cat": ["traits.", {"var": "key"}]}}, {"*", "key"}),
        ({"some": [{"var": "items"}, {">": [{"var": "qty"}, {"var": "min"}]}]}, {"items"}),
        (
            {"reduce": [{"var": "xs"}, {"+": [{"var": "current"}, 1]}, {"var": "start"}]},
            {"xs", "start"},
        ),
        ({"missing": ["a", "b.c"]}, {"a", "b.c"}),
        ({"missing": [["a", "b"]]}, {"a", "b"}),
        (
            {"missing": {"merge": ["vin", {"if": [{"var": "financing"}, ["apr"], []]}]}},
            {"*", "financing"},
        ),
        ({"missing_some": [{"var": "n"}, ["a", "b"]]}, {"n", "a", "b"}),
        ({"missing_some": [1, {"var": "keys"}]}, {"*", "keys"}),
        ([{"var": "x"}, {"in": [{"var": "y"}, ["a"]]}], {"x", "y"}),
    ],
)
def test_reads(rule: Any, paths: set[str]) -> None:
    assert reads(rule) == paths


# --- Extension ---------------------------------------------------------------------------------


def _compile_clamp(op: Operation) -> Evaluator:
    """A test operator: the first argument clamped between two literal bounds."""
    if len(op.args) != 3 or not (op.is_literal(1) and op.is_literal(2)):
        raise op.error("'test_clamp' takes a value and two literal bounds")
    value, low, high = op.compile(0), to_number(op.args[1]), to_number(op.args[2])
    return lambda data: min(max(to_number(value(data)), low), high)


register_operation(
    "test_clamp", _compile_clamp, reads=lambda args: reads(args[:1]) | {"limits"}, replace=True
)


def test_registered_operation_compiles_like_a_builtin() -> None:
    rule = {"if": [{">": [{"test_clamp": [{"var": "n"}, 0, 10]}, 5]}, "high", "low"]}
    evaluate = compile_logic(rule)
    assert [evaluate({"n": n}) for n in (-3, 7, "40")] == ["low", "high", "high"]
    assert reads(rule) == {"n", "limits"}
    with pytest.raises(LogicError, match=r"^\$\.and\[0\]\.test_clamp: 'test_clamp' takes"):
        compile_logic({"and": [{"test_clamp": [1, {"var": "x"}, 2]}]})
    with pytest.raises(ValueError, match="already exists"):
        register_operation("==", _compile_clamp)


def test_boolean_operation_serves_as_a_condition() -> None:
    register_operation("test_yes", lambda op: lambda data: True, boolean=True, replace=True)
    assert compile_logic({"and": [{"test_yes": []}, {"!": {"test_yes": []}}]})(None) is False
    assert compile_logic({"or": [{"test_yes": []}, {"==": [1, 2]}]})(None) is True


# --- Properties --------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
BUILTINS = [
    "if",
    "?:",
    "and",
    "or",
    "!",
    "!!",
    "==",
    "===",
    "!=",
    "!==",
    "<",
    "<=",
    ">",
    ">=",
    "max",
    "min",
    "+",
    "-",
    "*",
    "/",
    "%",
    "in",
    "cat",
    "substr",
    "merge",
    "log",
    "var",
    "missing",
    "missing_some",
    "map",
    "filter",
    "reduce",
    "all",
    "none",
    "some",
]


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(BUILTINS),
    arity=st.integers(1, 3),
    data=JSON_VALUES | st.fixed_dictionaries(dict.fromkeys("abc", JSON_VALUES)),
)
def test_evaluation_never_raises(name: str, arity: int, data: Any) -> None:
    args = [{"var": key} for key in "abc"[: max(arity, 2 if name == "missing_some" else 1)]]
    result = compile_logic({name: args})(data)
    json.dumps(result)  # a JSON value (NaN and Infinity aside)


# A subset on which panzi-json-logic agrees with json-logic-js: no null or empty strings (so no
# substr) where it coerces them differently, no computed numbers or booleans turned into text
# (it prints -0, 0.1+0.2 and False its own way), no booleans against numbers under ===, and >
# with two arguments only.
NUMBERS = st.integers(-20, 20) | st.sampled_from([0.5, -1.5, 2.5, 0.25])
NUMERIC_TEXTS = st.sampled_from(["0", "1", "2.5", "-3", "10", "007"])
WORDS = st.sampled_from(["a", "b", "ab", "abc", "B", "zz", "0a", "1a", "true"])
DATA = st.fixed_dictionaries(
    {
        "n": NUMBERS,
        "m": NUMBERS,
        "t": NUMERIC_TEXTS,
        "s": WORDS,
        "b": st.booleans(),
        "z": st.none(),
        "l": st.lists(NUMBERS | NUMERIC_TEXTS | WORDS, max_size=4),
        "o": st.fixed_dictionaries({"n": NUMBERS, "s": WORDS}),
    }
)


def _var(*paths: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(paths).map(lambda path: {"var": path})


def _op(name: str, parts: st.SearchStrategy[Any], low: int, high: int) -> st.SearchStrategy[Any]:
    return st.lists(parts, min_size=low, max_size=high).map(lambda args: {name: args})


NUM_LEAF = NUMBERS | NUMERIC_TEXTS | _var("n", "m", "t", "o.n")
TEXT_LEAF = WORDS | NUMERIC_TEXTS | _var("s", "t", "o.s")
BOOL_LEAF = st.booleans() | _var("b")
SCALAR_LEAF = NUM_LEAF | TEXT_LEAF | BOOL_LEAF
OTHER_LEAF = _var("z", "l", "o", "l.0", "nope") | st.tuples(st.just("nope"), SCALAR_LEAF).map(
    lambda pair: {"var": list(pair)}
)

# Few leaves: panzi-json-logic keeps Python's exact integers where JavaScript rounds past 2**53
NUM = st.recursive(
    NUM_LEAF,
    lambda inner: _op("+", inner, 1, 3) | _op("-", inner, 1, 2) | _op("*", inner, 2, 3),
    max_leaves=4,
)
TEXT: st.SearchStrategy[Any] = st.deferred(
    lambda: (
        TEXT_LEAF
        | _op("cat", NUM_LEAF | TEXT_LEAF, 1, 3)
        | st.tuples(COND, TEXT, TEXT).map(lambda t: {"if": list(t)})
    )
)
OPERAND = NUM | TEXT | BOOL_LEAF
STRICT_PAIR = (
    st.tuples(NUM, NUM)
    | st.tuples(TEXT, TEXT)
    | st.tuples(BOOL_LEAF, BOOL_LEAF)
    | st.tuples(NUM, TEXT)
    | st.tuples(BOOL_LEAF, TEXT)
)
HAYSTACK = st.lists(NUMBERS | NUMERIC_TEXTS | WORDS, max_size=4) | _var("l", "s", "t") | WORDS
COND: st.SearchStrategy[Any] = st.deferred(
    lambda: (
        BOOL_LEAF
        | st.sampled_from(["==", "!="]).flatmap(lambda name: _op(name, OPERAND, 2, 2))
        | st.sampled_from(["===", "!=="]).flatmap(
            lambda name: STRICT_PAIR.map(lambda pair: {name: list(pair)})
        )
        | st.sampled_from(["<", "<="]).flatmap(lambda name: _op(name, OPERAND, 2, 3))
        | st.sampled_from([">", ">="]).flatmap(lambda name: _op(name, OPERAND, 2, 2))
        | st.sampled_from(["!", "!!"]).flatmap(lambda name: ANY.map(lambda a: {name: [a]}))
        | st.tuples(NUM_LEAF | TEXT_LEAF, HAYSTACK).map(lambda t: {"in": list(t)})
        | st.sampled_from(["and", "or"]).flatmap(lambda name: _op(name, COND, 1, 3))
    )
)
ANY: st.SearchStrategy[Any] = st.deferred(
    lambda: (
        COND
        | NUM
        | TEXT
        | OTHER_LEAF
        | st.tuples(TEXT, st.integers(-5, 5)).map(lambda t: {"substr": list(t)})
        | st.tuples(TEXT, st.integers(-5, 5), st.integers(-5, 5)).map(lambda t: {"substr": list(t)})
        | st.sampled_from(["and", "or"]).flatmap(lambda name: _op(name, ANY, 1, 3))
        | st.lists(ANY, min_size=0, max_size=5).map(lambda args: {"if": args})
    )
)


@pytest.mark.skipif(json_logic is None, reason="panzi-json-logic is not installed")
@settings(max_examples=500, deadline=None)
@given(rule=ANY, data=DATA)
def test_agrees_with_reference_implementation(rule: Any, data: dict[str, Any]) -> None:
    try:
        expected = json_logic.jsonLogic(rule, data)
    except Exception:  # the reference's own limits: not a question for us
        assume(False)
    result = compile_logic(rule)(data)
    assert same(result, expected), f"{json.dumps(rule)} on {json.dumps(data)}: {result!r}"
