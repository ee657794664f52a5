"""The built-in recipes, shipped inside the package (``vlcd_dist/configs/*.yaml``), and how a
``--config`` value finds its file.

``--config demo`` and ``--config paper`` name the built-in recipes from any folder, also from an
installed wheel; anything else is a path to a YAML file. A file of that name in the current folder
wins over a built-in recipe, as a user who wrote ``./demo`` would expect.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vlcd_dist.errors import ConfigError

_SUFFIX = ".yaml"


def _folder() -> Path:
    # The package is a plain folder (wheel or source checkout); the recipes sit beside config/.
    return Path(str(resources.files("vlcd_dist") / "configs"))


def builtin_recipes() -> dict[str, Path]:
    """Name -> file of every built-in recipe, e.g. ``{"demo": .../configs/demo.yaml}``."""
    return {p.name[: -len(_SUFFIX)]: p for p in sorted(_folder().glob(f"*{_SUFFIX}"))}


def builtin_recipe(name: str) -> Path:
    """The file of the built-in recipe ``name`` (``demo`` or ``paper``)."""
    recipes = builtin_recipes()
    if name not in recipes:
        raise ConfigError(f"no built-in recipe {name!r}; built-in recipes: {sorted(recipes)}")
    return recipes[name]


def resolve_recipe(value: str | Path) -> Path:
    """The YAML file a ``--config`` value means: an existing file, else a built-in recipe's name
    (with or without ``.yaml``). Raises ConfigError naming both ways when neither matches."""
    path = Path(value)
    if path.is_file():
        return path
    name = path.name[: -len(_SUFFIX)] if path.name.endswith(_SUFFIX) else path.name
    recipes = builtin_recipes()
    if path.parent == Path(".") and name in recipes:
        return recipes[name]
    raise ConfigError(
        f"recipe {value} not found: give the path of a YAML file, or the name of a built-in "
        f"recipe ({', '.join(sorted(recipes))}; their files are in {_folder()})"
    )
