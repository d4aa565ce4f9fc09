"""python -m src.kaggle build|check|push on tiny untrained runs, offline: the package holds exactly the runs
infer.py would use (checksummed), a wheel for every shipped pin (downloads faked), metadata the kaggle CLI
accepts and a notebook that calls infer.py with them; check refuses a package lacking a wheel or with a
changed weight file; push without credentials stops with one line and otherwise runs the CLI commands
it prints (the CLI faked). The slow test executes the notebook in the clean environment: with no wheels
shipped, the first module the inference path needs is named as missing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.inference.settings import load_infer_config
from src.kaggle import settings as kaggle_settings
from src.packaging import check as check_module
from src.packaging.build import PLACEHOLDER_OWNER, Package, build
from src.packaging.check import CheckFailed, check_package, metadata_problems, over_limit, projection
from src.packaging.environment import INFERENCE_NEEDS, KAGGLE_IMAGE, canonical, image_distributions, shipped_pins
from src.packaging.push import NO_CREDENTIALS, PushError, push
from src.packaging.wheels import platform_tags, read_requirements

from infer_helpers import neck_volume, save_member_runs, write_study, write_test_csv, write_train_labels

ROOT = Path(__file__).resolve().parents[1]
UIDS = ["1.2.826.9.1", "1.2.826.9.2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("competition")
    rng = np.random.default_rng(0)
    for uid in UIDS:
        write_study(root / "test_images", uid, neck_volume(rng))
    write_test_csv(root / "test.csv", UIDS)
    write_train_labels(root / "train.csv", 20, rng)
    return root


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, data_dir):
    runs = tmp_path_factory.mktemp("runs")
    save_member_runs(runs, data_dir)
    (runs / "effnet_gru" / "fold0" / "metrics.json").write_text(json.dumps({"score": 0.42}))
    return runs


class FakeDownload:
    """Stands in for pip download: one empty wheel file per requirement, and what it was asked."""

    def __init__(self):
        self.calls = []

    def __call__(self, requirements, folder, python_version, platforms):
        self.calls.append((list(requirements), python_version, list(platforms)))
        for requirement in requirements:
            name, version = requirement.split("==")
            (folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")


def make(tmp_path, runs_dir, *args, download=None) -> Package:
    _, cfg = kaggle_settings(["build", f"out={tmp_path / 'dist'}", f"runs_dir={runs_dir}", *args])
    return build(cfg, download=download or FakeDownload(), announce=lambda *a: None)


def test_build_ships_what_infer_uses_with_checksums_and_cv(tmp_path, runs_dir):
    download = FakeDownload()
    package = make(tmp_path, runs_dir, "members=[effnet_gru]", "owner=someone", "python_version=3.12",
                   "platform=manylinux_2_28_x86_64", download=download)
    weights = package.weights / "runs"
    # effnet_gru classifies vertebra crops, so its localiser is shipped; cnn3d is not a member
    assert sorted(p.relative_to(weights).as_posix() for p in weights.rglob("*.pt")) == \
        ["effnet_gru/fold0/best.pt", "localiser/fold0/best.pt"]
    manifest = package.manifest
    entry = manifest["files"]["runs/effnet_gru/fold0/best.pt"]
    from src.packaging.weights import sha256
    assert entry["sha256"] == sha256(runs_dir / "effnet_gru" / "fold0" / "best.pt") and entry["cv"] == {"score": 0.42}
    assert manifest["runs"]["localiser"]["role"] == "localiser"
    # the code dataset: this checkout's code and a wheel for every shipped pin, for the asked target
    assert (package.code / "infer.py").is_file() and (package.code / "src" / "inference" / "pipeline.py").is_file()
    assert not list(package.code.rglob("__pycache__"))
    requirements, python_version, platforms = download.calls[0]
    assert python_version == "3.12" and "manylinux2014_x86_64" in platforms and "manylinux_2_35_x86_64" not in platforms
    assert [r for r, _ in read_requirements(package.code / "wheels")] == requirements
    assert {canonical(r.split("==")[0]) for r in requirements} >= {canonical(n) for n in INFERENCE_NEEDS}
    # the notebook runs infer.py on the competition's data with runs_dir in the weights dataset
    cells = ["".join(c["source"]) for c in json.loads((package.notebook / "submission.ipynb").read_text())["cells"]]
    assert "--no-index" in cells[0] and "--find-links" in cells[0] and "timm" in cells[0]
    assert "runs_dir={WEIGHTS / 'runs'}" in cells[1] and "*SHIPPED" in cells[1] and "submission.csv" in cells[1]
    assert "members=[{run: effnet_gru, weight: 1, folds: [0]}]" in cells[1] and "localiser=localiser" in cells[1]


def test_the_shipped_arguments_make_infer_load_exactly_the_shipped_folds(tmp_path, runs_dir):
    package = make(tmp_path, runs_dir, "members=[{run: cnn3d, folds: [1]}]", "tta=true")
    assert sorted(p.parent.relative_to(package.weights / "runs").as_posix()
                  for p in (package.weights / "runs").rglob("best.pt")) == ["cnn3d/fold1"]  # no localiser needed
    args = package.manifest["infer_args"]
    assert "tta=true" in args
    cfg = load_infer_config([f"runs_dir={package.weights / 'runs'}", *args])
    assert cfg["members"] == [{"run": "cnn3d", "weight": 1.0, "folds": [1]}] and cfg["tta"] is True


def test_an_ensemble_file_that_chose_the_weights_is_shipped_with_its_nested_cv(tmp_path, runs_dir):
    ensemble = {"members": ["effnet_gru", "cnn3d"], "weights": [0.25, 0.75], "combine": "logit",
                "nested_cv": {"score": 0.31}}
    (runs_dir / "ensemble.json").write_text(json.dumps(ensemble))
    try:
        package = make(tmp_path, runs_dir, "members=[effnet_gru,cnn3d]")
    finally:
        (runs_dir / "ensemble.json").unlink()
    assert json.loads((package.weights / "runs" / "ensemble.json").read_text()) == ensemble
    manifest = package.manifest
    assert manifest["ensemble_nested_cv"] == 0.31 and manifest["combine"] == "logit"
    assert manifest["runs"]["cnn3d"]["weight"] == 0.75 and sorted(manifest["runs"]["cnn3d"]["folds"]) == ["0", "1"]


def test_metadata_holds_the_fields_the_kaggle_cli_reads(tmp_path, runs_dir):
    package = make(tmp_path, runs_dir, "owner=someone", "name=cspine-test")
    code, weights = package.metadata(package.code), package.metadata(package.weights)
    kernel = package.metadata(package.notebook)
    assert code["id"] == "someone/cspine-test-code" and code["title"] and code["licenses"] == [{"name": "CC0-1.0"}]
    assert weights["id"] == "someone/cspine-test-weights"
    assert kernel["id"] == "someone/cspine-test-submission" and kernel["title"] == "cspine-test-submission"
    assert (kernel["code_file"], kernel["language"], kernel["kernel_type"]) == ("submission.ipynb", "python", "notebook")
    assert kernel["enable_gpu"] is True and kernel["enable_internet"] is False
    assert kernel["dataset_sources"] == [code["id"], weights["id"]]
    assert kernel["competition_sources"] == ["rsna-2022-cervical-spine-fracture-detection"]
    assert metadata_problems(package) == []
    check_package(package)  # and the package as a whole passes the static check
    kernel["enable_internet"] = True
    (package.notebook / "kernel-metadata.json").write_text(json.dumps(kernel))
    assert any("enable_internet" in p for p in metadata_problems(package))


def test_check_names_the_module_of_a_missing_wheel(tmp_path, runs_dir):
    package = make(tmp_path, runs_dir)
    (wheel,) = (package.code / "wheels").glob("dicomsdl-*.whl")
    wheel.unlink()
    with pytest.raises(CheckFailed, match=r"missing wheel\(s\).*dicomsdl==[\d.]+ \(module dicomsdl\)"):
        check_package(package)


def test_check_refuses_a_weight_file_that_changed(tmp_path, runs_dir):
    package = make(tmp_path, runs_dir)
    best = package.weights / "runs" / "effnet_gru" / "fold0" / "best.pt"
    best.write_bytes(best.read_bytes()[:-10])
    with pytest.raises(CheckFailed, match="effnet_gru/fold0/best.pt: sha256 differs"):
        check_package(package)


def test_shipped_pins_are_what_the_image_lacks():
    pins = {canonical(p.name): p for p in shipped_pins("3.11")}
    image = image_distributions("3.11")
    assert not set(pins) & set(image)                      # nothing the image has is shipped again
    assert {canonical(n) for n in KAGGLE_IMAGE} <= set(image) and "torch" not in pins
    assert {n: pins[canonical(n)].module for n in INFERENCE_NEEDS} == INFERENCE_NEEDS
    from importlib.metadata import version
    assert pins["timm"].version == version("timm")         # pinned to what the tests and infer.py ran with


def test_platform_tags_cover_older_glibc():
    tags = platform_tags("manylinux_2_35_x86_64")
    assert tags[0] == "manylinux_2_35_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_36_x86_64" not in tags and platform_tags("win_amd64") == ["win_amd64"]


def test_projection_separates_fixed_costs_from_the_time_per_study():
    output = ("[ensemble] weights from x; combine in prob space; device cuda; tta off\n"
              "[summary] 20 studies; 18 predicted by the models, 2 given the prior\n"
              "[done] /k/submission.csv: 160 rows for 20 studies in 46.0 s, 10.0 s of it before the first study (...)\n")
    timing = projection(output, (30.0, 50.0), 1500, 0.0)
    assert timing["device"] == "cuda" and timing["studies_timed"] == 18 and timing["seconds_per_study"] == 2.0
    assert timing["projected_hours"] == pytest.approx((30 + 4 + 10 + 2.0 * 1500) / 3600)
    assert projection(output, (30.0, 50.0), 1500, 4.0)["projected_hours"] == pytest.approx((44 + 0.5 * 1500) / 3600)
    slow = projection(output.replace("in 46.0 s", "in 460.0 s"), (30.0, 500.0), 1500, 0.0)  # 25 s a study
    assert over_limit(timing, 9.0, "here") is None
    assert "projected 10.4 h for 1500 studies on here, over the 9 h limit" in over_limit(slow, 9.0, "here")


def test_push_without_credentials_stops_with_one_line(tmp_path):
    env = {"HOME": str(tmp_path)}
    with pytest.raises(PushError) as err:
        push({"out": str(tmp_path)}, run=None, env=env)
    assert str(err.value) == NO_CREDENTIALS and "~/.kaggle/kaggle.json" in NO_CREDENTIALS
    result = subprocess.run([sys.executable, "-m", "src.kaggle", "push", f"out={tmp_path}"], cwd=ROOT,
                            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == f"push: {NO_CREDENTIALS}"


class FakeCLI:
    def __init__(self, existing=()):
        self.existing, self.commands = set(existing), []

    def __call__(self, command, check=False):
        self.commands.append(command)
        code = 0 if command[:3] != ["kaggle", "datasets", "status"] or command[3] in self.existing else 1
        return subprocess.CompletedProcess(command, code)


def test_push_runs_and_prints_the_cli_commands(tmp_path, runs_dir, capsys):
    package = make(tmp_path, runs_dir, "owner=me")
    env = {"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "secret"}
    cli = FakeCLI(existing={"me/rsna-cspine-weights"})
    _, cfg = kaggle_settings(["push", f"out={package.root}", "message=first"])
    ran = push(cfg, run=cli, env=env)
    assert ran == [["kaggle", "datasets", "create", "-p", str(package.code), "--dir-mode", "zip"],
                   ["kaggle", "datasets", "version", "-p", str(package.weights), "-m", "first", "--dir-mode", "zip"],
                   ["kaggle", "kernels", "push", "-p", str(package.notebook)]]
    printed = capsys.readouterr().out
    assert all("$ " + " ".join(c) in printed for c in ran) and "$ kaggle datasets status me/rsna-cspine-code" in printed
    assert [c for c in cli.commands if c[2] != "status"] == ran
    _, cfg = kaggle_settings(["push", f"out={package.root}", "submit=true", "version=3", "message=v3"])
    assert push(cfg, run=cli, env=env) == [["kaggle", "competitions", "submit",
                                             "rsna-2022-cervical-spine-fracture-detection", "-k",
                                             "me/rsna-cspine-submission", "-v", "3", "-f", "submission.csv", "-m", "v3"]]


def test_push_refuses_a_package_built_for_someone_else(tmp_path, runs_dir):
    package = make(tmp_path, runs_dir)
    assert package.metadata(package.notebook)["id"].startswith(PLACEHOLDER_OWNER + "/")
    _, cfg = kaggle_settings(["push", f"out={package.root}"])
    with pytest.raises(PushError, match="rebuild with owner=me"):
        push(cfg, run=FakeCLI(), env={"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k"})


@pytest.mark.slow
def test_check_in_the_clean_environment_names_a_module_no_wheel_provides(tmp_path, runs_dir, data_dir, monkeypatch):
    """A build that ships no wheel at all: the static check has nothing to miss, so the notebook runs in the
    clean environment, where the image's packages alone cannot import timm (the environment is clean)."""
    monkeypatch.setattr("src.packaging.build.shipped_pins", lambda python_version: [])
    package = make(tmp_path, runs_dir)
    _, cfg = kaggle_settings(["check", f"out={package.root}", f"test_data={data_dir}", "timeout=300"])
    with pytest.raises(CheckFailed, match=r"notebook cell 1 failed: .*missing module\(s\).*timm \(ModuleNotFoundError"):
        check_module.check(cfg, announce=lambda *a: None)


