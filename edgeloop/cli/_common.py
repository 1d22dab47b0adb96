"""What every command shares: the ``--config`` and ``--json`` options and ``command_body``.

Nothing heavy at module top (``edgeloop --help`` imports this): the config module pulls in
pydantic, so it is imported when a command runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from edgeloop.core.errors import EdgeloopError, GateError

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_HELP = "Config file (default: ./edgeloop.yaml, or $EDGELOOP_CONFIG)."


def config_option(fn: F) -> F:
    """The ``--config`` option, read by ``command_body``."""
    return click.option("--config", "config", default=None, help=CONFIG_HELP)(fn)


def json_option(help_text: str) -> Callable[[F], F]:
    """The ``--json`` flag, printed by ``command_body``."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def config_path(value: str | None) -> Path:
    """``--config``, else $EDGELOOP_CONFIG, else ./edgeloop.yaml, absolute."""
    return Path(value or os.environ.get("EDGELOOP_CONFIG") or "edgeloop.yaml").resolve()


def load_settings(config: str | None) -> Settings:
    """The settings of ``config``, with the process environment prepared for the stack."""
    # lazy: pydantic (via edgeloop.core.config) is not for `edgeloop --help`
    from edgeloop._internal import runtime
    from edgeloop.core.config import load_settings as load

    settings = load(config_path(config))
    runtime.prepare(settings)
    return settings


def plain(result: Any) -> Any:
    """A result as dicts: a result object by its ``to_dict()`` (the JSON it has always had),
    another dataclass by ``dataclasses.asdict``, a list item by item; anything else as it is."""
    if callable(getattr(result, "to_dict", None)):
        return result.to_dict()
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    if isinstance(result, list | tuple):
        return [plain(item) for item in result]
    return result


def to_json(result: Any) -> str:
    """``result`` as ``--json`` prints it: indented, dataclasses (at any depth) as by ``plain``,
    anything else JSON has no type for as its ``str``."""
    return json.dumps(plain(result), indent=2, default=_json_value)


def _json_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(value)
    return str(value)


def fail(exc: EdgeloopError) -> NoReturn:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(exc.exit_code)


def _server_lost(exc: Exception) -> NoReturn:
    from edgeloop.core.config import configured_prefect_api_url  # lazy: pydantic

    url = configured_prefect_api_url() or "(embedded)"
    click.secho(
        f"error: the Prefect server at {url} is unreachable ({exc}). Work already "
        "done is kept (MLflow runs, registry, data versions); rerun the command when "
        "the server is back: finished steps are skipped.",
        fg="red",
        err=True,
    )
    sys.exit(3)


def command_body(
    *,
    settings: bool = True,
    check: Callable[..., None] | None = None,
    show: Callable[[Any], None] | None = None,
    gate: type[GateError] | None = None,
    gate_note: Callable[[Any], str] | None = None,
    exit_code: Callable[[Any], int] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """Make ``body(settings, **params) -> result`` the callback of a click command.

    Goes right above the function, below the click options; ``--config`` (``config_option``)
    and ``--json`` (``json_option``) are consumed here, every other option goes to the body.

    1. ``check(**params)``, when given, runs before the config is read (argument checks).
    2. The config is loaded and the process environment prepared; the body gets the settings,
       or with ``settings=False`` the config's resolved path.
    3. The body's result, made dicts by ``plain`` (a result's ``to_dict()``, another dataclass
       by ``dataclasses.asdict``, dicts and lists as they are), is printed: with ``--json`` by
       ``to_json``, else by ``show(result)`` when given (a body without ``--json`` may print).
    4. Exit: when the body raises ``gate`` (a ``GateError``), its ``result`` is printed as in 3,
       then ``gate_note(result)`` in red on stderr when given, and the exit code is the
       error's; otherwise ``exit_code(result)`` when given, else 0. A body may ``sys.exit``.
    5. Any other ``EdgeloopError``: ``error: MESSAGE`` in red on stderr, exit its ``exit_code``.
       Any other exception caused by a lost server connection (``api_unreachable``): one line
       naming the Prefect server and what is kept, exit 3. Everything else propagates.
    """
    caught: tuple[type[GateError], ...] = (gate,) if gate else ()

    def decorate(body: Callable[..., Any]) -> Callable[..., None]:
        @functools.wraps(body)
        def callback(config: str | None = None, as_json: bool = False, **params: Any) -> None:
            code = 0
            try:
                if check is not None:
                    check(**params)
                target = load_settings(config) if settings else config_path(config)
                try:
                    result = body(target, **params)
                except caught as exc:
                    result, code = exc.result, exc.exit_code
                result = plain(result)
                if as_json:
                    click.echo(to_json(result))
                elif show is not None:
                    show(result)
                if code:
                    if gate_note is not None:
                        click.secho(gate_note(result), fg="red", err=True)
                elif exit_code is not None:
                    code = exit_code(result)
            except EdgeloopError as exc:
                fail(exc)
            except Exception as exc:
                from edgeloop._internal.runtime import api_unreachable  # lazy: pydantic

                if not api_unreachable(exc):
                    raise
                _server_lost(exc)
            if code:
                sys.exit(code)

        return callback

    return decorate
