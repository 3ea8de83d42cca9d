"""Slurm's ``--constraint`` over node features, for a job on one node: which nodes would Slurm
start it on. The placement pins a job only there (a pin elsewhere would only wait).

Slurm's syntax: feature names joined by ``&`` (AND) and ``|`` (OR), evaluated left to right as
Slurm evaluates them (``a|b&c`` is ``(a|b)&c``, seen on each release), ``(...)`` to group. The
rest is left to Slurm (such a constraint narrows nothing here): the multi-node forms, ``[...]``
(matching OR) and node counts (``ib*2``), which ``sbatch --test-only -w NODE`` on 22.05 takes on
a node with neither feature, and ``!`` (NOT, from 23.02), which 26.05 takes on no node at all.
``tests/e2e/test_constraints.py`` checks this reading against Slurm's own on every release.
"""
from __future__ import annotations

import re

_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z0-9_.:=+-]+)|(?P<op>[&|,!()\[\]])|(?P<count>\*\d+))")


class ConstraintError(ValueError):
    pass


def satisfies(expression: str, features: frozenset[str]) -> bool:
    """Whether a node with ``features`` meets ``expression`` (empty: any node does)."""
    tokens = _tokens(expression)
    if not tokens:
        return True
    value, rest = _sequence(tokens, features)
    if rest:
        raise ConstraintError(f"unexpected {rest[0]!r} in constraint {expression!r}")
    return value


def _tokens(expression: str) -> list[str]:
    tokens, position = [], 0
    text = expression.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ConstraintError(f"cannot read constraint {expression!r} at {text[position:]!r}")
        if match.group("count") or match.group("op") in ("[", "]", "!"):
            raise ConstraintError(f"constraint {expression!r} has [...], *N or !: left to Slurm")
        tokens.append(match.group("name") or match.group("op"))
        position = match.end()
    return tokens


def _sequence(tokens: list[str], features: frozenset[str]) -> tuple[bool, list[str]]:
    """Operands joined by ``&``/``,``/``|``, left to right, up to a closing bracket or the end."""
    value, tokens = _operand(tokens, features)
    while tokens and tokens[0] in ("&", ",", "|"):
        op, (right, tokens) = tokens[0], _operand(tokens[1:], features)
        value = (value or right) if op == "|" else (value and right)
    return value, tokens


def _operand(tokens: list[str], features: frozenset[str]) -> tuple[bool, list[str]]:
    if not tokens:
        raise ConstraintError("a constraint ends where a feature was expected")
    head, rest = tokens[0], tokens[1:]
    if head == "(":
        value, rest = _sequence(rest, features)
        if not rest or rest[0] != ")":
            raise ConstraintError("'(' without its ')'")
        return value, rest[1:]
    if head in ("&", ",", "|", ")"):
        raise ConstraintError(f"{head!r} where a feature was expected")
    return head in features, rest
