"""The training loop's W&B wrapper (src/training/wandb_log.py WandbRun) with a stand-in run: what the loop
logs is recorded by kind (history keys, summary keys, media), nothing is written and nothing is sent.
Used by tests/test_explain.py and tests/test_dashboard.py to compare the dashboard with what runs log."""
from __future__ import annotations

from src.training.wandb_log import WandbRun


class FakeImage:
    def __init__(self, path, caption=None):
        self.path, self.caption = path, caption


class _Artifact:
    def __init__(self, *args, **kwargs):
        pass

    def add_file(self, path):
        pass


def recording_run_class(logged: dict) -> type:
    """A WandbRun subclass whose runs record into ``logged`` ({"history": set, "summary": set, "media": dict})."""
    logged.setdefault("history", set())
    logged.setdefault("summary", set())
    logged.setdefault("media", {})

    class Run:
        id = "recorded"

        def __init__(self):
            self.summary = {}

        def log(self, values, step=None):
            for key, value in values.items():
                if isinstance(value, (list, FakeImage)):
                    logged["media"][key] = value
                else:
                    logged["history"].add(key)

        def log_artifact(self, artifact):
            pass

        def finish(self, exit_code=0):
            logged["summary"] |= set(self.summary)

    class Recorder(WandbRun):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.run, self.id, self.name = Run(), "recorded", "recorded"
            self.wandb = type("wandb", (), {"Image": FakeImage, "Artifact": _Artifact})

    return Recorder
