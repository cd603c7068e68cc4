"""Training's file IO on gs:// paths, against a fake bucket (etils.epath's mock backend mapped to a local folder).

Reference: the bytes written locally by numpy / json for the same content; a
path that escaped epath would land in a local `gs:/...` folder or fail.
"""
import json
import os

import jax
import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from shotstream_jax import checkpoint, sharding
from shotstream_jax.config import get_config
from shotstream_jax.data import manifest, pipeline, toy
from shotstream_jax.train import loop, stages


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """gs://bucket/... served from tmp_path/bucket; yields (root, the gs:// paths touched)."""
    root = tmp_path / "bucket"
    root.mkdir()
    touched = []
    monkeypatch.chdir(tmp_path)  # a path that skipped epath would appear here as ./gs:

    def local(p):
        s = os.fspath(p)
        if s.startswith("gs://bucket"):
            touched.append(s)
            return str(root) + s[len("gs://bucket"):]
        return s

    def redirect(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def redirect2(fn, src, dst, *args, **kwargs):
        return fn(local(src), local(dst), *args, **kwargs)

    def listdir(fn, path):
        return fn(local(path))

    def walk(fn, top, **kwargs):
        yield from fn(local(top), **kwargs)

    with epath_testing.mock_epath(open=redirect, exists=redirect, isdir=redirect, listdir=listdir, glob=redirect,
                                  makedirs=redirect, mkdir=redirect, remove=redirect, rmtree=redirect,
                                  stat=redirect, walk=walk, rename=redirect2, replace=redirect2, copy=redirect2):
        yield root, touched
    assert not (tmp_path / "gs:").exists(), "a gs:// path was written as a local folder"


def test_as_path_keeps_urls_and_absolutises_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(checkpoint.as_path("gs://b/run/x")) == "gs://b/run/x"
    assert str(checkpoint.as_path("run")) == str(tmp_path / "run")


def test_latents_metrics_and_config_on_gs(bucket):
    root, touched = bucket
    (root / "latents").mkdir()
    ex = dict(context=np.arange(24, dtype=np.float32).reshape(2, 3, 4), target_shot=np.int32(1))
    for i in range(3):
        np.savez(root / "latents" / f"{i:06d}.npz", **{k: v + i for k, v in ex.items()})
    np.save(root / "latents" / "negative_text.npy", np.ones((4, 2), np.float16))
    (root / "latents" / ".000003.tmp.npz").write_bytes(b"unfinished")  # an ode_pairs write in flight

    src = pipeline.PreencodedSource("gs://bucket/latents")
    assert len(src) == 3
    np.testing.assert_array_equal(src[2]["context"], ex["context"] + 2)
    batch = next(iter(pipeline.dataset(src, 3, seed=0)))
    np.testing.assert_array_equal(np.sort(batch["target_shot"]), [1, 2, 3])

    cfg = get_config("toy", "dmd_intra")
    cfg.data.latents_dir = "gs://bucket/latents"
    np.testing.assert_array_equal(np.asarray(stages.negative_embedding(cfg)), np.ones((4, 2), np.float32))

    # metrics.jsonl on resume: lines past the restored step are dropped, in the bucket.
    (root / "run").mkdir()
    (root / "run" / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)))
    path = loop._metrics_file(epath.Path("gs://bucket/run"), 3)
    assert str(path) == "gs://bucket/run/metrics.jsonl"
    assert [json.loads(line)["step"] for line in (root / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    checkpoint.write_json("gs://bucket/model/config.json", {"format": "x"})
    assert checkpoint.read_json("gs://bucket/model/config.json") == {"format": "x"}
    assert json.loads((root / "model" / "config.json").read_text()) == {"format": "x"}
    assert any(t.startswith("gs://bucket/latents/") for t in touched)


def test_missing_model_dir_on_gs_names_the_url(bucket):
    cfg = get_config("toy", "teacher")
    with pytest.raises(FileNotFoundError, match="gs://bucket/nothing"):
        stages.dit_params(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]), "gs://bucket/nothing", 0)


def test_raw_manifest_captions_and_videos_on_gs(bucket):
    """Reference: the same toy manifest (relative paths) read from its local folder, example by example."""
    root, touched = bucket
    local = toy.make_toy_dataset(str(root / "data"), num_videos=2)
    cfg = get_config("toy", "teacher")
    got, _ = manifest.read_manifest("gs://bucket/data/manifest.csv")
    want, _ = manifest.read_manifest(local)
    assert [c.video for c in got] == ["gs://bucket/data/0000.mp4", "gs://bucket/data/0001.mp4"]
    assert [(c.ranges, c.prompts) for c in got] == [(c.ranges, c.prompts) for c in want]
    srcs = []
    for path in ("gs://bucket/data/manifest.csv", local):
        cfg.data.manifest = path
        srcs.append(pipeline.source(cfg, "unused"))
    a, b = srcs[0][1], srcs[1][1]
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert {"gs://bucket/data/0001.json", "gs://bucket/data/0001.mp4"} <= set(touched)
