"""Turning command-line configuration into gin bindings, and gin's operative config into a dict.

Three sources of configuration, applied in this order (later wins):

1. recipe files (``--gin FILE``),
2. raw gin bindings (``--gin_param 'X.y = z'``),
3. W&B sweep-agent style arguments (``--X.y=value`` or ``--X.y value``), converted here.
"""

from __future__ import annotations

import ast
import difflib
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import gin
from gin import config_parser

# Recipes include each other by repository-relative paths (``include 'gin/baselines/mtl.gin'``);
# searching the repository root makes that work from any working directory.
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
gin.add_config_file_search_path(str(REPOSITORY_ROOT))


class ConfigError(Exception):
    """A configuration mistake found before any data is read or any model is built (exit code 2)."""


# A gin selector with an optional scope: ``X.y``, ``scope/X.y``, ``module.X.y``.
_BINDING_NAME = re.compile(r"^[A-Za-z_][\w/]*(\.[A-Za-z_]\w*)+$")
# A macro name as the recipes write them: ``DATA_DIR``.
_MACRO_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Text that clearly tries to be a Python literal: if it does not parse, it is an error.
_LITERAL_START = re.compile(r"^[\[\(\{'\"0-9+\-.]")


def value_to_gin(name: str, text: str) -> str:
    """Gin source text for a command-line value of binding ``name``.

    Python literals pass unchanged (``0.1``, ``[1, 0]``, ``None``, ``'x'``), ``@Name()`` /
    ``@Name`` and ``%MACRO`` stay references, and any other bare word (``adamw``,
    ``/data/msrvtt``) becomes a quoted string. Text that starts like a literal but does not parse
    (``[1,``, ``1e-4x``) raises ConfigError.
    """
    text = text.strip()
    if text.startswith(("@", "%")):
        return text
    try:
        ast.literal_eval(text)
        return text
    except (ValueError, SyntaxError) as error:
        if _LITERAL_START.match(text):
            raise ConfigError(f"cannot parse the value of --{name}: {text!r} ({error})") from None
    return repr(text)


def sweep_args_to_bindings(args: Sequence[str]) -> list[str]:
    """Bindings from sweep-agent arguments (``--X.y=value``, ``--X.y value``, ``--MACRO=value``).

    Raises ConfigError naming the argument when one is not of that form.
    """
    bindings = []
    position = 0
    while position < len(args):
        arg = args[position]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: expected --Configurable.param=value")
        name, has_value, value = arg[2:].partition("=")
        if not (_BINDING_NAME.match(name) or _MACRO_NAME.match(name)):
            raise ConfigError(
                f"unknown argument {arg!r}: options are --gin, --gin_param, --output, --resume, "
                "or a gin binding --Configurable.param=value"
            )
        if not has_value:
            position += 1
            if position == len(args) or args[position].startswith("--"):
                raise ConfigError(f"argument {arg!r} has no value")
            value = args[position]
        bindings.append(f"{name} = {value_to_gin(name, value)}")
        position += 1
    return bindings


def parse_gin(files: Sequence[str], bindings: Sequence[str], saved: bool = False) -> None:
    """Clear gin and apply ``files`` then ``bindings``; any failure becomes a ConfigError naming it.

    Unknown configurables and parameters, unparsable values, missing files and names renamed
    since (``RENAMED_BINDINGS``, ``RENAMED_VALUES``: the error names the new one) are all caught
    here, before anything is built. ``saved``: the files are run directories' ``config.gin``,
    perhaps written before a rename; renamed names in them are read as the new ones, with a note
    on stderr.
    """
    gin.clear_config()
    for path in files:
        try:
            text = _gin_file_text(path)
            if saved:
                gin.parse_config(_read_with_new_names(text, path))
            else:
                _refuse_renamed(text, f"in gin file {path}")
                gin.parse_config_file(path)
        except OSError as error:
            raise ConfigError(f"cannot read gin file {path}: {error}") from None
        except ConfigError:
            raise
        except Exception as error:  # gin raises ValueError, SyntaxError, TokenError, ...
            raise ConfigError(f"in gin file {path}: {error}{_renamed_hint(str(error))}") from None
    for binding in bindings:
        try:
            _refuse_renamed(binding, f"bad gin binding {binding!r}")
            gin.parse_config(binding)
        except ConfigError:
            raise
        except Exception as error:
            raise ConfigError(f"bad gin binding {binding!r}: {error}") from None


def _gin_file_text(path: str) -> str:
    """The text of gin file ``path``, found as gin finds it (relative paths also under the
    search paths, e.g. the repository root)."""
    prefixes = [""] if Path(path).is_absolute() else gin.config._LOCATION_PREFIXES
    for prefix in prefixes:
        candidate = Path(prefix, path)
        if candidate.is_file():
            return candidate.read_text()
    raise OSError(f"no such file (searched {', '.join(map(repr, prefixes))})")


