"""W&B as its users run it: their login and WANDB_* settings decide where a run goes, the config wins
where it says something, and a metric has one name in history and summary. ``wandb.init`` is
replaced by a recorder: these tests check what mgpp asks of W&B, not W&B itself."""

import pytest

from mgpp.loggers import WandbLogger, summary_key, wandb_logged_in


class RecordedRun:
    def __init__(self, **init):
        self.init, self.summary, self.history, self.exit_code = init, {}, [], None

    def log(self, metrics, step):
        self.history.append((step, metrics))

    def finish(self, exit_code=0):
        self.exit_code = exit_code


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No login, no WANDB_* settings, and wandb.init recorded."""
    import wandb

    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR", "WANDB_TAGS",
                "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(wandb, "init", lambda **init: RecordedRun(**init))
    return tmp_path


def test_offline_without_a_login_online_with_one(wandb_env, monkeypatch):
    assert not wandb_logged_in()
    assert WandbLogger(wandb_env / "a").run.init["mode"] == "offline"
    (wandb_env / "no-netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert wandb_logged_in()  # what `wandb login` writes
    assert WandbLogger(wandb_env / "b").run.init["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's setting wins over the login
    assert WandbLogger(wandb_env / "c").run.init["mode"] == "offline"
    monkeypatch.delenv("WANDB_MODE")
    (wandb_env / "no-netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert WandbLogger(wandb_env / "d").run.init["mode"] == "online"
    assert WandbLogger(wandb_env / "e", mode="disabled").run.init["mode"] == "disabled"  # the config wins


def test_wandb_environment_is_honoured_and_the_config_wins(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "their-project")
    monkeypatch.setenv("WANDB_ENTITY", "their-team")
    monkeypatch.setenv("WANDB_TAGS", "baseline, cpu")
    monkeypatch.setenv("WANDB_DIR", str(wandb_env / "wandb-files"))
    init = WandbLogger(wandb_env / "run", tags=["mgpp"]).run.init
    assert (init["project"], init["entity"]) == ("their-project", "their-team")
    assert init["tags"] == ["mgpp", "baseline", "cpu"] and init["dir"] == str(wandb_env / "wandb-files")
    init = WandbLogger(wandb_env / "run", project="mine", entity="me", dir=str(wandb_env / "here")).run.init
    assert (init["project"], init["entity"], init["dir"]) == ("mine", "me", str(wandb_env / "here"))
    monkeypatch.delenv("WANDB_PROJECT")
    assert WandbLogger(wandb_env / "run").run.init["project"] == "mgpp"


def test_a_metric_has_one_name_in_history_and_summary(wandb_env):
    logger = WandbLogger(wandb_env / "run")
    logger.finish({"eval_accuracy": 0.8, "eval/f1": 0.7, "sparsity": 0.9, "train_summary/loss": 0.4}, exit_code=0)
    assert logger.run.summary == {"eval/accuracy": 0.8, "eval/f1": 0.7, "final/sparsity": 0.9,
                                  "train_summary/loss": 0.4}
    assert summary_key("eval_accuracy") == "eval/accuracy" and summary_key("wall_time_s") == "final/wall_time_s"
