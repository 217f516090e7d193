"""The service's templates filed with a provider: compiled at start, each API message checked against them.

``[service.templates.<id>.provider]`` gives a template filed with Aliyun or Tencent as a campaign's
``[template.provider]`` does (:mod:`engine.core.provider_template`): its code, its approved text and
which message field fills each placeholder. ``POST /v1/messages`` names it by ``template`` and gives
the ``fields``; before anything is queued each message gets the checks a campaign's rows get —
every parameter within the provider's limit, no link where the provider refuses one, an opt-out in
a marketing text — and must route to a gateway of that provider (and a free-text message or
template to none that sends only filed templates). A violation is a 422 naming the message and
field, and nothing of the request is sent.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.core.errors import ConfigError, TemplateError
from engine.core.preflight import OPT_OUT_MARKERS
from engine.core.provider_template import ProviderTemplate, compile_provider_template, param_problem
from engine.core.service_config import ServiceTemplate

__all__ = ["compile_filed", "field_problem", "gateway_problem", "opt_out_problem"]


def compile_filed(file: str, tid: str, t: ServiceTemplate) -> ProviderTemplate | None:
    """Template ``tid``'s filed provider template, compiled (None for a free-text template); raises
    :class:`~engine.core.errors.ConfigError` naming the key to change."""
    pt = t.provider
    if pt is None:
        if not t.text.strip():
            raise ConfigError(
                file,
                f"service.templates.{tid}.text",
                "missing required key (or give [service.templates.<id>.provider], a filed template)",
            )
        return None
    if t.text.strip():
        raise ConfigError(
            file,
            f"service.templates.{tid}.text",
            "give either text or [service.templates.<id>.provider] (a filed template's text is its own)",
        )
    try:
        return compile_provider_template(
            provider=pt.provider,
            code=pt.code,
            text=pt.text,
            params=pt.params,
            max_param_length=pt.max_param_length,
            param_lengths=pt.param_lengths,
            links_in_params=pt.links_in_params,
        )
    except TemplateError as exc:
        raise ConfigError(file, f"service.templates.{tid}.provider", str(exc)) from None


def field_problem(template: ProviderTemplate, fields: Mapping[str, str]) -> tuple[str, str] | None:
    """The first parameter of a message that breaks the provider's rules: (``fields.<name>``, what
    to change), or None. Empty fields take the template's defaults, as in a campaign."""
    for k, (field, default) in enumerate(zip(template.fields, template.defaults, strict=True)):
        value = fields.get(field, "") or (default or "")
        problem = param_problem(template, k, value)
        if problem is not None:
            return f"fields.{field}", f"{problem[0]}: {problem[1]}"
    return None


def opt_out_problem(template: ProviderTemplate) -> str | None:
    """Why a marketing message cannot use this filed template (its text has no opt-out), or None."""
    if any(m in template.text for m in OPT_OUT_MARKERS):
        return None
    return (
        f"template {template.code} filed with {template.provider} has no opt-out text (拒收请回复R): "
        "marketing messages must carry one, and a filed template is sent as filed"
    )


def gateway_problem(template: ProviderTemplate | None, gateway: str, sends: str) -> str | None:
    """Why a message cannot go to ``gateway`` (whose plugin sends only templates filed with
    ``sends``, or anything when ``sends`` is empty), or None."""
    if template is None:
        if sends:
            return (
                f"gateway {gateway!r} sends only templates filed with {sends}: name a template with "
                f"[service.templates.<id>.provider] provider = {sends!r}"
            )
        return None
    if sends and sends != template.provider:
        return (
            f"template {template.code} is filed with {template.provider}, but this number goes "
            f"through gateway {gateway!r}, which sends templates filed with {sends}"
        )
    return None
