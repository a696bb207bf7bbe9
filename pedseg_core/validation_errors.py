"""A pydantic validation error as the one line a user reads: "<option> must be <rule>, got <value>"."""

from __future__ import annotations

import re

from pydantic import BaseModel, ValidationError

RULE = "pedseg_rule"  # the error type of a rule worded for users: its message is "must be ..."
RULES = "pedseg_rules"  # ... of a rule between several options: its message is worded whole


def one_line(err: ValidationError, model: type[BaseModel]) -> str:
    """The first error of validating `model`, in one line, naming the option (dotted) and the value it got."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == RULES:
        return first["msg"]
    if first["type"] == "extra_forbidden":
        *section, key = first["loc"]
        return (f"{'.'.join(map(str, section)) or 'top level'}: unknown option '{key}' "
                f"(known: {', '.join(_fields_of(model, section))})")
    if first["type"] == RULE:
        rule = first["msg"]
    else:  # pydantic's "Input should be a valid integer, unable to parse ...": the rule, without the detail
        rule = re.sub(r"^\w+ should", "must", first["msg"].split(", ")[0])
    return f"{where} {rule}, got {first['input']!r}"


def _fields_of(model: type[BaseModel], section: list) -> list[str]:
    """The option names of the (nested) section of `model` at `section`."""
    for part in section:
        annotation = model.model_fields[part].annotation
        model = next(a for a in (annotation, *getattr(annotation, "__args__", ())) if isinstance(a, type)
                     and issubclass(a, BaseModel))
    return sorted(model.model_fields)
