"""The built-in synchronous stages, one per module, and the standard order they run in."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from engine.carriers import PrefixTable
from engine.pipeline import Stage
from engine.stages.count_parts import CountParts
from engine.stages.dedupe import Dedupe
from engine.stages.normalize import Normalize
from engine.stages.render import Render
from engine.stages.route import CarrierResolver, Route
from engine.template import BoundTemplate

__all__ = ["CarrierResolver", "CountParts", "Dedupe", "Normalize", "Render", "Route", "standard_stages"]


def standard_stages(
    template: BoundTemplate,
    table: PrefixTable,
    routable: Collection[str],
    resolvers: Sequence[CarrierResolver] = (),
) -> list[Stage]:
    """normalize → dedupe → route → render → count_parts, as every blast runs them."""
    return [
        Normalize(),
        Dedupe(),
        Route(table, routable, resolvers),
        Render(template),
        CountParts(template.template),
    ]
