"""JSON Schemas of the engine and campaign files, generated from their msgspec types for editors.

``python -m engine.cli.schema`` writes ``config/schema/engine.schema.json`` and
``config/schema/campaign.schema.json``; a test fails when the committed files differ from what this
module generates, so they follow every change to :mod:`engine.core.config`. An editor with a TOML
language server (Taplo, VS Code's Even Better TOML) then completes and checks keys when a file
starts with ``#:schema ./schema/engine.schema.json`` (docs/configuration.md).

What msgspec's own schema lacks is added here: each key's description from the docstring under
its field; the settings of the built-in plugins, for ``[segment]`` by ``source`` and for
``[gateways.<name>.options]`` by ``plugin`` (``if``/``then``; a third-party plugin's keys stay
free, as its plugin checks them); TOML has no null, so ``X | None`` becomes ``X``.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import sys
import textwrap
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final

import msgspec

from engine.core.config import CampaignConfig, EngineConfig, SegmentConfig
from engine.core.plugin_host import PluginHost
from engine.core.registries import Registration
from engine.flows.config import FlowConfig

__all__ = [
    "BUILTIN_PLUGINS",
    "SCHEMA_DIR",
    "campaign_schema",
    "engine_schema",
    "flow_schema",
    "main",
    "render",
    "schemas",
]

DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
BUILTIN_PLUGINS: Final = ("source_file", "gateway_blackhole", "gateway_file", "gateway_http")
"""Entry-point names of the plugins that ship with Pigeon: the committed schemas describe these."""
SCHEMA_DIR: Final = Path("config/schema")
"""Where the schemas are committed, relative to the repository's root."""
_REF: Final = "#/$defs/{name}"


@cache
def _field_docs(cls: type) -> dict[str, str]:
    """Field name → the docstring written under the field in the class body (first paragraph)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = _plain(after.value.value)
    return docs


def _plain(doc: str) -> str:
    """A docstring as one paragraph of Markdown-ish text (reST double backticks to single)."""
    text = inspect.cleandoc(doc).split("\n\n")[0]
    return " ".join(text.split()).replace("``", "`")


def _structs(types: Iterable[Any]) -> dict[str, type]:
    """Every Struct class reachable from ``types``, by the name msgspec gives its component."""
    found: dict[str, type] = {}

    def walk(t: Any) -> None:
        ins = msgspec.inspect
        if isinstance(t, ins.StructType):
            if t.cls.__name__ in found:
                return
            found[t.cls.__name__] = t.cls
            for f in t.fields:
                walk(f.type)
        elif isinstance(t, ins.UnionType):
            for x in t.types:
                walk(x)
        elif isinstance(t, ins.DictType):
            walk(t.key_type)
            walk(t.value_type)
        elif isinstance(t, ins.ListType | ins.VarTupleType | ins.SetType | ins.FrozenSetType):
            walk(t.item_type)
        elif isinstance(t, ins.TupleType):
            for x in t.item_types:
                walk(x)

    for info in msgspec.inspect.multi_type_info(list(types)):
        walk(info)
    return found


def _no_null(node: Any) -> Any:
    """Drop JSON null from every ``anyOf`` (TOML cannot write it) and null defaults."""
    if isinstance(node, list):
        return [_no_null(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _no_null(v) for k, v in node.items()}
    if "anyOf" in out:
        kept = [x for x in out["anyOf"] if x != {"type": "null"}]
        if len(kept) == 1:
            del out["anyOf"]
            out = {**kept[0], **out}
        else:
            out["anyOf"] = kept
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


def _describe(defs: dict[str, Any], structs: dict[str, type]) -> None:
    """Give every property of every Struct component the docstring under its field."""
    for name, component in defs.items():
        cls = structs.get(name)
        if cls is None or component.get("type") != "object":
            continue
        docs: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if isinstance(klass, type) and issubclass(klass, msgspec.Struct) and klass is not msgspec.Struct:
                docs.update(_field_docs(klass))
        if component.get("description"):
            component["description"] = _plain(component["description"])
        for field, prop in component.get("properties", {}).items():
            if field in docs and "description" not in prop:
                prop["description"] = docs[field]


def _builtin(regs: Iterable[Registration[Any]], plugins: Sequence[str] | None) -> list[Registration[Any]]:
    return sorted((r for r in regs if plugins is None or r.plugin in plugins), key=lambda r: r.name)


def _generate(
    root: type[msgspec.Struct], plugin_types: Sequence[type[msgspec.Struct]]
) -> tuple[dict[str, Any], dict[str, type]]:
    (main_schema, *_), defs = msgspec.json.schema_components([root, *plugin_types], ref_template=_REF)
    structs = _structs([root, *plugin_types])
    _describe(defs, structs)
    return {"$ref": main_schema["$ref"], "$defs": defs}, structs


def _document(title: str, description: str, body: dict[str, Any]) -> dict[str, Any]:
    doc = {"$schema": DRAFT, "title": title, "description": description, **body}
    return dict(_no_null(doc))


def engine_schema(
    host: PluginHost | None = None, plugins: Sequence[str] | None = BUILTIN_PLUGINS
) -> dict[str, Any]:
    """The engine file's schema, with the options of the gateway plugins of ``plugins`` (entry-point
    names; None: every installed one)."""
    host = host or PluginHost()
    gateways = _builtin(host.gateways.items(), plugins)
    body, _ = _generate(EngineConfig, [g.config_type for g in gateways])
    # a service template is free text or a filed one: one of the two keys (the loader says so too)
    body["$defs"]["ServiceTemplate"]["anyOf"] = [{"required": ["text"]}, {"required": ["provider"]}]
    gw = body["$defs"]["GatewayConfig"]
    if gateways:
        gw["properties"]["plugin"]["examples"] = [g.name for g in gateways]
        gw["allOf"] = [
            {
                "if": {"properties": {"plugin": {"const": g.name}}, "required": ["plugin"]},
                "then": {"properties": {"options": {"$ref": _REF.format(name=g.config_type.__name__)}}},
            }
            for g in gateways
        ]
    return _document(
        "Pigeon engine file",
        "Gateways, carrier prices and limits, caps, plugins, the service: docs/configuration.md.",
        body,
    )


def campaign_schema(
    host: PluginHost | None = None, plugins: Sequence[str] | None = BUILTIN_PLUGINS
) -> dict[str, Any]:
    """The campaign file's schema, with the ``[segment]`` keys of the source plugins of ``plugins``."""
    host = host or PluginHost()
    sources = _builtin(host.sources.items(), plugins)
    body, _ = _generate(CampaignConfig, [SegmentConfig, *(s.config_type for s in sources)])
    defs = body["$defs"]
    common = defs.pop("SegmentConfig")
    segment: dict[str, Any] = {
        "type": "object",
        "description": "The segment: `source` and `phone_field` for the engine, every other key for "
        "the source plugin.",
        "properties": dict(common["properties"]),
        "required": list(common.get("required", [])),
    }
    segment["properties"]["source"] = {
        **segment["properties"]["source"],
        "examples": [s.name for s in sources],
    }
    rules = []
    for s in sources:
        options = defs[s.config_type.__name__]
        for key, prop in options["properties"].items():
            segment["properties"].setdefault(key, prop)
        rules.append(
            {
                "if": {"properties": {"source": {"const": s.name}}, "required": ["source"]},
                "then": {
                    "properties": dict.fromkeys(options["properties"], True),
                    "required": options.get("required", []),
                    # The source's keys and the engine's, nothing else (as its plugin checks).
                    "patternProperties": {"^(source|phone_field)$": True},
                    "additionalProperties": False,
                },
            }
        )
        del defs[s.config_type.__name__]
    if rules:
        segment["allOf"] = rules
    defs["CampaignConfig"]["properties"]["segment"] = segment
    return _document(
        "Pigeon campaign file",
        "Who to send to, what to send, and how: docs/configuration.md.",
        body,
    )


