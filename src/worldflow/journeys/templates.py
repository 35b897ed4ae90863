"""E-mail templates: Jinja2 in its sandbox, compiled once, rendered with what a journey knows.

A template sees ``traits`` (the person's), ``profile`` (``id``), ``journey``, ``step`` and
``now`` (ISO 8601, UTC). The sandbox refuses attribute access to anything unsafe; HTML parts
escape what they insert; a variable that is not there renders as nothing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["TemplateError", "compiled", "render"]

_TEXT = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_HTML = SandboxedEnvironment(autoescape=True, keep_trailing_newline=True)


@lru_cache(maxsize=1024)
def compiled(source: str, html: bool = False) -> Any:
    """The compiled template; :class:`TemplateError` when the source is not a template."""
    return (_HTML if html else _TEXT).from_string(source)


def render(source: str, context: dict[str, Any], html: bool = False) -> str:
    return str(compiled(source, html).render(**context))