def config_to_dict(config_text: str) -> dict[str, object]:
    """Flatten gin config text to ``{"scope/Name.param": value, "MACRO": value}`` (e.g. for W&B).

    Literal values keep their Python type; references and macros are kept as their gin text, so a
    sweep's parameter names and values match the keys and values shown here.
    """
    flat: dict[str, object] = {}
    parser = config_parser.ConfigParser(config_text, _KeepReferences())
    for statement in parser:
        if not isinstance(statement, config_parser.BindingStatement):
            continue
        prefix = f"{statement.scope}/" if statement.scope else ""
        key = (
            statement.selector
            if not statement.arg_name
            else f"{statement.selector}.{statement.arg_name}"
        )
        flat[prefix + key] = statement.value
    return flat


class _KeepReferences(config_parser.ParserDelegate):
    """Parser delegate that renders ``@ref`` / ``%MACRO`` as text instead of resolving them."""

    def configurable_reference(self, scoped_name: str, evaluate: bool) -> str:
        return f"@{scoped_name}{'()' if evaluate else ''}"

    def macro(self, name: str) -> str:
        return f"%{name}"


# ---------------------------------------------------------------- renamed names

# Gin names renamed since runs were started with them, old -> new. A recipe or a command line that
# uses an old name fails (exit 2) naming the new one; a run's saved config.gin is read with the new
# names (``upgrade_saved_config``), so runs in flight still resume.
RENAMED_BINDINGS = {"Recipe.schedule": "Recipe.lr_schedule"}
RENAMED_VALUES = {("Distributed.strategy", "ddp"): "replicate"}


@dataclass(frozen=True)
class _Renamed:
    """An old name in gin text: the statement's first line (from 1), the pattern of the old text
    there, its replacement and the rename in words."""

    line: int
    pattern: str
    replacement: str
    description: str


def _bindings(text: str) -> Iterator[config_parser.BindingStatement]:
    """The binding statements of gin ``text``, up to a syntax error (which gin reports when it
    parses the text)."""
    try:
        for statement in config_parser.ConfigParser(text, _KeepReferences()):
            if isinstance(statement, config_parser.BindingStatement):
                yield statement
    except Exception:  # gin raises ValueError, SyntaxError, TokenError, ...
        return


def _renamed(text: str) -> list[_Renamed]:
    """The renamed bindings and values that gin ``text`` uses."""
    found = []
    for statement in _bindings(text):
        name = f"{statement.selector.rsplit('.', 1)[-1]}.{statement.arg_name}"
        line = statement.location.line_num
        if name in RENAMED_BINDINGS:
            new = RENAMED_BINDINGS[name]
            pattern = rf"\b{re.escape(name)}\b"
            found.append(_Renamed(line, pattern, new, f"{name} was renamed {new}"))
        value = statement.value
        if isinstance(value, str) and (name, value) in RENAMED_VALUES:
            new = RENAMED_VALUES[(name, value)]
            pattern = rf"""(?<=[=\s])(['"]){re.escape(value)}\1"""
            described = f"{name} = {value!r} was renamed {new!r}"
            found.append(_Renamed(line, pattern, rf"\g<1>{new}\g<1>", described))
    return found


def renamed_names(text: str) -> list[str]:
    """The renames (in words) that gin ``text`` still uses the old names of."""
    return [renamed.description for renamed in _renamed(text)]


def _refuse_renamed(text: str, where: str) -> None:
    described = renamed_names(text)
    if described:
        raise ConfigError(f"{where}: {'; '.join(described)}: use the new name")


def _renamed_hint(message: str) -> str:
    """A hint for a gin error about a renamed binding (an old name in an included file)."""
    hints = [
        f"{old} was renamed {new}"
        for old, new in RENAMED_BINDINGS.items()
        if all(part in message for part in old.split("."))
    ]
    return f" ({'; '.join(hints)})" if hints else ""


def upgrade_saved_config(text: str) -> tuple[str, list[str]]:
    """A run's saved ``config.gin`` with every renamed name replaced by its new one, and the
    renames it applied in words (none: ``text`` unchanged)."""
    lines = text.splitlines(keepends=True)
    found = _renamed(text)
    for renamed in found:
        index = renamed.line - 1
        lines[index] = re.sub(renamed.pattern, renamed.replacement, lines[index], count=1)
    upgraded = "".join(lines)
    left = renamed_names(upgraded)
    if left:
        raise ConfigError(f"could not apply the renames to a saved config: {'; '.join(left)}")
    return upgraded, [renamed.description for renamed in found]


