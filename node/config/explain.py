"""`cynode config explain`: every key of `node.toml` with its default and meaning."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .sections import NodeConfig


def explain() -> str:
    """Render the whole `node.toml` shape as commented TOML, defaults filled in."""
    lines: list[str] = ["# node.toml: every key, its default and what it means.", ""]
    _emit_table(NodeConfig, [], lines)
    return "\n".join(lines).rstrip() + "\n"


def _emit_table(model: type[BaseModel], path: list[str], lines: list[str]) -> None:
    sub_tables: list[tuple[str, type[BaseModel], bool, str]] = []
    scalars: list[str] = []
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            sub_tables.append((name, nested, _is_array(field.annotation), _one_line(field.description)))
            continue
        default = _default_of(model, name)
        entry = f"# {name} =" if default == "(unset)" else f"{name} = {default}"
        scalars.append(entry.ljust(40) + f"  # {_one_line(field.description)}")
    if path and scalars:
        lines.append(f"[{'.'.join(path)}]")
    lines.extend(scalars)
    if scalars:
        lines.append("")
    for name, nested, is_array, description in sub_tables:
        if is_array:
            lines.append(f"# [[{'.'.join(path + [name])}]]  {description} (none by default); each has:")
            for sub_name, sub_field in nested.model_fields.items():
                default = _default_of(nested, sub_name)
                lines.append(f"#   {sub_name} = {default}".ljust(40) + f"  # {_one_line(sub_field.description)}")
            lines.append("")
        else:
            _emit_table(nested, path + [name], lines)


def _default_of(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.default is PydanticUndefined and field.default_factory is None:
        return "(required)"
    if name == "id" and field.default_factory is not None:
        return '"<host name>"'
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(unset)"
    dumped = model.model_construct(**{name: value}).model_dump(mode="json", include={name})[name]
    return _toml_literal(dumped)


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _is_array(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) in (tuple, list)


def _one_line(description: str | None) -> str:
    """A field's doc string on one comment line, however it was wrapped in the source."""
    return " ".join((description or "").split())
