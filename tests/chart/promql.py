"""Just enough PromQL reading for the dashboard tests: metric and label names of an expression.

Not a parser: syntax is promtool's job (test_dashboard.py runs `promtool check rules`). Here an
identifier is a metric name unless it is a function (followed by "("), a keyword, or inside a
label matcher, a range or a grouping clause, which are read separately.
"""

from __future__ import annotations

import re

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "atan2"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS = re.compile(r"\{([^}]*)\}")
RANGE = re.compile(r"\[[^\]]*\]")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")
# Grafana's template variables: $name, ${name}, ${name:format}, [[name]].
VARIABLE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\]")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables replaced by values (a name missing from values is an error)."""

    def sub(m: re.Match) -> str:
        name = m.group(0).strip("${}[]").split(":")[0]
        return values[name]

    return VARIABLE.sub(sub, expr)


def _strip_strings(expr: str) -> str:
    return STRING.sub('""', expr)


def label_names(expr: str) -> set[str]:
    """Label names in matchers and grouping clauses."""
    bare = _strip_strings(expr)
    names = set()
    for block in MATCHERS.findall(bare):
        names.update(label for label, _ in MATCHER_LABEL.findall(block))
    for _, labels in GROUPING.findall(bare):
        names.update(n.strip() for n in labels.split(",") if n.strip())
    return names


def metric_names(expr: str) -> set[str]:
    bare = _strip_strings(expr)
    bare = MATCHERS.sub(" ", bare)
    bare = RANGE.sub(" ", bare)
    bare = GROUPING.sub(" ", bare)
    names = set()
    for m in IDENT.finditer(bare):
        word = m.group(0)
        if word.lower() in KEYWORDS:
            continue
        if bare[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.start() > 0 and (bare[m.start() - 1].isdigit() or bare[m.start() - 1] == "."):
            continue  # the exponent or unit of a number, e.g. 1e3
        names.add(word)
    return names


def label_values_query(query: str) -> tuple[str, str]:
    """(selector, label) of Grafana's label_values(selector, label)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
    if not m:
        raise ValueError(f"not a label_values() query: {query!r}")
    return m.group(1), m.group(2)