def flow_schema() -> dict[str, Any]:
    """A flow file's schema (``config/flows/*.toml``)."""
    body, _ = _generate(FlowConfig, [])
    body["$defs"]["FlowStep"]["oneOf"] = [{"required": ["text"]}, {"required": ["template"]}]
    return _document(
        "Pigeon flow file",
        "A triggered flow: the event that starts it, timed steps, the events that cancel it: docs/flows.md.",
        body,
    )


def schemas(
    host: PluginHost | None = None, plugins: Sequence[str] | None = BUILTIN_PLUGINS
) -> dict[str, dict[str, Any]]:
    """File name → schema, for the engine, campaign and flow files."""
    host = host or PluginHost()
    return {
        "engine.schema.json": engine_schema(host, plugins),
        "campaign.schema.json": campaign_schema(host, plugins),
        "flow.schema.json": flow_schema(),
    }


def render(schema: dict[str, Any]) -> str:
    """The schema as the committed file holds it: indented, UTF-8, a final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the schemas (``--check``: exit 1 if the files on disk are not what would be written)."""
    ap = argparse.ArgumentParser(prog="python -m engine.cli.schema", description=__doc__.splitlines()[0])
    ap.add_argument(
        "-o",
        "--out",
        type=Path,
        default=SCHEMA_DIR,
        help=f"directory (default {SCHEMA_DIR}, from the repository root)",
    )
    ap.add_argument(
        "--installed",
        action="store_true",
        help="describe the options of every installed plugin, not only the built-in ones",
    )
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = ap.parse_args(argv)
    stale = []
    for name, schema in schemas(plugins=None if args.installed else BUILTIN_PLUGINS).items():
        path = args.out / name
        text = render(schema)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        sys.stdout.write(f"wrote {path}\n")
    for path in stale:
        sys.stdout.write(f"stale: {path} (regenerate: python -m engine.cli.schema)\n")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
