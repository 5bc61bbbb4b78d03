"""`retrieval serve` start-up checks and settings from the environment."""

from __future__ import annotations

import pytest
from service_testing import API_KEY

from retrieval.cli import main
from retrieval.errors import UserError
from service.settings import Settings


def test_serve_refuses_an_index_built_by_another_model(index_dir, other_checkpoint, capsys):
    code = main(["serve", "--index", str(index_dir), "--checkpoint", str(other_checkpoint), "--port", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "was built by model" in err and "rebuild the index" in err


def test_serve_refuses_a_missing_index(tmp_path, checkpoint, capsys):
    assert main(["serve", "--index", str(tmp_path), "--checkpoint", str(checkpoint)]) == 2
    assert "not an index directory" in capsys.readouterr().err


def test_settings_from_the_environment():
    env = {"RETRIEVAL_INDEX_DIR": "/srv/idx", "RETRIEVAL_API_KEY": API_KEY, "RETRIEVAL_AUTH_READS": "true",
           "RETRIEVAL_MAX_K": "50", "RETRIEVAL_BATCH_MAX_WAIT_MS": "1.5"}
    settings = Settings.from_env(env, max_k=20)  # arguments win over the environment
    assert settings.api_key == API_KEY and settings.auth_reads is True and settings.max_k == 20
    assert settings.batch_max_wait_ms == 1.5 and str(settings.index_dir) == "/srv/idx" and settings.name == "idx"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RETRIEVAL_MAX_K": "many"}, "not a valid int"),
        ({"RETRIEVAL_AUTH_READS": "maybe"}, "not a valid bool"),
        ({"RETRIEVAL_AUTH_READS": "1"}, "needs an API key"),
        ({"RETRIEVAL_MAX_K": "0"}, "at least 1"),
        ({"RETRIEVAL_RUNTIME": "tensorflow"}, "runtime must be"),
    ],
)
def test_bad_settings_are_user_errors(env, message):
    with pytest.raises(UserError, match=message):
        Settings.from_env({"RETRIEVAL_INDEX_DIR": "/srv/idx", **env})
