"""Config loading: frozen settings, errors that name the key and the file, env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeloop.core.config import (
    ENV_DVC_REMOTE_URL,
    ENV_MLFLOW_TRACKING_URI,
    ENV_PREFECT_API_URL,
    Settings,
    apply_env_overrides,
    dump_settings,
    load_settings,
)
from edgeloop.core.errors import ConfigError

SERVICE_ENV = (ENV_MLFLOW_TRACKING_URI, ENV_PREFECT_API_URL, ENV_DVC_REMOTE_URL)

SCHEMA = """\
schema:
  features: [x1, x2, color]
  categorical: [color]
  target: label
  classes: [0, 1, 2]
"""

VALID = (
    "project: shop\n"
    + SCHEMA
    + """\
paths:
  data: datasets
  mlflow: /abs/mlflow-store
validation:
  row_policy: batch
  max_bad_row_fraction: 0.05
seeds:
  split: 3
services:
  mlflow_tracking_uri: http://file-mlflow:5000
  prefect_api_url: http://file-prefect:4200/api
  dvc_remote_url: /file/remote
"""
)


@pytest.fixture(autouse=True)
def _no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own service variables must not leak into these tests."""
    for name in SERVICE_ENV:
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, name: str = "edgeloop.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


# --------------------------------------------------------------------------- valid files


def test_valid_config_loads_values_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    s = load_settings(path)
    assert isinstance(s, Settings)
    assert s.project == "shop"
    assert s.data_schema.features == ["x1", "x2", "color"]
    assert s.data_schema.numeric == ["x1", "x2"]
    assert s.data_schema.columns == ["x1", "x2", "color", "label"]
    assert s.data_schema.classes == [0, 1, 2]
    assert s.validation.row_policy == "batch"
    assert s.validation.max_bad_row_fraction == 0.05
    assert s.validation.suite == "batch"  # default kept
    assert s.seeds.split == 3
    assert s.seeds.demo == 7  # default kept
    assert s.services.mlflow_tracking_uri == "http://file-mlflow:5000"
    assert s.source == path.resolve()
    assert s.root == tmp_path.resolve()


def test_relative_paths_resolve_from_the_config_folder(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, VALID))
    assert s.path("data") == tmp_path.resolve() / "datasets"
    assert s.path("mlflow") == Path("/abs/mlflow-store")
    assert s.suite_path() == tmp_path.resolve() / "expectations" / "batch.json"
    assert s.suite_path("other") == tmp_path.resolve() / "expectations" / "other.json"


def test_default_path_is_edgeloop_yaml_in_cwd(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, VALID)
    monkeypatch.chdir(tmp_path)
    assert load_settings().project == "shop"


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, VALID))
    with pytest.raises(ValidationError, match="frozen"):
        s.project = "other"
    with pytest.raises(ValidationError, match="frozen"):
        s.validation.row_policy = "rows"
    with pytest.raises(ValidationError, match="frozen"):
        s.data_schema.target = "y"
    assert s.project == "shop"
    assert s.validation.row_policy == "batch"


def test_dump_then_load_round_trips(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, VALID))
    out = tmp_path / "copy" / "edgeloop.yaml"
    out.parent.mkdir()
    dump_settings(s, out)
    again = load_settings(out)
    assert again.to_dict() == s.to_dict()
    assert again.config_hash() == s.config_hash()


def test_config_hash_changes_with_a_value(tmp_path: Path) -> None:
    a = load_settings(write(tmp_path, VALID, "a.yaml"))
    b = load_settings(write(tmp_path, VALID.replace("split: 3", "split: 4"), "b.yaml"))
    assert a.config_hash() == load_settings(tmp_path / "a.yaml").config_hash()
    assert a.config_hash() != b.config_hash()


# --------------------------------------------------------------------------- bad files


def test_typo_top_level_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, SCHEMA + "validaton:\n  row_policy: batch\n")
    msg = load_error(path)
    assert "validaton" in msg
    assert str(path.resolve()) in msg


def test_typo_nested_key_names_dotted_key(tmp_path: Path) -> None:
    path = write(tmp_path, SCHEMA + "validation:\n  row_polcy: batch\n")
    msg = load_error(path)
    assert "validation.row_polcy" in msg
    assert str(path.resolve()) in msg


@pytest.mark.parametrize(
    ("snippet", "key", "bad"),
    [
        ('seeds:\n  split: "42"\n', "seeds.split", "'42'"),
        ("validation:\n  row_policy: sometimes\n", "validation.row_policy", "sometimes"),
        ("validation:\n  max_bad_row_fraction: 2\n", "validation.max_bad_row_fraction", "2"),
        ("validation:\n  max_bad_row_fraction: -0.1\n", "validation.max_bad_row_fraction", "-0.1"),
        ("validation:\n  report_examples: many\n", "validation.report_examples", "many"),
    ],
)
def test_wrong_type_names_key_value_and_file(tmp_path: Path, snippet, key, bad) -> None:
    path = write(tmp_path, SCHEMA + snippet)
    msg = load_error(path)
    assert f"'{key}'" in msg
    assert bad in msg
    assert str(path.resolve()) in msg


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "edgeloop.yaml"
    msg = load_error(path)
    assert str(path.resolve()) in msg
    assert "not found" in msg


