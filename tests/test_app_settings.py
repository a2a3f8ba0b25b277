"""App settings from the environment, the Spaces persistence check, and ECHO_AUTH parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.auth import AuthError, make_checker, parse_credentials
from app.settings import EMBEDDED, AppSettings, SettingsError


def test_defaults_without_environment() -> None:
    s = AppSettings.from_env({})
    assert s.models == (EMBEDDED,) and s.data_dir == Path("echo-data")
    assert s.auth is None and s.single_connection is None and s.server_port is None
    assert s.persistence_warning() is None


def test_environment_is_read() -> None:
    s = AppSettings.from_env({
        "ECHO_MODEL": "Midea-AIRC/ECHO_block8, embedded", "ECHO_DATA_DIR": "/data/echo", "ECHO_AUTH": "a:b",
        "ECHO_DB_SINGLE_CONNECTION": "1", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861",
        "ECHO_QUEUE_SIZE": "4", "ECHO_GENERATION_CONCURRENCY": "2",
    })
    assert s.models == ("Midea-AIRC/ECHO_block8", "embedded") and s.default_model == "Midea-AIRC/ECHO_block8"
    assert s.single_connection is True and s.server_name == "0.0.0.0" and s.server_port == 7861
    assert (s.queue_size, s.generation_concurrency, s.auth) == (4, 2, "a:b")


def test_race_ar_model_defaults_to_the_embedded_ar_checkpoint() -> None:
    assert AppSettings.from_env({}).race_ar_model == EMBEDDED
    assert AppSettings.from_env({"ECHO_RACE_AR_MODEL": "  "}).race_ar_model == EMBEDDED
    s = AppSettings.from_env({"ECHO_RACE_AR_MODEL": " lingshu-medical-mllm/Lingshu-7B ", "ECHO_MODEL": "a/b"})
    assert s.race_ar_model == "lingshu-medical-mllm/Lingshu-7B" and s.models == ("a/b",)
    with pytest.raises(SettingsError, match="ECHO_RACE_AR_MODEL"):
        AppSettings(race_ar_model=" ")


@pytest.mark.parametrize(("name", "value"), [("ECHO_QUEUE_SIZE", "many"), ("ECHO_MAX_NEW_TOKENS", "0"),
                                             ("ECHO_DB_SINGLE_CONNECTION", "maybe"), ("GRADIO_SERVER_PORT", "http")])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        AppSettings.from_env({name: value})


def test_spaces_warns_unless_data_is_under_persistent_storage() -> None:
    ephemeral = AppSettings.from_env({"SPACE_ID": "org/echo", "ECHO_DATA_DIR": "echo-data"})
    warning = ephemeral.persistence_warning()
    assert warning is not None and "NOT persistent" in warning and "/data" in warning
    assert AppSettings.from_env({"SPACE_ID": "org/echo", "ECHO_DATA_DIR": "/data/echo"}).persistence_warning() is None


def test_inline_credentials_and_constant_time_checker() -> None:
    creds = parse_credentials("alice:s3cr:et, bob:pw2")
    assert creds == {"alice": "s3cr:et", "bob": "pw2"}
    check = make_checker(creds)
    assert check("alice", "s3cr:et") and check("bob", "pw2")
    assert not check("alice", "pw2") and not check("carol", "pw2") and not check("", "")


def test_credentials_file_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("# radiologists\nalice:pa,ss\n\nbob:x\n")
    assert parse_credentials(str(path)) == {"alice": "pa,ss", "bob": "x"}


@pytest.mark.parametrize(("value", "match"), [("alice", "entry 1"), ("alice:a,alice:b", "twice"), (" , ", "names no")])
def test_bad_credentials_are_refused_without_echoing_passwords(value: str, match: str) -> None:
    with pytest.raises(AuthError, match=match) as info:
        parse_credentials(value)
    assert ":a" not in str(info.value) and ":b" not in str(info.value)


@pytest.mark.parametrize(("name", "value", "match"), [("ECHO_AUTH", "alice", "ECHO_AUTH entry 1"),
                                                      ("ECHO_QUEUE_SIZE", "-3", "ECHO_QUEUE_SIZE")])
def test_echo_app_refuses_bad_configuration_before_serving(monkeypatch, capsys, name: str, value: str,
                                                           match: str) -> None:
    from app.main import main

    monkeypatch.setenv(name, value)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("echo-app: error:") and match in err


def test_quantize_is_read_and_checked() -> None:
    assert AppSettings.from_env({}).quantize == "none"
    assert AppSettings.from_env({"ECHO_QUANTIZE": " INT8 "}).quantize == "int8"
    with pytest.raises(SettingsError, match="ECHO_QUANTIZE"):
        AppSettings.from_env({"ECHO_QUANTIZE": "int4"})


def test_quantize_int8_is_refused_at_start_up_while_its_gate_fails(monkeypatch) -> None:
    from echo_model import device

    failed = device.Int8Gate(studies=10, data="synthetic studies", identical_share={"echo": 0.2},
                             rouge_l_delta={"echo": -0.05}, rouge_l_low={"echo": -0.08})
    monkeypatch.setattr(device, "INT8_GATE", failed)
    with pytest.raises(SettingsError, match=r"ECHO_QUANTIZE=int8: .*quality gate failed.*-0\.0800"):
        AppSettings.from_env({"ECHO_QUANTIZE": "int8"})
    assert AppSettings.from_env({"ECHO_QUANTIZE": "none"}).quantize == "none"


def test_every_drafting_model_gets_the_quantize_setting(tmp_path: Path) -> None:
    from app.race import RaceService
    from app.service import DraftingService

    drafting = DraftingService(AppSettings(quantize="int8", data_dir=tmp_path))
    assert drafting.drafter().quantize == "int8"
    assert RaceService(drafting).ar_drafter().quantize == "int8"  # the embedded AR: the app's own drafter
    assert RaceService(drafting, ar_model="org/other-ar").ar_drafter().quantize == "int8"  # a Race-only one
    assert DraftingService(AppSettings(data_dir=tmp_path)).drafter().quantize == "none"
