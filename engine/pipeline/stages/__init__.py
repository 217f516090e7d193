"""The built-in synchronous stages, one per module, and the standard order they run in."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from engine.core.carriers import PrefixTable
from engine.core.template import BoundTemplate
from engine.core.variants import Split
from engine.pipeline.runner import Stage
from engine.pipeline.stages.cap import Cap
from engine.pipeline.stages.count_parts import CountParts
from engine.pipeline.stages.dedupe import Dedupe, SharedClaims
from engine.pipeline.stages.hold_quiet_hours import HoldQuietHours
from engine.pipeline.stages.holdout import Holdout
from engine.pipeline.stages.links import Links
from engine.pipeline.stages.normalize import Normalize
from engine.pipeline.stages.render import Render
from engine.pipeline.stages.require_consent import RequireConsent
from engine.pipeline.stages.route import CarrierResolver, Route
from engine.pipeline.stages.same_content import SameContent
from engine.pipeline.stages.suppress_optouts import SuppressOptouts
from engine.state.optout import OptOutSet

__all__ = [
    "Cap",
    "CarrierResolver",
    "CountParts",
    "Dedupe",
    "HoldQuietHours",
    "Holdout",
    "Links",
    "Normalize",
    "Render",
    "RequireConsent",
    "Route",
    "SameContent",
    "SuppressOptouts",
    "standard_stages",
]


def standard_stages(
    template: BoundTemplate,
    table: PrefixTable,
    routable: Collection[str],
    resolvers: Sequence[CarrierResolver] = (),
    optouts: OptOutSet | None = None,
    caps: Cap | None = None,
    quiet_hours: HoldQuietHours | None = None,
    *,
    forbid_urls_in_fields: bool = False,
    same_content: SameContent | None = None,
    shard: tuple[int, int] | None = None,
    variants: Sequence[BoundTemplate] = (),
    split: Split | None = None,
    consent: RequireConsent | None = None,
    holdout: Holdout | None = None,
    links: Links | None = None,
    link_field: str = "",
    dedupe_claims: SharedClaims | None = None,
) -> list[Stage]:
    """normalize → suppress_optouts → require_consent → cap → route → links → render → count_parts
    → dedupe → same_content → holdout → hold_quiet_hours.

    ``suppress_optouts`` runs when an opt-out set is given (marketing campaigns),
    ``require_consent`` when the campaign requires a consent record (``policy.require_consent``), ``cap`` when
    the engine configures caps for the campaign's kind, ``hold_quiet_hours`` when the campaign
    has a send window (marketing, by default), ``holdout`` when the campaign keeps a share back
    (``[outcomes] holdout``: after every rule that refuses a row, so the holdout is a random share
    of those that would be sent, and before the send window, so a deferred row's choice is made
    once), ``links`` when the campaign has a tracked link (``[links]``: the link field, trusted by
    ``render``'s no-link-in-a-field rule, since it is the campaign's own). ``variants`` and
    ``split``: an A/B test's bound templates and who gets which (``render`` picks each row's).
    ``shard=(index, count)``: ``normalize`` keeps only that shard's numbers and rejects (a sharded
    send, :mod:`engine.run.shards`); ``dedupe_claims``: ``dedupe`` also claims numbers in a table
    the shards of a send on byte ranges share.

    ``dedupe`` comes after every stage that rejects a row: a number is used up by the first row
    that could be sent, so a number that cannot be sent is rejected with its reason on every row
    (not ``duplicate`` from its second on), and a row refused for its own data (an empty field, a
    text over the maximum) leaves the number to its next row. Opt-outs and caps are the number's,
    the same on every row, so they may come first.
    """
    return [
        Normalize(shard),
        *([SuppressOptouts(optouts)] if optouts is not None else []),
        *([consent] if consent is not None else []),
        *([caps] if caps is not None else []),
        Route(table, routable, resolvers),
        *([links] if links is not None else []),
        Render(
            template,
            forbid_urls=forbid_urls_in_fields,
            trusted=(link_field,) if links is not None else (),
            variants=variants,
            split=split,
            trusted_params=(link_field,) if links is not None and links.mode == "provider" else (),
        ),
        CountParts(template.template, [v.template for v in variants]),
        Dedupe(dedupe_claims),
        *([same_content] if same_content is not None else []),
        *([holdout] if holdout is not None else []),
        # Last: only messages that could go now are held, never rows that would be rejected.
        *([quiet_hours] if quiet_hours is not None else []),
    ]
