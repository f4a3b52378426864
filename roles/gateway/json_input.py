"""What every request parser of the gateway says about a bad JSON value: one 400 shape, one wording.

`fail` raises the OpenAI-shaped 400 naming the field (`param`); `kind_of` and `show` describe what
the client sent, for the message. Used by openai_schema, tools_schema and responses_schema.
"""

from __future__ import annotations

from typing import Any, NoReturn

from cynode.errors import RequestError

__all__ = ["fail", "kind_of", "show"]


def fail(message: str, param: str | None, code: str) -> NoReturn:
    raise RequestError(message, status=400, param=param, code=code)


def kind_of(value: Any) -> str:
    """The JSON type of a value, as a client would call it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def show(value: Any) -> str:
    """A short rendering of what the client sent, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return kind_of(value)
