"""The frozen-feature cache: cached and uncached stages give the same losses, a later stage
reuses the folder, and sources whose inputs or encoder change read their inputs."""

import pytest

from onellm.data.feature_cache import FeatureCache
from onellm.training.recipe import Recipe, read_metrics
from tests.data.conftest import losses, run, stage


def test_feature_cached_and_uncached_stages_give_the_same_losses(tmp_path, manifest):
    plain = run(stage(tmp_path, "plain", "synthetic", "data.image.pool=16"))
    cache = tmp_path / "features"
    cached = run(
        stage(tmp_path, "cached", "synthetic", "data.image.pool=16", f"feature_cache={cache}")
    )
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "plain"), abs=1e-5)
    (folder,) = cache.iterdir()
    assert folder.name.startswith("image-") and len(FeatureCache(folder)) == 16
    assert cached.sources["image"].features is not None and plain.sources["image"].features is None
    start = [m for m in read_metrics(tmp_path / "cached") if m["event"] == "feature_cache"]
    assert start and "cached in" in start[0]["sources"]["image"]
    # a second stage with the same frozen encoder and data reuses the folder
    stamp = (folder / "features-00000.safetensors").stat().st_mtime_ns
    run(stage(tmp_path, "again", "synthetic", "data.image.pool=16", f"feature_cache={cache}"))
    assert [p.name for p in cache.iterdir()] == [folder.name]
    assert (folder / "features-00000.safetensors").stat().st_mtime_ns == stamp


def test_the_cache_stands_aside_where_inputs_or_the_encoder_change(tmp_path):
    cache = tmp_path / "features"
    cached = ("synthetic", "data.image.pool=8", f"feature_cache={cache}")
    trains_encoder = stage(tmp_path, "t", *cached, "trainable=[projection.*, encoder.*]")
    r = Recipe(trains_encoder, quiet=True).setup()
    assert r.sources["image"].features is None
    said = "reads its inputs: encoder trains in this stage, so its features change"
    assert r.cache_notes["image"] == said
    zooms = ("data.image.task=clip", "data.image.zoom=[0.5, 1.0]", "trainable=[encoder.*]")
    r = Recipe(stage(tmp_path, "z", *cached, *zooms), quiet=True).setup()
    said = "reads its inputs: zoom changes the input on every pass (an augmentation)"
    assert r.cache_notes["image"] == said
    assert not cache.exists()


def test_the_cache_is_built_under_the_stages_autocast(tmp_path):
    """bf16: CLIP runs under autocast when uncached, so the cache is built under it too."""
    pool, cached = "data.image.pool=16", f"feature_cache={tmp_path / 'f'}"
    run(stage(tmp_path, "plain", "synthetic", pool, "precision=bf16"))
    run(stage(tmp_path, "cached", "synthetic", pool, "precision=bf16", cached))
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "plain"), abs=1e-5)
    fp32 = run(stage(tmp_path, "fp32", "synthetic", pool, cached))
    assert len(list((tmp_path / "f").iterdir())) == 2  # precision is in the fingerprint
    assert fp32.sources["image"].features is not None
