"""Typed recipes: boot_command text kept in files (``bootstrap/linux/recipes/``,
``bootstrap/windows/recipes/``) that a ``type`` step names instead of giving ``text``.

A recipe file is one boot_command fragment per line (each ends with its own
``<enter>``; the lines are joined as they stand), ``#`` lines are comments, and
``${name}`` is a parameter (``$$`` a literal ``$``). Parameters come from the step's
``with:`` mapping, else the target (``address`` from its ``address=``), else
:data:`DEFAULTS`. A line naming an optional parameter (:data:`OPTIONAL`) that is not
given is left out; any other parameter missing is bad input.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from beachhead.agent.errors import InputError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "bootstrap"
DEFAULTS = {"interface": "eth0", "prefix": "24"}
OPTIONAL = frozenset({"gateway"})
_NAME = re.compile(r"^(linux|windows)/[a-z0-9][a-z0-9-]*$")


def recipe_path(name: str) -> Path:
    """The file of recipe ``name`` (``linux/console-ssh``)."""
    os_name, _, stem = name.partition("/")
    return RECIPES_DIR / os_name / "recipes" / f"{stem}.txt"


@dataclass(frozen=True)
class Recipe:
    """A recipe's lines (comments dropped) and the parameters the step gave."""

    name: str
    lines: tuple[str, ...]
    params: dict[str, str] = field(default_factory=dict)

    def names(self) -> set[str]:
        """Every parameter the recipe's lines use."""
        found: set[str] = set()
        for line in self.lines:
            for match in string.Template.pattern.finditer(line):
                if match.group("named") or match.group("braced"):
                    found.add(match.group("named") or match.group("braced"))
        return found

    def render(self, address: str | None = None, where: str = "type.recipe") -> str:
        """The boot_command text, with the step's parameters, then the target's
        ``address``, then :data:`DEFAULTS` (:class:`InputError` naming one missing)."""
        values = dict(DEFAULTS)
        if address is not None:
            values["address"] = address
        values.update(self.params)
        out = []
        for line in self.lines:
            try:
                out.append(string.Template(line).substitute(values))
            except KeyError as exc:
                missing = exc.args[0]
                if missing in OPTIONAL:
                    continue
                raise InputError(
                    None, where, f"recipe {self.name} needs the parameter {missing} (with: {missing}: ...)"
                ) from None
            except ValueError as exc:
                raise InputError(None, where, f"recipe {self.name}: {exc}") from None
        return "".join(out)


def load_recipe(name: str, params: dict[str, str], where: str) -> Recipe:
    """Recipe ``name`` with the step's ``params`` (:class:`InputError` for an unknown
    recipe or a parameter it does not use)."""
    if not _NAME.match(name) or not recipe_path(name).is_file():
        known = ", ".join(available()) or "none"
        raise InputError(None, where, f"no recipe {name!r} (known: {known})")
    text = recipe_path(name).read_text(encoding="utf-8")
    lines = tuple(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    recipe = Recipe(name, lines, dict(params))
    unused = sorted(set(params) - recipe.names())
    if unused:
        raise InputError(
            None, where, f"recipe {name} has no parameter {unused[0]} (it uses {', '.join(sorted(recipe.names()))})"
        )
    return recipe


def available() -> list[str]:
    """The names of the recipes shipped with Beachhead."""
    return sorted(f"{p.parent.parent.name}/{p.stem}" for p in RECIPES_DIR.glob("*/recipes/*.txt"))
