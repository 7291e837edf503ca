"""Settings come from GRADBOOK_* variables, with defaults, and explicit configuration wins."""

from __future__ import annotations

import pytest
from gradbook_service.app.settings import Settings

from gradbook.store import DEFAULT_ROOT


@pytest.fixture(autouse=True)
def no_gradbook_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.class_trait_names(config=True):
        monkeypatch.delenv(Settings.env(name), raising=False)


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.kernels) == ("127.0.0.1", 8888, 2)
    assert (settings.store, settings.token) == (str(DEFAULT_ROOT), "")
    assert (settings.max_body_bytes, settings.max_epochs) == (4 * 2**20, 10_000)
    assert (settings.max_train_seconds, settings.max_response_bytes) == (60.0, 16 * 2**20)
    assert (settings.body_timeout, settings.max_queue, settings.max_batch) == (30.0, 1000, 64)
    assert (settings.model_cache, settings.max_models, settings.allow_open) == (16, 100, False)
    assert (settings.request_timeout, settings.lock_timeout) == (60.0, 2.0)
    assert (settings.max_response_ratio, settings.max_pending_bytes) == (64.0, 128 * 2**20)
    assert (settings.max_connections, settings.allowed_hosts) == (4096, "")
    assert (settings.max_queued_jobs, settings.max_job_bytes) == (100, 64 * 2**20)
    assert settings.max_job_seconds == 600.0 and settings.debug is False
    assert settings.keep_versions == 10


def test_every_setting_reads_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"HOST": "127.0.0.2", "PORT": "9001", "KERNELS": "3", "STORE": "/tmp/models",
              "TOKEN": "t0ken", "MAX_BODY_BYTES": "1024", "MAX_EPOCHS": "50",
              "MAX_TRAIN_SECONDS": "2.5", "MAX_RESPONSE_BYTES": "4096", "BODY_TIMEOUT": "0.5",
              "MAX_QUEUE": "0", "MAX_BATCH": "5", "MODEL_CACHE": "3", "MAX_MODELS": "7",
              "ALLOW_OPEN": "1", "REQUEST_TIMEOUT": "7.5", "LOCK_TIMEOUT": "0",
              "TRAINING_WORKER": "0", "JOB_LEASE": "2.5", "MAX_RESPONSE_RATIO": "8",
              "MAX_PENDING_BYTES": "65536", "MAX_CONNECTIONS": "10",
              "ALLOWED_HOSTS": "a.test,b.test", "MAX_QUEUED_JOBS": "4", "MAX_JOB_BYTES": "999",
              "MAX_JOB_SECONDS": "9.5", "LOG_FORMAT": "json", "RELOAD": "1",
              "API_NOTEBOOK": "/tmp/api.ipynb", "DEBUG": "1", "KEEP_VERSIONS": "4"}
    for name, value in values.items():
        monkeypatch.setenv(f"GRADBOOK_{name}", value)
    settings = Settings()
    assert (settings.host, settings.port, settings.kernels) == ("127.0.0.2", 9001, 3)
    assert (settings.store, settings.token) == ("/tmp/models", "t0ken")
    assert (settings.max_body_bytes, settings.max_epochs) == (1024, 50)
    assert (settings.max_train_seconds, settings.max_response_bytes) == (2.5, 4096)
    assert (settings.body_timeout, settings.max_queue, settings.max_batch) == (0.5, 0, 5)
    assert (settings.model_cache, settings.max_models, settings.allow_open) == (3, 7, True)
    assert (settings.request_timeout, settings.lock_timeout) == (7.5, 0.0)
    assert (settings.training_worker, settings.job_lease) == (False, 2.5)
    assert (settings.max_response_ratio, settings.max_pending_bytes) == (8.0, 65536)
    assert (settings.max_connections, settings.allowed_hosts) == (10, "a.test,b.test")
    assert (settings.max_queued_jobs, settings.max_job_bytes) == (4, 999)
    assert (settings.max_job_seconds, settings.log_format) == (9.5, "json")
    assert settings.reload is True and settings.api_notebook == "/tmp/api.ipynb"
    assert settings.debug is True and settings.keep_versions == 4
    assert len(values) == len(Settings.class_trait_names(config=True))  # every setting is here


def test_an_empty_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADBOOK_HOST", "")  # not "listen on every interface"
    monkeypatch.setenv("GRADBOOK_PORT", "")
    assert (Settings().host, Settings().port) == ("127.0.0.1", 8888)


def test_a_bad_number_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADBOOK_KERNELS", "two")
    message = "GRADBOOK_KERNELS must be an integer of at least 1; got 'two'"
    with pytest.raises(ValueError, match=message):
        Settings().kernels  # noqa: B018


def test_a_bad_flag_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADBOOK_ALLOW_OPEN", "yes")
    with pytest.raises(ValueError, match="GRADBOOK_ALLOW_OPEN must be 0 or 1; got 'yes'"):
        Settings().allow_open  # noqa: B018


def test_explicit_configuration_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADBOOK_MAX_EPOCHS", "50")
    assert Settings(max_epochs=7).max_epochs == 7
