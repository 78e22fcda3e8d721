"""Pretraining runs whose train.out_dir is on object storage (a local S3 endpoint)."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from s12mae import storage
from s12mae.cli import main
from s12mae.train.loop import pretrain
from s12mae.train.mirror import RunMirror, default_local_dir

pytest_plugins = ["fixtures_servers"]  # the s3 fixture
pytestmark = pytest.mark.usefixtures("one_thread")


def _names(s3, prefix: str) -> set[str]:
    keys = s3.client().list_objects_v2(Bucket=s3.name, Prefix=prefix).get("Contents", [])
    return {k["Key"][len(prefix):] for k in keys}


def _puts(s3, prefix: str) -> list[str]:
    return [e["path"].split(f"/{s3.name}/{prefix}", 1)[1] for e in s3.server.log
            if e["method"] == "PUT" and e["path"].startswith(f"/{s3.name}/{prefix}")]


class Stop(RuntimeError):
    pass


def _stop_after(step: int):
    def cb(s: int, record: dict) -> None:
        if s == step:
            raise Stop(f"stopped after step {s}")
    return cb


def test_a_run_on_s3_uploads_each_checkpoint_with_latest_last_and_resumes_elsewhere(s3, tiny, tmp_path):
    url = s3.url("runs/mae")
    whole = pretrain(tiny(steps=12, checkpoint_every=3))  # the reference: one uninterrupted local run

    with pytest.raises(Stop):  # the machine "dies" during step 8, after the checkpoints of steps 3 and 6
        pretrain(tiny_config(url, steps=12, checkpoint_every=3, local_dir=str(tmp_path / "a")),
                 callbacks=[_stop_after(7)])
    names = _names(s3, "runs/mae/")
    assert {"latest", "config.yaml", "metrics.jsonl", "checkpoint-00000006/model.safetensors",
            "checkpoint-00000006/state.pt", "checkpoint-00000003/state.pt"} <= names
    assert not any(".tmp" in n or n.startswith(".s12mae") for n in names)  # lock, record, temporaries stay local
    puts = _puts(s3, "runs/mae/")
    first_latest = puts.index("latest")
    assert any(p.startswith("checkpoint-00000003/") for p in puts[:first_latest])  # the folder before its pointer
    assert storage.read_bytes(url + "/latest").decode().strip() == "checkpoint-00000006"

    with pytest.raises(ValueError, match="already holds a run with checkpoints"):  # no silent restart over it
        pretrain(tiny_config(url, steps=12, checkpoint_every=3, local_dir=str(tmp_path / "b")))

    # another machine (an empty working folder) resumes from the URL and finishes the run
    done = pretrain(tiny_config(url, steps=12, checkpoint_every=3, local_dir=str(tmp_path / "c")), resume=True)
    assert [r["step"] for r in done.history] == list(range(12))
    ref = {r["step"]: r["loss"] for r in whole.history}
    assert all(r["loss"] == ref[r["step"]] for r in done.history)  # the same steps as the uninterrupted run
    names = _names(s3, "runs/mae/")
    assert {"encoder.safetensors", "loss_curve.png", "checkpoint-00000012/model.safetensors"} <= names
    assert not any(n.startswith(("checkpoint-00000003/", "checkpoint-00000006/")) for n in names)  # pruned there too
    assert storage.read_bytes(url + "/latest").decode().strip() == "checkpoint-00000012"
    assert storage.read_bytes(url + "/encoder.safetensors") == (done.run_dir / "encoder.safetensors").read_bytes()

    # the first machine comes back: its folder still says checkpoint 6, the URL says 12
    more = pretrain(tiny_config(url, steps=14, checkpoint_every=3, local_dir=str(tmp_path / "a")), resume=True)
    assert [r["step"] for r in more.history] == list(range(14))
    assert storage.read_bytes(url + "/latest").decode().strip() == "checkpoint-00000014"


def test_a_failed_upload_at_a_checkpoint_is_retried_at_the_next(s3, tmp_path, monkeypatch):
    from s12mae.storage import StorageError

    real, calls = RunMirror._push, []

    def flaky(self):
        calls.append(1)
        if len(calls) == 1:
            raise StorageError("s3://bucket/run/latest: throttled (SlowDown), gave up after 5 tries")
        return real(self)

    monkeypatch.setattr(RunMirror, "_push", flaky)
    url = s3.url("runs/flaky")
    with pytest.warns(RuntimeWarning, match="upload failed, retried at the next checkpoint"):
        pretrain(tiny_config(url, steps=6, checkpoint_every=3, local_dir=str(tmp_path / "w")))
    assert len(calls) == 3  # checkpoint 3 (failed), checkpoint 6, the end of the run
    assert storage.read_bytes(url + "/latest").decode().strip() == "checkpoint-00000006"
    assert "checkpoint-00000003/state.pt" in _names(s3, "runs/flaky/")  # uploaded by the retry


def test_the_cli_prints_the_url_and_a_push_uploads_only_what_changed(s3, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("S12MAE_CACHE", str(tmp_path / "cache"))
    url = s3.url("runs/cli")
    main(["pretrain", "--method", "mae", "--model.encoder", "vit_nano_patch8", "--model.decoder", "vitlite_128d2b",
          "--model.img_size", "32", "--data.simulated.num_samples", "16", "--data.simulated.img_size", "32",
          "--optim.name", "adamw", "--optim.warmup_steps", "1", "--train.steps", "2", "--train.batch_size", "4", "--train.checkpoint_every", "2",
          "--train.progress", "false", "--train.out_dir", url])
    local = default_local_dir(url)
    assert f"run folder: {url} (working copy: {local})" in capsys.readouterr().out
    assert (local / "latest").is_file() and "latest" in _names(s3, "runs/cli/")
    mirror = RunMirror(url)
    assert mirror.local == local and mirror.push() == []  # nothing changed since the run's last push
    (local / "notes.txt").write_text("x")
    assert mirror.push() == ["notes.txt"]


def test_fsdp_with_a_url_is_refused_at_config_time():
    with pytest.raises(ValueError, match=r"train.out_dir: s3:// with train.parallel=fsdp"):
        tiny_config("s3://bucket/run", parallel="fsdp")


def test_a_fresh_run_clears_the_stale_cache_of_its_url_but_not_a_given_folder(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("S12MAE_CACHE", str(tmp_path / "cache"))
    url = s3.url("runs/fresh")
    stale = default_local_dir(url)
    stale.mkdir(parents=True)
    (stale / "latest").write_text("checkpoint-00000099\n")  # left by an earlier run whose URL was emptied
    pretrain(tiny_config(url, steps=3, checkpoint_every=3))
    assert storage.read_bytes(url + "/latest").decode().strip() == "checkpoint-00000003"

    given = tmp_path / "mine"
    given.mkdir()
    (given / "latest").write_text("checkpoint-00000099\n")
    with pytest.raises(ValueError, match="train.local_dir holds a run"):
        pretrain(tiny_config(s3.url("runs/other"), steps=3, local_dir=str(given)))
    assert (given / "latest").is_file()  # the user's folder is left as it was
