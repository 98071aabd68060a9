"""Deterministic order of route rules, and the conflicts that order resolves.

Rules for one destination apply highest precedence first. Two rules for the same destination with
the same precedence are a conflict Istio 0.2 left undefined; here the order is fixed (namespace,
then name, alphabetically: the earlier one is tried first) and the pair is reported by
``meshfed validate`` and ``/debug/configz`` so the operator can set precedences explicitly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import attrs

from meshfed.pilot.config.model import RouteRule


@attrs.frozen(slots=True)
class RuleConflict:
    destination: str
    precedence: int
    winner: str
    loser: str

    def __str__(self) -> str:
        return (
            f"{self.winner} and {self.loser} both route {self.destination} with precedence "
            f"{self.precedence}; {self.winner} is tried first (ordered by namespace/name)"
        )


def destination_key(rule: RouteRule) -> str:
    return rule.destination.candidates(rule.namespace)[0]


def ordered_rules(rules: Iterable[RouteRule]) -> tuple[RouteRule, ...]:
    return tuple(
        sorted(rules, key=lambda r: (destination_key(r), -r.precedence, r.namespace, r.name))
    )


def find_conflicts(rules: Iterable[RouteRule]) -> tuple[RuleConflict, ...]:
    conflicts = []
    ordered = ordered_rules(rules)
    for first, second in itertools.pairwise(ordered):
        same_destination = destination_key(first) == destination_key(second)
        if same_destination and first.precedence == second.precedence:
            conflicts.append(
                RuleConflict(destination_key(first), first.precedence, first.ref, second.ref)
            )
    return tuple(conflicts)
