"""``command_body``, the one decorator every command runs through (in process, no stores)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from edgeloop.cli._common import command_body, config_option, json_option, to_json
from edgeloop.core.errors import EdgeloopError, GateError


@dataclass(frozen=True)
class _Inner:
    at: Path


@dataclass(frozen=True)
class _Result:
    name: str
    inner: _Inner
    items: tuple[int, ...] = field(default=(1, 2))


def test_json_is_the_same_for_a_dataclass_and_its_dict() -> None:
    as_dict = {"name": "x", "inner": {"at": Path("/a")}, "items": [1, 2]}
    assert to_json(_Result("x", _Inner(Path("/a")))) == json.dumps(as_dict, indent=2, default=str)
    assert json.loads(to_json([_Result("x", _Inner(Path("/a")))])) == [json.loads(to_json(as_dict))]


def _cli(body: Any, **kwargs: Any) -> click.Command:
    @click.command()
    @config_option
    @json_option("Print as JSON.")
    @command_body(settings=False, **kwargs)
    def cmd(cfg: Path) -> Any:
        return body(cfg)

    return cmd


def test_gate_prints_its_result_then_the_note_and_exits_with_its_code() -> None:
    def body(_: Path) -> Any:
        raise GateError("no", {"ok": False})

    cmd = _cli(body, show=lambda r: click.echo(f"ok={r['ok']}"), gate=GateError, gate_note=str)
    res = CliRunner().invoke(cmd, [])
    assert (res.exit_code, res.stdout, res.stderr) == (1, "ok=False\n", "{'ok': False}\n")
    res = CliRunner().invoke(cmd, ["--json"])
    assert json.loads(res.stdout) == {"ok": False} and res.exit_code == 1


def test_an_edgeloop_error_is_one_line_and_its_exit_code() -> None:
    def body(_: Path) -> Any:
        raise EdgeloopError("bad thing")

    res = CliRunner().invoke(_cli(body), ["--config", "x.yaml"])
    assert (res.exit_code, res.stdout, res.stderr) == (2, "", "error: bad thing\n")


def test_exit_code_from_the_result() -> None:
    cmd = _cli(lambda _: {"match": False}, exit_code=lambda r: 0 if r["match"] else 1)
    res = CliRunner().invoke(cmd, ["--json"])
    assert res.exit_code == 1 and json.loads(res.stdout) == {"match": False}


def test_a_lost_server_is_one_line_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    lost = type("ConnectError", (Exception,), {"__module__": "httpx"})

    def body(_: Path) -> Any:
        try:
            raise lost("refused")
        except Exception as exc:
            raise RuntimeError("flow crashed") from exc

    res = CliRunner().invoke(_cli(body), [])
    assert res.exit_code == 3
    assert res.stderr.startswith("error: the Prefect server at ")
    assert "is unreachable (flow crashed)" in res.stderr and "rerun the command" in res.stderr


def test_other_exceptions_propagate() -> None:
    def body(_: Path) -> Any:
        raise KeyError("x")

    res = CliRunner().invoke(_cli(body), [])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)
