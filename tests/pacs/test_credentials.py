"""Credentials: environment or a private file, never the command line; secrets never shown."""

from __future__ import annotations

import json

import pytest

from ragsam.errors import InputError
from ragsam.pacs.client import check_uid
from ragsam.pacs.credentials import load_credentials


def _file(tmp_path, data, mode=0o600):
    path = tmp_path / "pacs.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    path.chmod(mode)
    return path


def test_environment_order_and_secrets_not_shown():
    env = {"RAGSAM_PACS_USER": "alice", "RAGSAM_PACS_PASSWORD": "s3cret"}
    creds = load_credentials(environ=env)
    assert (creds.user, creds.password, creds.token) == ("alice", "s3cret", None)
    assert "s3cret" not in repr(creds) and creds.describe() == "user 'alice' from RAGSAM_PACS_USER"
    token = load_credentials(environ={**env, "RAGSAM_PACS_TOKEN": "tok"})  # a token wins
    assert (token.token, token.user, token.describe()) == ("tok", None, "a token from RAGSAM_PACS_TOKEN")
    assert load_credentials(environ={}).describe() == "no credentials"
    with pytest.raises(InputError, match="RAGSAM_PACS_PASSWORD is not"):
        load_credentials(environ={"RAGSAM_PACS_USER": "alice"})


def test_file_forms_and_refusals(tmp_path):
    creds = load_credentials(_file(tmp_path, {"user": "bob", "password": "pw"}))
    assert (creds.user, creds.password, creds.source) == ("bob", "pw", str(tmp_path / "pacs.json"))
    assert load_credentials(_file(tmp_path, {"token": "t"})).token == "t"
    for mode in (0o640, 0o604, 0o620):
        with pytest.raises(InputError, match=f"mode {mode:04o}.*chmod 600"):
            load_credentials(_file(tmp_path, {"token": "t"}, mode))
    for bad in ({"user": "bob"}, {"token": "t", "user": "bob"}, {"user": 1, "password": "x"}, [], "not json",
                {"user": "b", "password": "p", "extra": 1}):
        with pytest.raises(InputError, match=str(tmp_path / "pacs.json")):
            load_credentials(_file(tmp_path, bad))
    with pytest.raises(InputError, match="cannot read the credentials file"):
        load_credentials(tmp_path / "missing.json")


def test_uids():
    assert check_uid("1.2.840.10008.1.2", "x") == "1.2.840.10008.1.2"
    for bad in ("", "1..2", "01.2", "1.2.", "../1", "1.2/3", "1" * 65, "1.2a"):
        with pytest.raises(InputError, match="is not a DICOM UID"):
            check_uid(bad, "series")