def _read_with_new_names(text: str, path: str) -> str:
    upgraded, applied = upgrade_saved_config(text)
    if applied:
        print(
            f"note: {path} was written before some names changed; read as the new names "
            f"({'; '.join(applied)})",
            file=sys.stderr,
        )
    return upgraded


# ---------------------------------------------------------------- were the bindings used?

MACRO = "gin.macro"


@dataclass(frozen=True)
class _Binding:
    """One parsed binding: ``scope/selector.arg`` (``arg`` empty for a macro ``NAME``)."""

    scope: str
    selector: str
    arg: str

    @property
    def is_macro(self) -> bool:
        return not self.arg

    def __str__(self) -> str:
        prefix = f"{self.scope}/" if self.scope else ""
        return prefix + self.selector + (f".{self.arg}" if self.arg else "")


def _parse_binding(text: str) -> _Binding | None:
    parser = config_parser.ConfigParser(text, _KeepReferences())
    for statement in parser:
        if isinstance(statement, config_parser.BindingStatement):
            return _Binding(statement.scope or "", statement.selector, statement.arg_name or "")
    return None


def _walk_macros(value: object) -> set[str]:
    """Names of the macros a bound value references (``%NAME``, at any depth)."""
    if isinstance(value, gin.config.ConfigurableReference):
        if value.configurable.selector == MACRO:
            return {value.scoped_selector.rsplit("/", 1)[0]}
        return set()
    if isinstance(value, dict):
        return set().union(*(_walk_macros(v) for v in value.values()))
    if isinstance(value, list | tuple | set):
        return set().union(*(_walk_macros(v) for v in value))
    return set()


def _referenced_macros() -> set[str]:
    return set().union(*(_walk_macros(b) for b in gin.config._CONFIG.values()))


def _scope_applies(binding_scope: str, call_scope: str) -> bool:
    return not binding_scope or binding_scope in call_scope.split("/")


def _full_selector(selector: str) -> str | None:
    match = gin.config._REGISTRY.get_match(selector)
    return None if match is None else match.selector


def _is_used(binding: _Binding) -> bool:
    """Whether the run called the binding's configurable in a scope the binding applies to."""
    full = _full_selector(binding.selector)
    return any(
        selector == full and binding.arg in arguments and _scope_applies(binding.scope, scope)
        for (scope, selector), arguments in gin.config._OPERATIVE_CONFIG.items()
    )


def _used_names() -> list[str]:
    names = []
    for (scope, selector), arguments in gin.config._OPERATIVE_CONFIG.items():
        if selector == MACRO:
            continue
        short = selector.rsplit(".", 1)[-1]
        names += [f"{scope + '/' if scope else ''}{short}.{arg}" for arg in arguments]
    return names


def _closest(name: str, candidates: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def check_command_line_bindings(bindings: Sequence[str]) -> None:
    """ConfigError naming the first command-line binding the run did not use, with the closest
    known name: a macro no gin file references, or a binding of a configurable the run never
    called in that scope (a mistyped scope such as ``backbon/AdamW.lr``). Call once everything
    has been built. A macro defined anywhere and referenced nowhere is an error too."""
    referenced = _referenced_macros()
    defined = {scope for scope, selector in gin.config._CONFIG if selector == MACRO}
    for text in bindings:
        binding = _parse_binding(text)
        if binding is None:
            continue
        if binding.is_macro:
            if binding.selector not in referenced:
                raise ConfigError(
                    f"macro {binding.selector} (set by {text!r}) is referenced by no gin file"
                    + _closest(binding.selector, sorted(referenced))
                )
        elif not _is_used(binding):
            raise ConfigError(
                f"binding {text!r} is not used by this run: no {binding} is called"
                + _closest(str(binding), _used_names())
            )
    unreferenced = sorted(defined - referenced)
    if unreferenced:
        raise ConfigError(
            f"macro(s) {', '.join(unreferenced)} are set but referenced by no gin file"
            + _closest(unreferenced[0], sorted(referenced))
        )


def warn_unused_file_bindings() -> list[str]:
    """Warn once about bindings (from any source) that the run did not use, e.g. options of a
    component a baseline swapped out; returns them."""
    unused = []
    for (scope, selector), arguments in gin.config._CONFIG.items():
        if selector == MACRO:
            continue
        for arg in arguments:
            binding = _Binding(scope, selector.rsplit(".", 1)[-1], arg)
            if not _is_used(_Binding(scope, selector, arg)):
                unused.append(str(binding))
    if unused:
        warnings.warn(
            "gin bindings not used by this run (their components are not built): "
            + ", ".join(sorted(unused)),
            stacklevel=2,
        )
    return unused
