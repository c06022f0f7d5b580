"""Settings models as CLI flags: `--name-with-dashes` for field name_with_dashes, so that a
flag and its FARM_NAME_WITH_DASHES environment variable always carry the same name."""

from __future__ import annotations

import argparse
from typing import Any, TypeVar, get_args, get_origin

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    model: type[BaseSettings],
    *,
    fields: list[str] | None = None,
    aliases: dict[str, str] | None = None,
) -> None:
    """Add one flag per settings field (values are validated by the model, not argparse).

    Args:
        fields: the fields to expose; all when None.
        aliases: extra flag -> field, e.g. {"--dataset.num_episodes": "episodes"}.
    """
    env_prefix = model.model_config.get("env_prefix", "")
    for name, info in model.model_fields.items():
        if fields is not None and name not in fields:
            continue
        if get_origin(info.annotation) is dict:
            continue  # no flag for a mapping (EncoderOptions.extra): environment only
        env = f"{env_prefix}{name}".upper()
        default = info.get_default(call_default_factory=False)
        help_text = f"{info.description or ''} [env {env}; default {default}]".strip()
        if info.annotation is bool or bool in get_args(info.annotation):
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag(name), dest=name, default=argparse.SUPPRESS,
                                metavar=name.upper(), help=help_text)
    for alias, name in (aliases or {}).items():
        # Aliases always take a value, also for booleans: --dataset.async_video_encoding=true
        parser.add_argument(alias, dest=name, default=argparse.SUPPRESS, metavar="VALUE",
                            help=f"alias of {flag(name)}")


def settings_from_args(
    parser: argparse.ArgumentParser, model: type[S], args: argparse.Namespace, **extra: object
) -> S:
    """Build the settings from the flags given (the environment fills the rest).

    A value the model rejects ends the program through parser.error (exit code 2), with
    the flag's name in the message.
    """
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k in model.model_fields}
    try:
        return model(**given, **extra)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if not error["loc"]:  # a check across fields: its message names them
                problems.append(message)
                continue
            field = str(error["loc"][0])
            where = flag(field) if field in given else \
                f"{field} (environment {model.model_config.get('env_prefix', '')}" \
                f"{field.upper()})"
            problems.append(f"{where}: {message} (got {error.get('input')!r})")
        parser.error("; ".join(problems))
        raise  # parser.error exits; this keeps type checkers content
