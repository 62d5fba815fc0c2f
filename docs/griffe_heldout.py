"""How the API pages read heldout's docstrings (a griffe extension, loaded by mkdocs.yml).

heldout's docstrings are Google style with a few reST habits: the example section is titled
``Example:`` (Google's parser knows only ``Examples:``, and would render the doctest as prose),
cross-references use Sphinx roles (``:class:`~heldout.core.State```). This extension reads
``Example:`` as ``Examples:``, renders a role as inline code of its (shortened) target, and
ends a reST ``text::`` (before an indented literal block) with one colon.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)  # reST "text::" before a literal block
_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def rewrite(text: str) -> str:
    """The docstring ``text`` as the Google parser of the API pages should read it."""
    return _LITERAL.sub(r"\1:", _ROLE.sub(_role, _EXAMPLE.sub(r"\1Examples:", text)))


class HeldoutDocstrings(griffe.Extension):
    """Apply :func:`rewrite` to every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
