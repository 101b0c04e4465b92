"""Settings: defaults that run on one machine, refusals of unsafe ones elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from xmlx.settings import DEV_API_KEY_PEPPER, Settings

SAFE_PEPPER = "p" * 40
PG_URL = "postgresql+psycopg://xmlx@db/xmlx"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("XMLX_"):
            monkeypatch.delenv(name)


def test_development_defaults_work_out_of_the_box() -> None:
    settings = Settings()
    assert settings.env == "development" and settings.is_sqlite
    assert settings.database_url == f"sqlite:///{Path('.xmlx') / 'xmlx.sqlite'}"
    assert settings.local_storage_root == Path(".xmlx") / "storage"
    assert (settings.max_batch_items, settings.chunk_size) == (1_000_000, 32)
    assert settings.visibility_timeout_seconds > settings.task_hard_time_limit_seconds


def test_data_dir_moves_the_default_database_and_storage(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'xmlx.sqlite'}"
    assert settings.local_storage_root == tmp_path / "storage"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMLX_CHUNK_SIZE", "8")
    monkeypatch.setenv("XMLX_IMAGE_SIZE", "[64, 96]")
    monkeypatch.setenv("XMLX_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("XMLX_S3_SECRET_KEY", "from-env")
    settings = Settings()
    assert settings.chunk_size == 8 and settings.image_size == (64, 96)
    assert settings.s3_secret_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)  # secrets never print


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"env": "production", "database_url": PG_URL}, "XMLX_API_KEY_PEPPER"),
        ({"env": "test", "api_key_pepper": "short"}, "XMLX_API_KEY_PEPPER"),
        ({"env": "production", "api_key_pepper": SAFE_PEPPER}, "XMLX_DATABASE_URL"),
        (
            {"env": "test", "api_key_pepper": SAFE_PEPPER, "storage_backend": "s3"},
            "XMLX_S3_ACCESS_KEY",
        ),
        ({"task_hard_time_limit_seconds": 600, "visibility_timeout_seconds": 600}, "VISIBILITY"),
        ({"task_soft_time_limit_seconds": 700}, "SOFT_TIME_LIMIT"),
    ],
)
def test_unsafe_settings_fail_with_a_clear_message(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)  # type: ignore[arg-type]


def test_production_with_real_secrets_is_accepted() -> None:
    settings = Settings(
        env="production",
        database_url=PG_URL,
        api_key_pepper=SAFE_PEPPER,
        storage_backend="s3",
        s3_access_key="AKIA-real",
        s3_secret_key="real-secret",
    )
    assert settings.api_key_pepper.get_secret_value() != DEV_API_KEY_PEPPER
    assert not settings.is_sqlite


def test_development_tolerates_the_dev_pepper() -> None:
    assert Settings(env="development").api_key_pepper.get_secret_value() == DEV_API_KEY_PEPPER
