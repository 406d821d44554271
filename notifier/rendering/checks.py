"""What the sandbox would refuse, found in a template's syntax tree before the template is used (N6).

Rendering a template once with a sample booking sees only the branches the sample takes: a
forbidden expression inside `{% if booking.id == "x" %}` passes that rendering, and the
sandbox refuses it only when a real booking takes the branch (the customer gets nothing). These
checks read every node of the tree instead, whatever branch it is in, against the rules of
Jinja's `ImmutableSandboxedEnvironment` (jinja2.sandbox):

- no attribute or key that starts with `_`, nor the few internals without one (`mro`, a
  generator's or frame's fields): `x.__class__`, `x['__globals__']`, `x|attr('__class__')`,
  `map(attribute='__class__')`, and `'{0.__class__}'.format(x)`, whose fields are attributes too;
- no call of a method that changes data (`append`, `update`, `pop`, ...);
- every name and key spelled out: a computed key (`x[name]`), a computed `attr(...)` or a
  format string built at run time could be anything, so it cannot be checked and is refused.

Each problem names the template's line. The names a template may read are checked against the
documented context by `bundles.validate_bundle` (docs/templates.md).
"""

from __future__ import annotations

import string
from collections.abc import Iterator

from jinja2 import nodes

# attributes the sandbox refuses although they do not start with "_" (jinja2.sandbox's
# is_internal_attribute: a type's `mro`, generators', coroutines', frames' and tracebacks' fields)
INTERNAL_ATTRIBUTES = frozenset({
    "mro", "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_code", "ag_frame",
    "ag_await", "f_back", "f_builtins", "f_code", "f_globals", "f_locals", "tb_frame", "tb_next",
    "func_globals", "func_code"})
# methods the immutable sandbox refuses to call: they change a list, dict, set or deque
MUTATING_METHODS = frozenset({
    "append", "appendleft", "clear", "add", "discard", "difference_update", "extend", "extendleft", "insert",
    "intersection_update", "pop", "popitem", "popleft", "remove", "reverse", "rotate", "setdefault", "sort",
    "symmetric_difference_update", "update"})
# filters whose arguments name attributes to read (Jinja's make_attrgetter): positional index, keyword
ATTRIBUTE_ARGUMENTS = {"attr": (0, None), "map": (None, "attribute"), "selectattr": (0, None),
                       "rejectattr": (0, None), "groupby": (0, "attribute"), "sort": (None, "attribute"),
                       "sum": (None, "attribute"), "unique": (None, "attribute"), "min": (None, "attribute"),
                       "max": (None, "attribute"), "join": (None, "attribute")}


def refused(attribute: str) -> bool:
    return attribute.startswith("_") or attribute in INTERNAL_ATTRIBUTES


def sandbox_problems(tree: nodes.Node) -> Iterator[tuple[int, str]]:
    """(line, message) for every expression of `tree` the sandbox would refuse, in any branch."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Call)):
        if isinstance(node, nodes.Getattr):
            if refused(node.attr):
                yield node.lineno, f"'.{node.attr}': {_WHY_ATTRIBUTE}"
        elif isinstance(node, nodes.Getitem):
            yield from _subscript(node)
        elif isinstance(node, nodes.Filter):
            yield from _attribute_arguments(node)
        else:
            yield from _call(node)


_WHY_ATTRIBUTE = "the sandbox refuses attributes that start with '_' or reach Python's internals (N6)"


def _subscript(node: nodes.Getitem) -> Iterator[tuple[int, str]]:
    arg = node.arg
    if isinstance(arg, nodes.Const):
        if isinstance(arg.value, str) and refused(arg.value):
            yield node.lineno, f"'[{arg.value!r}]': {_WHY_ATTRIBUTE}"
    elif not isinstance(arg, nodes.Slice):
        yield node.lineno, "a computed key ('x[...]' with an expression) cannot be checked before use: write the key"


def _attribute_arguments(node: nodes.Filter) -> Iterator[tuple[int, str]]:
    where = ATTRIBUTE_ARGUMENTS.get(node.name)
    if where is None:
        return
    position, keyword = where
    given = []
    if position is not None and len(node.args) > position:
        given.append(node.args[position])
    given += [kw.value for kw in node.kwargs if kw.key == keyword]
    for value in given:
        if not (isinstance(value, nodes.Const) and isinstance(value.value, str | int)):
            yield node.lineno, f"'|{node.name}' with a computed attribute name cannot be checked before use"
        elif any(refused(part) for part in str(value.value).split(".")):
            yield node.lineno, f"'|{node.name}({value.value!r})': {_WHY_ATTRIBUTE}"


def _call(node: nodes.Call) -> Iterator[tuple[int, str]]:
    called = node.node
    if not isinstance(called, nodes.Getattr):
        return
    if called.attr in MUTATING_METHODS:
        yield node.lineno, f"'.{called.attr}(...)' changes data, which the sandbox refuses (N6)"
    elif called.attr in ("format", "format_map"):  # the sandbox formats with attribute checks: so do we
        template = called.node
        if not (isinstance(template, nodes.Const) and isinstance(template.value, str)):
            yield node.lineno, f"'.{called.attr}(...)' of a computed string cannot be checked before use"
            return
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template.value) if f]
        except ValueError as exc:
            yield node.lineno, f"'.{called.attr}(...)': not a format string ({exc})"
            return
        for field in fields:
            parts = field.replace("[", ".").replace("]", "").split(".")[1:]
            if any(refused(part) for part in parts):
                yield node.lineno, f"'.{called.attr}(...)' reads '{field}': {_WHY_ATTRIBUTE}"
