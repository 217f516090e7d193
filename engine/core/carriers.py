"""Route Chinese mobile numbers to their carrier from the versioned prefix table shipped as data."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Final, Literal

import msgspec

from engine.core.errors import ConfigError
from engine.core.messages import RejectReason

__all__ = [
    "CARRIERS",
    "CARRIER_NAMES",
    "DOMESTIC_CARRIERS",
    "INTL",
    "PrefixInfo",
    "PrefixTable",
    "default_prefix_table",
    "load_prefix_table",
]

DOMESTIC_CARRIERS: Final = ("cm", "cu", "ct", "cbn")
INTL: Final = "intl"
CARRIERS: Final = (*DOMESTIC_CARRIERS, INTL)
CARRIER_NAMES: Final[Mapping[str, str]] = {
    "cm": "China Mobile 中国移动",
    "cu": "China Unicom 中国联通",
    "ct": "China Telecom 中国电信",
    "cbn": "China Broadnet 中国广电",
    "intl": "International",
}

Kind = Literal["mobile", "data", "vno", "satellite", "special"]
_SENDABLE: Final = frozenset({"mobile", "data", "vno"})
_KIND_REASON: Final[Mapping[str, RejectReason]] = {
    "satellite": RejectReason.SATELLITE_NUMBER,
    "special": RejectReason.SPECIAL_NUMBER,
}


class _Range(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    kind: Kind
    prefixes: list[str]
    source: str
    carrier: Literal["cm", "cu", "ct", "cbn", ""] = ""


class _TableFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    version: str
    updated: str
    ranges: list[_Range]


class PrefixInfo(msgspec.Struct, frozen=True):
    """What the table says about one prefix."""

    prefix: str
    carrier: str
    kind: str
    source: str

    @property
    def sendable(self) -> bool:
        """Whether numbers in this range can receive SMS."""
        return self.kind in _SENDABLE

    @property
    def vno(self) -> bool:
        """Whether the range belongs to a virtual operator (routed to its host carrier)."""
        return self.kind == "vno"


class PrefixTable:
    """Longest-prefix lookup over 11-digit Chinese mobile numbers, flattened to 5-digit keys.

    ``route`` maps every sendable 5-digit prefix to its carrier code, so the hot path is one slice
    and one dict lookup per number; ``vno`` holds the 5-digit prefixes of virtual operators.
    """

    def __init__(self, version: str, updated: str, infos: Mapping[str, PrefixInfo]) -> None:
        self.version = version
        self.updated = updated
        self._infos = dict(infos)
        self._five: dict[str, PrefixInfo | None] = {}
        for n in range(10000, 20000):
            key = str(n)
            self._five[key] = next((self._infos[key[:k]] for k in (5, 4, 3) if key[:k] in self._infos), None)
        self.route: Final[dict[str, str]] = {
            k: info.carrier for k, info in self._five.items() if info is not None and info.sendable
        }
        self.vno: Final[frozenset[str]] = frozenset(
            k for k, info in self._five.items() if info is not None and info.vno
        )

    def lookup(self, national: str) -> PrefixInfo | None:
        """The table row for an 11-digit national number, or None if its prefix is unallocated."""
        return self._five.get(national[:5])

    def reject_reason(self, national: str) -> tuple[RejectReason, str]:
        """Why a number whose prefix is not in :attr:`route` cannot be sent, with detail."""
        info = self.lookup(national)
        if info is None:
            return RejectReason.UNALLOCATED_PREFIX, f"prefix {national[:3]} is not a mobile range"
        return _KIND_REASON.get(info.kind, RejectReason.INVALID_NUMBER), (
            f"prefix {info.prefix} is a {info.kind} range"
        )


def load_prefix_table(path: Path | None = None) -> PrefixTable:
    """Load and check a prefix table file (the shipped one when ``path`` is None)."""
    if path is None:
        data = resources.files("engine.core").joinpath("data/cn_prefixes.toml").read_bytes()
        name = "engine/core/data/cn_prefixes.toml"
    else:
        data, name = path.read_bytes(), str(path)
    try:
        table = msgspec.toml.decode(data, type=_TableFile)
    except (msgspec.ValidationError, msgspec.DecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(name, "", str(exc)) from exc
    infos: dict[str, PrefixInfo] = {}
    for i, row in enumerate(table.ranges):
        where = f"ranges[{i}]"
        if row.kind in _SENDABLE and not row.carrier:
            raise ConfigError(name, where, f"a {row.kind} range needs a carrier")
        for p in row.prefixes:
            if not (p.isdigit() and 3 <= len(p) <= 5 and p[0] == "1"):
                raise ConfigError(name, where, f"prefix {p!r} must be 3-5 digits starting with 1")
            if p in infos:
                raise ConfigError(name, where, f"prefix {p} is listed twice")
            infos[p] = PrefixInfo(p, row.carrier, row.kind, row.source)
    return PrefixTable(table.version, table.updated, infos)


@lru_cache(maxsize=1)
def default_prefix_table() -> PrefixTable:
    """The shipped table, loaded once per process."""
    return load_prefix_table()
