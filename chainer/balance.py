"""What the account can pay for, asked before spending (GET /account/costs, kling-api.md §10).

A run that the account's resource packs cannot cover stops half-way at code 1102, in the
middle of the night, with part of a batch paid for. So `chainer run` (and `chainer plan`,
with credentials set) compares the plan's estimate with the units left in the online
video packs, and warns of a pack the run depends on that expires before the run's
expected end. Proxies bill their own credit and offer no such endpoint: "not available".
The remaining quantity can lag real spending by hours (§10), so this is a guard, not a
promise; the provider's 1102 during a run is still handled.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import errors, rules
from .plan import Plan
from .provider.client import KlingClient
from .provider.wire import ResourcePack
from .retry import read_backoff, retrying

#: Packs are listed by purchase time: look back this far (one client's 30-day window hid
#: two packs that then expired unnoticed).
WINDOW_DAYS = 400
#: How long the read keeps retrying a transient error (it is only a guard).
READ_DEADLINE_S = 30.0


@dataclass(frozen=True)
class Balance:
    """The account's video packs, or why they are not known."""

    #: False: the provider offers no account endpoint (proxies), or it could not be read.
    known: bool
    packs: list[ResourcePack] = field(default_factory=list)
    note: str = ""

    @property
    def spendable(self) -> list[ResourcePack]:
        return [p for p in self.packs if p.spendable and p.for_video]

    @property
    def units(self) -> float:
        """Units left in the online video packs."""
        return sum(p.remaining_quantity for p in self.spendable)

    def describe(self) -> str:
        """One line for people: what the account holds."""
        if not self.known:
            return f"Account balance: {self.note}"
        packs = self.spendable
        return (
            f"Account: {self.units:g} units left in {len(packs)} online video pack"
            f"{'s' if len(packs) != 1 else ''}"
            + "".join(f"; {_name(p)}: {p.remaining_quantity:g} until {day(p.invalid_time)}" for p in packs)
        )


async def fetch(client: KlingClient) -> Balance:
    """The account's packs (a free read), or a Balance that says why they are not known."""
    if not client.config.account_costs:
        return Balance(False, note=f"not available ({client.config.name} bills its own credit)")
    now = int(time.time() * 1000)
    try:
        costs = await retrying(
            lambda: client.account_costs(start_ms=now - WINDOW_DAYS * 86_400_000, end_ms=now),
            # an unreachable provider is not waited for here: the first create says so, at length
            on=lambda exc: False if isinstance(exc, errors.RequestNotSent) else read_backoff(exc),
            deadline_s=READ_DEADLINE_S,
        )
    except errors.ProviderError as exc:
        return Balance(False, note=f"could not be read ({exc}); going on without it")
    return Balance(True, costs.resource_pack_subscribe_infos)


def expected_seconds(plans: Sequence[Plan], *, concurrency: int, time_scale: float) -> float:
    """About how long the plans take: the longest chain, or all the work shared by the limit."""
    chains = [
        sum(rules.EXPECTED_SECONDS[s.kind] for s in p.steps if s.kind != "existing") * time_scale
        for p in plans
    ]
    return max(max(chains, default=0.0), sum(chains) / max(1, concurrency))


def assess(balance: Balance, estimate: float, *, ends_at: dt.datetime) -> tuple[str | None, list[str]]:
    """(why the run cannot be covered, or None; warnings) for a run of about `estimate` units."""
    if not balance.known:
        return None, []
    warnings = [
        f"resource pack {_name(p)} ({p.remaining_quantity:g} units) expires "
        f"{day(p.invalid_time)}, before this run is expected to end ({ends_at:%Y-%m-%d %H:%M %Z})"
        for p in balance.spendable
        if p.invalid_time is not None and p.invalid_time / 1000 < ends_at.timestamp()
    ]
    if estimate <= balance.units + 1e-9:
        return None, warnings
    return (
        f"this run needs about {estimate:g} units, but the account's online video packs hold "
        f"{balance.units:g} (short by {estimate - balance.units:g}): it would stop half-way when the "
        "provider refuses a create (code 1102)",
        warnings,
    )


def _name(pack: ResourcePack) -> str:
    return pack.resource_pack_name or pack.resource_pack_id or "(unnamed)"


def day(ms: int | None) -> str:
    if ms is None:
        return "(no expiry given)"
    return dt.datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M %Z")
