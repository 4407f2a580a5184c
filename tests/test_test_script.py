"""test.py: embeddings per split and language, image-encoder export, metrics JSON, figures."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_MODEL

import train
from models.foodspace import ArchConfig, FoodSpaceNet, ImageEmbedder
from utils.checkpoint import load_checkpoint
from utils.embeddings import load_embeddings
from utils.metrics import METRIC_UNITS, evaluate_retrieval

# "test" is also the name of Python's own regression-test package: load the script by path.
_spec = importlib.util.spec_from_file_location("xmrs_test_script", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)


@pytest.fixture(scope="module")
def trained_run(indexed_set, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return train.main([*TINY_MODEL, "--data_path", str(indexed_set["data"]), "--img_path", str(indexed_set["img"]),
                       "--runs_dir", str(runs), "--batch_size", "8", "--workers", "0", "--epochs", "1",
                       "--max_iters", "2", "--medr", "20", "--projector_every", "0"])


def test_test_script_writes_vectors_encoder_metrics_and_figures(trained_run, indexed_set, tmp_path, capsys):
    metrics_path = tmp_path / "metrics.json"
    results = test_script.main(["--model_init_path", str(trained_run / "models" / "model_BEST_REC_e*.pth.tar"),
                                "--partitions", "test,val", "--language", "all", "--workers", "0",
                                "--medr", "10", "--vis", "3", "--metrics_json", str(metrics_path)])
    manifest = json.loads((indexed_set["data"] / "manifest.json").read_text())
    ckpt_path = next((trained_run / "models").glob("model_BEST_REC_e*[0-9].pth.tar"))
    name = ckpt_path.name.removesuffix(".pth.tar")
    stamp = trained_run.name.split("__")[0]
    for partition in ("test", "val"):
        n = manifest["counts"][partition]
        for lang in manifest["languages"]:
            path = trained_run / f"foodSpace_vectors_{stamp}_{name}_{partition}_{lang}.npz"
            emb = load_embeddings(path)  # allow_pickle=False inside
            assert emb["img_embeds"].shape == (n, 32) and emb["rec_embeds"].shape == (n, 32)
            assert emb["img_embeds"].dtype == np.float32 and emb["rec_ids"].dtype == np.dtype("<U10")
            np.testing.assert_allclose(np.linalg.norm(emb["rec_embeds"], axis=1), 1.0, atol=1e-5)
            # the printed / returned numbers are the protocol applied to the saved vectors
            assert results[partition][lang] == evaluate_retrieval(emb["img_embeds"], emb["rec_embeds"], medr=[10])
    saved = json.loads(metrics_path.read_text())
    assert saved.pop("units") == METRIC_UNITS and "fractions in [0, 1]" in METRIC_UNITS["R@1, R@5, R@10"]
    assert saved == results
    assert set(saved["test"]["en"]["10"]) == {"n", "bags", "im2rec", "rec2im"}
    assert set(saved["test"]["en"]["10"]["im2rec"]) == {"medR", "R@1", "R@5", "R@10"}
    for direction in ("im2rec", "rec2im"):
        assert (trained_run / "vis" / f"{name}_test_en_{direction}.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert f"metrics -> {metrics_path} (recalls as fractions in [0, 1]" in out
    assert f"figures (3 test/en queries, top 3 each) -> {trained_run / 'vis' / name}_test_en_im2rec.png" in out
    assert "replacing" not in out
    # A second --vis run of the checkpoint says that it replaces the figures; nothing else is left in vis/.
    test_script.main(["--model_init_path", str(ckpt_path), "--partitions", "test", "--workers", "0",
                      "--medr", "10", "--vis", "2"])
    assert "(replacing those of an earlier --vis run of this checkpoint)" in capsys.readouterr().out
    assert sorted(p.name for p in (trained_run / "vis").iterdir()) == [
        f"{name}_test_en_im2rec.png", f"{name}_test_en_rec2im.png"]

    # The exported image branch alone reproduces the full model's image embeddings.
    encoder = load_checkpoint(trained_run / "models" / f"{name}_image_encoder.pth.tar")
    ckpt = load_checkpoint(ckpt_path)
    alone = ImageEmbedder(ArchConfig.from_dict(encoder["arch"]))
    alone.load_state_dict(encoder["model"])
    full = FoodSpaceNet(ArchConfig.from_dict(ckpt["arch"]))
    full.load_state_dict(ckpt["model"])
    images = torch.randn(4, 3, 64, 64)
    alone.eval()
    full.eval()
    with torch.no_grad():
        torch.testing.assert_close(alone(images), full.embed_images(images))


def test_embeddings_mode_and_glob_rules(trained_run, tmp_path):
    vectors = sorted(trained_run.glob("foodSpace_vectors_*_test_en.npz"))
    if not vectors:  # the other test may not have run first
        test_script.main(["--model_init_path", str(trained_run / "models" / "model.pth.tar"),
                          "--partitions", "test", "--workers", "0", "--medr", "10"])
        vectors = sorted(trained_run.glob("foodSpace_vectors_*_test_en.npz"))
    out = tmp_path / "m.json"
    results = test_script.main(["--embeddings", str(vectors[0]), "--metrics_json", str(out)])
    assert json.loads(out.read_text()) == {"units": METRIC_UNITS, **results} and "all" in results  # 20 < 1000
    with pytest.raises(SystemExit, match="matches 2 checkpoints|matches 3 checkpoints"):
        test_script.main(["--model_init_path", str(trained_run / "models" / "model*.pth.tar")])
    with pytest.raises(SystemExit, match="no checkpoint"):
        test_script.main(["--model_init_path", str(trained_run / "models" / "*_image_encoder.pth.tar")])
