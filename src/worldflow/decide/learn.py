"""What the processor learns from decisions: ``decision.served`` is remembered on the person's
profile (its offer counts towards the offer's caps), and the first ``content.impression`` and
``content.interacted`` carrying its decision id count, once each, in the stats of the
placement, bandit arm and offer it served (table ``decision_stats``), which the bandit reads.

Attribution goes through the profile, so it is exact across restarts, merges and replay: an
impression of a decision the person was never served (a forged or a foreign id) counts
nowhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from worldflow.profiles import model
from worldflow.profiles.model import Profile, Served

if TYPE_CHECKING:
    from worldflow.decide.engine import Person

SERVED: Final = "decision.served"
IMPRESSION: Final = "content.impression"
INTERACTED: Final = "content.interacted"
EVENTS: Final = frozenset({SERVED, IMPRESSION, INTERACTED})
OFFER_CHANNEL: Final = "offer"  # the channel of served offers in ``Profile.sends``

StatKey = tuple[str, str, str, str]  # (workspace, placement, arm, offer)


def observe(profile: Profile, name: str, properties: dict[str, Any], at: int,
            stats: dict[StatKey, list[int]]) -> None:  # fmt: skip
    """One decision or content event of the person; ``stats`` gathers (served, impressions,
    interactions) increments for the commit."""
    ident = properties.get("decision_id")
    if not isinstance(ident, str):
        return
    if name == SERVED:
        offer = properties.get("variant")
        placement = properties.get("placement_id")
        if not isinstance(offer, str) or not isinstance(placement, str) or (
                ident in profile.decisions):  # fmt: skip
            return
        arm = properties.get("arm")
        served = Served(placement, arm if isinstance(arm, str) else "", offer, at)
        decisions = profile.decisions
        decisions[ident] = served
        if len(decisions) > model.MAX_DECISIONS:
            del decisions[min(decisions, key=lambda k: decisions[k].at)]
        profile.sends.append((at, OFFER_CHANNEL, offer))
        if len(profile.sends) > model.MAX_SENDS:
            del profile.sends[0]
        _add(stats, profile.workspace_id, served, 0)
        return
    served_ = profile.decisions.get(ident)
    if served_ is None:
        return
    if name == IMPRESSION and not served_.impressed:
        served_.impressed = True
        _add(stats, profile.workspace_id, served_, 1)
    elif name == INTERACTED and not served_.interacted:
        served_.interacted = True
        if not served_.impressed:  # acted on without an impression recorded: it was seen
            served_.impressed = True
            _add(stats, profile.workspace_id, served_, 1)
        _add(stats, profile.workspace_id, served_, 2)


def _add(stats: dict[StatKey, list[int]], workspace_id: str, served: Served, index: int) -> None:
    counts = stats.setdefault((workspace_id, served.placement, served.arm, served.offer),
                              [0, 0, 0])  # fmt: skip
    counts[index] += 1


def served_since(profile: Profile | Person, offer: str, since_ms: int) -> int:
    """How many times the offer was served to the person since then."""
    return sum(1 for at, channel, key in profile.sends
               if channel == OFFER_CHANNEL and key == offer and at >= since_ms)  # fmt: skip
