"""The API's templates by id, loaded and checked when the service starts (filed ones compiled once)."""

from __future__ import annotations

from engine.core.config import _read_toml, convert_section
from engine.core.errors import ConfigError, TemplateError
from engine.core.provider_template import ProviderTemplate
from engine.core.service_config import ServiceTemplate
from engine.core.service_templates import compile_filed
from engine.core.template import compile_template
from engine.service.context import ServiceContext

__all__ = ["ApiTemplates"]


class ApiTemplates:
    """The API's templates by id (``service.templates`` and ``service.templates_file``), each checked
    when the service starts; those filed with a provider compiled once."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.filed: dict[str, ProviderTemplate] = {}
        """Template id → its filed provider template (``[service.templates.<id>.provider]``)."""
        self.templates: dict[str, ServiceTemplate] = dict(ctx.service.templates)
        if ctx.service.templates_file:
            path = ctx.path(ctx.service.templates_file)
            raw = _read_toml(path)
            for tid, section in raw.items():
                self.templates[tid] = convert_section(section, ServiceTemplate, file=str(path), path=tid)
        for tid, t in self.templates.items():
            sig = t.signature or ctx.service.signature
            if not sig.strip().strip("【】"):
                raise ConfigError(
                    ctx.engine.file,
                    f"service.templates.{tid}.signature",
                    "no signature: set it here or service.signature (carriers require one)",
                )
            filed = compile_filed(ctx.engine.file, tid, t)
            if filed is not None:
                self.filed[tid] = filed
            try:
                compile_template(self.body(tid), signature=sig, max_length=t.max_length).check_length()
            except TemplateError as exc:
                raise ConfigError(ctx.engine.file, f"service.templates.{tid}.text", str(exc)) from None

    def body(self, tid: str) -> str:
        """Template ``tid``'s text in Pigeon's syntax (a filed template's, derived from its filed text)."""
        filed = self.filed.get(tid)
        return filed.body if filed is not None else self.templates[tid].text
