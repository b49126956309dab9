"""A griffe extension of the API reference (mkdocs.yml, ``mkdocstrings`` > ``extensions``): Sphinx roles in the
docstrings become cross-references.

hscl's docstrings name other objects the Sphinx way (:func:`load_checkpoint`, :class:`~hscl.models.Backbone`,
:mod:`hscl.geometry`), which mkdocstrings would show as raw text. Once a package is loaded, every docstring's
roles (``func``, ``class``, ``meth``, ``mod``, ``data``, ``attr``, ``obj``, ``exc``, ``const``) are rewritten to
mkdocs-autorefs references: the target is resolved in the scope of the documented object (its module's members
and imports, as Python would see the name), a ``~`` shows the last component only, and the reference is
*optional*: a target the site does not document (a private helper, ``torch.nn.Module``) renders as code instead
of failing the strict build. The docstrings themselves stay as they are, readable with ``help()``.
"""

from __future__ import annotations

import html
import re

from griffe import Extension, NameResolutionError, Object

ROLES = ("func", "class", "meth", "mod", "data", "attr", "obj", "exc", "const")
#: :role:`target`, :role:`~target` and :role:`title <target>` (with an optional ``py:`` domain)
ROLE = re.compile(r":(?:py:)?(" + "|".join(ROLES) + r"):`([^`]+)`")
_TITLED = re.compile(r"^(.*?)\s*<([^>]+)>$")


def resolve(obj: Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj``: absolute ``hscl...`` paths as they are, others looked
    up by their first component in the scope of ``obj`` (members, imports, then enclosing scopes)."""
    target = target.lstrip(".")
    head, _, rest = target.partition(".")
    if head == obj.module.package.name:
        return target
    try:
        base = obj.resolve(head)
    except (NameResolutionError, KeyError, AttributeError):
        return target
    return f"{base}.{rest}" if rest else base


def reference(obj: Object, text: str) -> str:
    """The autorefs element for one role's ``text`` (``target``, ``~target`` or ``title <target>``)."""
    titled = _TITLED.match(text)
    if titled:
        title, target = titled.group(1), titled.group(2).lstrip("~")
    else:
        short = text.startswith("~")
        target = text.lstrip("~")
        title = target.rsplit(".", 1)[-1] if short else target
    identifier = resolve(obj, target)
    return f'<autoref identifier="{html.escape(identifier)}" optional><code>{html.escape(title)}</code></autoref>'


def rewrite(obj: Object, text: str) -> str:
    """``text`` with every Sphinx role replaced by an optional cross-reference resolved from ``obj``."""
    return ROLE.sub(lambda m: reference(obj, m.group(2)), text)


def _walk(obj: Object, seen: set[int]):
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member, seen)


class SphinxRoles(Extension):
    """Rewrite the Sphinx roles of every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg, **kwargs) -> None:
        for obj in _walk(pkg, set()):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = rewrite(obj, obj.docstring.value)