def test_directory_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "edgeloop.yaml"
    folder.mkdir()
    assert str(folder.resolve()) in load_error(folder)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str")])
def test_non_mapping_yaml_is_refused(tmp_path: Path, text, kind) -> None:
    path = write(tmp_path, text)
    msg = load_error(path)
    assert str(path.resolve()) in msg
    assert "mapping" in msg
    assert kind in msg


def test_invalid_yaml_syntax_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "schema: [x1, x2\n")
    msg = load_error(path)
    assert str(path.resolve()) in msg
    assert "YAML" in msg


def test_empty_file_reports_missing_schema(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    msg = load_error(path)
    assert "missing key 'schema'" in msg
    assert str(path.resolve()) in msg


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("categorical: [color]", "categorical: [colour]", "colour"),
        ("features: [x1, x2, color]", "features: [x1, x2, color, label]", "target 'label'"),
        ("features: [x1, x2, color]", "features: [x1, x2, x2, color]", "['x2'] more than once"),
        ("classes: [0, 1, 2]", "classes: [0, 1, 1]", "duplicates"),
        ("classes: [0, 1, 2]", "classes: [0]", "classes"),
        ("features: [x1, x2, color]", "features: []", "features"),
    ],
)
def test_inconsistent_schema_is_refused(tmp_path: Path, old, new, expected) -> None:
    assert old in SCHEMA
    path = write(tmp_path, SCHEMA.replace(old, new))
    msg = load_error(path)
    assert expected in msg
    assert "'schema" in msg  # the key the error is about
    assert str(path.resolve()) in msg


# --------------------------------------------------------------------------- env overrides


def test_env_overrides_win_over_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_MLFLOW_TRACKING_URI, "http://team-mlflow:5000")
    monkeypatch.setenv(ENV_PREFECT_API_URL, "http://team-prefect:4200/api")
    monkeypatch.setenv(ENV_DVC_REMOTE_URL, "s3://team-bucket/dvc")
    s = load_settings(write(tmp_path, VALID))
    assert s.services.mlflow_tracking_uri == "http://team-mlflow:5000"
    assert s.services.prefect_api_url == "http://team-prefect:4200/api"
    assert s.services.dvc_remote_url == "s3://team-bucket/dvc"
    # The rest is untouched and still frozen.
    assert s.project == "shop"
    with pytest.raises(ValidationError):
        s.services.mlflow_tracking_uri = "x"


def test_file_values_kept_without_env(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, VALID))
    assert s.services.mlflow_tracking_uri == "http://file-mlflow:5000"
    assert s.services.prefect_api_url == "http://file-prefect:4200/api"
    assert s.services.dvc_remote_url == "/file/remote"


def test_one_env_override_leaves_the_others(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_PREFECT_API_URL, "http://team-prefect:4200/api")
    monkeypatch.setenv(ENV_MLFLOW_TRACKING_URI, "")  # empty means "not set"
    s = load_settings(write(tmp_path, VALID))
    assert s.services.prefect_api_url == "http://team-prefect:4200/api"
    assert s.services.mlflow_tracking_uri == "http://file-mlflow:5000"
    assert s.services.dvc_remote_url == "/file/remote"


def test_apply_env_overrides_with_explicit_env(tmp_path: Path, monkeypatch) -> None:
    s = load_settings(write(tmp_path, VALID))
    monkeypatch.setenv(ENV_MLFLOW_TRACKING_URI, "http://from-os-environ")
    out = apply_env_overrides(s, {ENV_DVC_REMOTE_URL: "/mnt/remote"})
    assert out.services.dvc_remote_url == "/mnt/remote"
    # An explicit env dict is used instead of os.environ.
    assert out.services.mlflow_tracking_uri == "http://file-mlflow:5000"
    # The input settings are not changed.
    assert s.services.dvc_remote_url == "/file/remote"
    assert out.root == s.root and out.source == s.source


def test_the_temporary_embedded_server_is_not_a_configured_service(
    tmp_path: Path, monkeypatch
) -> None:
    """`edgeloop retrain` points PREFECT_API_URL at the server it started itself: that URL is
    not configuration (the config hash, triggers and links must not see it)."""
    from edgeloop.core.config import ENV_TEMPORARY_PREFECT_API_URL, configured_prefect_api_url

    path = write(tmp_path, VALID)
    before = load_settings(path)
    monkeypatch.setenv(ENV_PREFECT_API_URL, "http://127.0.0.1:40123/api")
    monkeypatch.setenv(ENV_TEMPORARY_PREFECT_API_URL, "http://127.0.0.1:40123/api")
    s = load_settings(path)
    assert s.services.prefect_api_url == "http://file-prefect:4200/api"  # the file's, as before
    assert s.config_hash() == before.config_hash()
    assert configured_prefect_api_url() == ""
    monkeypatch.setenv(ENV_PREFECT_API_URL, "http://team-prefect:4200/api")  # a real one wins
    assert configured_prefect_api_url() == "http://team-prefect:4200/api"