@pytest.mark.slow
def test_check_end_to_end_matches_infer_row_by_row(tmp_path, runs_dir, data_dir, monkeypatch):
    """The whole check offline, no wheel downloaded: the image stand-in is given every package inference needs,
    so the notebook runs infer.py from the read-only datasets, and its submission must equal infer.py's."""
    from src.packaging.environment import closure

    monkeypatch.setattr("src.packaging.build.shipped_pins", lambda python_version: [])
    monkeypatch.setattr("src.packaging.check.image_distributions",
                        lambda python_version: closure([*KAGGLE_IMAGE, *INFERENCE_NEEDS], python_version))
    package = make(tmp_path, runs_dir, "members=[effnet_gru,cnn3d]", "device=cpu")
    _, cfg = kaggle_settings(["check", f"out={package.root}", f"test_data={data_dir}", "timeout=600"])
    result = check_module.check(cfg, announce=lambda *a: None)
    assert result["identical"] and result["rows"] == len(UIDS) * 8 and result["studies_timed"] == len(UIDS)
    assert result["device"] == "cpu" and 0 < result["projected_hours"] < result["limit_hours"]
    work = package.root / "check"
    assert (work / "working" / "submission.csv").read_text() == (work / "reference.csv").read_text()
    assert json.loads((work / "check.json").read_text())["identical"] is True
