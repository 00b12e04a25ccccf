"""A credit budget for a whole run: `--max-units` over every chain of the batch.

A storyboard's own `max_units` caps its chain; the run's budget caps the batch. Both are
checked before a step's intent is committed, so a refused step has sent nothing. Units
counted are what the provider reported for every attempt of the run's chains (also what
they spent before an interruption: a crash-and-resume loop cannot spend past it), plus
the estimate of every task still in flight, whose charge is not reported yet.
"""

from __future__ import annotations

from .errors import BudgetExceeded
from .journal import Journal
from .plan import Plan

#: States of a step whose task may exist and be charged, with no units reported yet.
IN_FLIGHT = ("submit_intent", "submit_unknown", "submitted", "succeeded")


class RunBudget:
    """The units a run may spend across its chains; `check` before every create."""

    def __init__(self, limit: float, journal: Journal):
        self.limit = limit
        self.journal = journal
        #: chain -> step -> estimated units, for the chains of this run
        self._estimates: dict[str, dict[int, float]] = {}

    def add(self, plan: Plan) -> None:
        """Count `plan`'s chain as part of this run."""
        self._estimates[plan.chain] = {s.index: s.units for s in plan.steps}

    def committed(self) -> float:
        """Units spent by the run's chains, plus estimates for their tasks in flight."""
        total = 0.0
        for chain, estimates in self._estimates.items():
            if self.journal.chain(chain) is None:
                continue
            total += self.journal.units(chain)
            for row in self.journal.steps(chain):
                if row.state in IN_FLIGHT and row.units is None:
                    total += estimates.get(row.idx, 0.0)
        return total

    def check(self, chain: str, step: str, estimate: float) -> None:
        """Refuse `step` of `chain` (BudgetExceeded) if it could take the run past the budget."""
        committed = self.committed()
        if committed + estimate > self.limit + 1e-9:
            raise BudgetExceeded(
                f"chain {chain!r}: the run's chains have spent or committed {committed:g} units; "
                f"{step} would cost about {estimate:g} more, past the run's budget of {self.limit:g} "
                "(--max-units). Nothing was submitted; run again with a larger --max-units to continue"
            )


def remaining_units(plan: Plan, journal: Journal) -> float:
    """Estimated units `plan` may still spend: its steps not yet made (all if it never ran:
    a chain the journal does not have has no steps there)."""
    made = {r.idx for r in journal.steps(plan.chain) if r.state in ("downloaded", "succeeded", "skipped")}
    return sum(s.units for s in plan.steps if s.index not in made and s.kind != "existing")
