"""GAN_train.py, GAN_test.py and utils/frechet.py end to end on the synthetic set (docs/synthesis.md).

One encoder run (train.py then test.py) is shared by the module; on it three GAN runs are made:
two epochs straight, one epoch, and that one resumed to two, which must equal the straight run.
"""

import csv
import importlib.util
import json
import math
import re
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, TINY_MODEL
from PIL import Image

import GAN_test
import GAN_train
import models.gan_step
import train
from data.gan_dataset import gan_image
from models.foodspace import ArchConfig, ImageEmbedder
from models.gan import Discriminator128, GANConfig, Generator
from models.gan_augment import parse_aug
from models.gan_losses import KL_WEIGHT, class_weights, encode_generated, freeze_encoder
from models.gan_sampling import draw_noise, generate, parse_noise_mode
from utils.embeddings import load_embeddings
from utils.frechet import frechet_distance, frechet_from_stats, ledoit_wolf
from utils.metrics import METRIC_UNITS
from utils.runs import ENCODER_SUFFIX

# "test" is also Python's regression-test package: load the script by path.
_spec = importlib.util.spec_from_file_location("xmrs_test_script_gan", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

GAN_TINY = ["--Z_DIM", "8", "--GF_DIM", "4", "--DF_DIM", "4", "--EMBEDDING_DIM", "8", "--R_NUM", "1",
            "--embDim", "32", "--batch_size", "8", "--max_iters", "2", "--workers", "0", "--no_cuda",
            "--grid_n", "4", "--medr", "1000"]
LOSS_TAGS = ("D/loss", "D/real_fake", "D/class", "G/loss", "G/adversarial", "G/class", "G/kl",
             "G/cycle_img_img", "G/cycle_img_rec", "D/acc_real", "D/acc_fake")


@pytest.fixture(scope="module")
def encoder_run(indexed_set, tmp_path_factory):
    """A train.py run with test.py's embeddings for test, val and train and the exported image encoder."""
    runs = tmp_path_factory.mktemp("gan_runs")
    run = train.main([*TINY_MODEL, "--data_path", str(indexed_set["data"]), "--img_path", str(indexed_set["img"]),
                      "--runs_dir", str(runs), "--batch_size", "8", "--workers", "0", "--epochs", "1",
                      "--max_iters", "2", "--medr", "20", "--projector_every", "0"])
    best = next(p for p in (run / "models").glob("model_BEST_REC_*.pth.tar") if not p.name.endswith(ENCODER_SUFFIX))
    test_script.main(["--model_init_path", str(best), "--partitions", "test,val,train", "--workers", "0",
                      "--medr", "20"])
    return run


@pytest.fixture(scope="module")
def gan_runs(encoder_run):
    full = GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--epochs", "2"])
    half = GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--epochs", "1"])
    resumed = GAN_train.main(["--resume", str(half), "--epochs", "2", "--workers", "0", "--no_cuda"])
    return {"full": full, "half": half, "resumed": resumed}


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, acc.Tags()["images"]


# --------------------------------------------------------------------------- end to end


def test_run_folder_checkpoints_trace_and_events(gan_runs, encoder_run):
    run = gan_runs["full"]
    assert run.parent == encoder_run / "GAN_runs" and run.name.startswith("GAN_")
    assert gan_runs["half"] != run and gan_runs["half"].parent == run.parent  # a second run gets its own folder
    for name in ("G_best", "D_best", "G_last", "D_last"):
        ckpt = torch.load(run / f"{name}.pth.tar", map_location="cpu", weights_only=True)
        assert ckpt["kind"] == ("gan_G" if name[0] == "G" else "gan_D")
        assert ckpt["gan"]["z_dim"] == 8 and ckpt["gan"]["gf_dim"] == 4 and ckpt["gan"]["emb_dim"] == 32
        assert ckpt["optimizer"]["state"] and ckpt["optimizer"]["param_groups"][0]["betas"] == (0.5, 0.999)
        assert ckpt["epoch"] == (1 if name.endswith("last") else ckpt["best"]["epoch"])
        assert ckpt["encoder"]["ckpt_name"].startswith("model_BEST_REC_")
    last = torch.load(run / "G_last.pth.tar", weights_only=True)
    assert last["iteration"] == 4 and last["opts"]["encoder_dir"] == str(encoder_run)
    G = Generator(GANConfig.from_dict(last["gan"]))
    G.load_state_dict(last["model"])  # strict: GAN_test rebuilds G from the checkpoint alone
    D = Discriminator128(GANConfig.from_dict(last["gan"]))
    D.load_state_dict(torch.load(run / "D_last.pth.tar", weights_only=True)["model"])

    with open(run / "trace.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["epoch", "lr", "medR", "R@1", "R@5", "R@10"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1]
    n_val = len(load_embeddings(last["encoder"]["embeddings"]["val"])["rec_ids"])
    for r in rows[1:]:
        assert float(r[1]) == pytest.approx(1e-4)
        assert 1 <= float(r[2]) <= n_val and all(0 <= float(v) <= 1 for v in r[3:])
        assert float(r[3]) <= float(r[4]) <= float(r[5])

    scalars, images = _events(run)
    for tag in LOSS_TAGS:
        assert [s for s, _ in scalars[tag]] == [1, 2, 3, 4], tag
        assert all(math.isfinite(v) for _, v in scalars[tag]), tag
    assert all(0 <= v <= 2 for tag in ("G/cycle_img_img", "G/cycle_img_rec") for _, v in scalars[tag])
    for k, name in enumerate(["medR", "R@1", "R@5", "R@10"]):
        assert [s for s, _ in scalars[f"val/{name}"]] == [0, 1]
        assert [v for _, v in scalars[f"val/{name}"]] == pytest.approx([float(r[2 + k]) for r in rows[1:]])
    assert [v for _, v in scalars["lr/G"]] == pytest.approx([1e-4, 1e-4])
    for tag in ("val/frechet", "val/spread_generated", "val/spread_recipes"):
        assert [s for s, _ in scalars[tag]] == [0, 1] and all(v >= 0 for _, v in scalars[tag]), tag
    # the recipes' spread is the val recipe embeddings' own: the same every epoch
    assert scalars["val/spread_recipes"][0][1] == scalars["val/spread_recipes"][1][1] > 0
    assert "val/fixed_noise_grid" in images
    with Image.open(run / "grid_e001.png") as grid:  # 2 rows (real, generated) x 4 val recipes
        assert grid.size == (4 * 130 + 2, 2 * 130 + 2)
    opts = json.loads((run / "opts.json").read_text())
    assert opts["gan"]["ef_dim"] == 8 and opts["encoder"]["path"].endswith(ENCODER_SUFFIX)


def test_resume_equals_an_uninterrupted_run(gan_runs):
    assert gan_runs["resumed"] == gan_runs["half"]
    for name in ("G_last", "D_last"):
        a = torch.load(gan_runs["full"] / f"{name}.pth.tar", weights_only=True)
        b = torch.load(gan_runs["half"] / f"{name}.pth.tar", weights_only=True)
        assert a["epoch"] == b["epoch"] == 1 and a["iteration"] == b["iteration"] == 4
        assert a["model"].keys() == b["model"].keys()
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), (name, key)
        for idx, state in a["optimizer"]["state"].items():
            assert torch.equal(state["exp_avg"], b["optimizer"]["state"][idx]["exp_avg"]), (name, idx)
    assert (gan_runs["full"] / "trace.csv").read_text() == (gan_runs["half"] / "trace.csv").read_text()
    scalars, _ = _events(gan_runs["half"])
    assert [s for s, _ in scalars["G/loss"]] == [1, 2, 3, 4]


def test_torchrun_two_cpu_processes_keep_replicas_equal(encoder_run, tmp_path, torchrun):
    out = torchrun("GAN_train.py", [*GAN_TINY, "--batch_size", "4", "--epochs", "1", "--encoder_dir",
                                    str(encoder_run)], cwd=tmp_path)
    lines = {rank: re.search(rf"rank {rank}/2: (trained on .*)", text).group(1) for rank, text in out.items()}
    assert lines[0].startswith("trained on 8 images") and lines[0] == lines[1]  # same G and D on both ranks
    runs = sorted((encoder_run / "GAN_runs").iterdir(), key=lambda p: p.stat().st_mtime)
    ckpt = torch.load(runs[-1] / "G_last.pth.tar", weights_only=True)
    assert ckpt["iteration"] == 2 and len(ckpt["rng"]) == 2


def test_missing_files_name_the_test_py_command(encoder_run, tmp_path):
    empty = tmp_path / "empty_run"
    (empty / "models").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"python test\.py --model_init_path .*model_BEST_REC_\*\.pth\.tar"):
        GAN_train.main([*GAN_TINY, "--encoder_dir", str(empty)])
    # The encoder is there but the val embeddings of its checkpoint are not.
    partial = tmp_path / "partial_run"
    (partial / "models").mkdir(parents=True)
    for path in (encoder_run / "models").glob(f"*{ENCODER_SUFFIX}"):
        (partial / "models" / path.name).symlink_to(path)
    for path in encoder_run.glob("foodSpace_vectors_*.npz"):
        if not path.name.endswith("_val_en.npz"):
            (partial / path.name).symlink_to(path)
    with pytest.raises(SystemExit, match=r"_val_en\.npz.*python test\.py .*--partitions test,val,train"):
        GAN_train.main([*GAN_TINY, "--encoder_dir", str(partial)])
    # German embeddings were never made.
    with pytest.raises(SystemExit, match=r"_train_de\.npz.*--language de"):
        GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--language", "3"])


def test_a_failed_start_leaves_no_gan_run_folder(encoder_run, tmp_path):
    before = sorted((encoder_run / "GAN_runs").glob("GAN_*")) if (encoder_run / "GAN_runs").is_dir() else []
    with pytest.raises(SystemExit, match=r"^error: --resume_G: checkpoint not found: .*nope\.pth\.tar$"):
        GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--resume_G", str(tmp_path / "nope.pth.tar")])
    after = sorted((encoder_run / "GAN_runs").glob("GAN_*")) if (encoder_run / "GAN_runs").is_dir() else []
    assert after == before


def test_gan_test_outputs_and_metrics(gan_runs, encoder_run, indexed_set, tmp_path):
    g_path = gan_runs["full"] / "G_best.pth.tar"
    metrics_path = tmp_path / "metrics.json"
    returned = GAN_test.main(["--trained_G_model_path", str(g_path), "--no_cuda", "--workers", "0",
                              "--batch_size", "7", "--r1m_path", str(indexed_set["r1m"]), "--noise_mode",
                              "BATCH_RANDOM", "--num_images", "2", "--synthesis_n", "3", "--synthesis_k", "2",
                              "--metrics_json", str(metrics_path)])
    emb = load_embeddings(next(encoder_run.glob("foodSpace_vectors_*_test_en.npz")))
    ids, n = [str(i) for i in emb["rec_ids"]], len(emb["rec_ids"])
    layer1 = {r["id"]: r for r in json.loads((indexed_set["r1m"] / "layer1.json").read_text())}
    out = gan_runs["full"] / "generated"
    assert sorted(p.name for p in out.iterdir()) == sorted(ids)  # every test recipe, none dropped
    for rid in ids:
        with Image.open(out / rid / "generated_0.png") as a, Image.open(out / rid / "generated_1.png") as b:
            assert a.size == b.size == (128, 128)
            assert not np.array_equal(np.asarray(a), np.asarray(b))  # two random noises
        with Image.open(out / rid / "real.png") as real:
            assert real.size == (128, 128)
        text = (out / rid / "recipe.txt").read_text()
        assert text.splitlines()[0] == layer1[rid]["title"].strip()
        first_step = next(s["text"].strip() for s in layer1[rid]["instructions"] if s["text"].strip())
        assert f"1. {first_step}" in text

    metrics = json.loads(metrics_path.read_text())
    assert metrics["fake2rec"] == returned["fake2rec"] and metrics["units"] == METRIC_UNITS
    for direction in ("fake2rec", "rec2fake", "fake2img", "img2fake"):
        entry = metrics[direction]["all"]  # 20 test recipes: the 1k bag falls back to the whole split
        assert entry["n"] == n and entry["bags"] == 1
        assert 1 <= entry["medR"] <= n and 0 <= entry["R@1"] <= entry["R@5"] <= entry["R@10"] <= 1

    # Brute force: the reference's zero noise (z = 0, eps per recipe from the seeded stream), G's output
    # as it is (the reference's ImageNet space), shrunk to the encoder's crop size (64 here) with
    # antialiasing, the frozen encoder, dense ranks.
    ckpt = torch.load(g_path, weights_only=True)
    G = Generator(GANConfig.from_dict(ckpt["gan"]))
    G.load_state_dict(ckpt["model"])
    G.eval()
    enc_ckpt = torch.load(ckpt["encoder"]["path"], weights_only=True)
    encoder = ImageEmbedder(ArchConfig.from_dict(enc_ckpt["arch"]))
    encoder.load_state_dict(enc_ckpt["model"])
    encoder.eval()
    rec = torch.from_numpy(emb["rec_embeds"])
    with torch.no_grad():
        eps = torch.randn(n, 8, generator=torch.Generator().manual_seed(1234))  # --seed 1234
        x, _, _ = G(rec, torch.zeros(n, 8), eps=eps)
        size = enc_ckpt["image_size"]
        assert size == 64 and ckpt["encoder"]["input_size"] == 64
        gen = encoder(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)).double()
    sims = F.normalize(gen, dim=1) @ F.normalize(rec.double(), dim=1).T  # (N, N)
    ranks = 1 + (sims > sims.diagonal()[:, None]).sum(1).numpy()
    assert metrics["fake2rec"]["all"]["medR"] == pytest.approx(float(np.median(ranks)))
    assert metrics["fake2rec"]["all"]["R@5"] == pytest.approx(float(np.mean(ranks <= 5)))

    fd = metrics["frechet"]
    assert math.isfinite(metrics["frechet_distance"]) and metrics["frechet_distance"] >= 0
    assert fd["n_a"] == n and fd["n_b"] == n and fd["dim"] == 32 and "small sample" in fd["note"]
    with Image.open(gan_runs["full"] / "synthesis.png") as fig:  # title, real, 2 from recipe, 2 from image
        assert fig.size == (150 + 5 * (128 + 4), 20 + 3 * (128 + 4))


def test_gan_test_reads_each_checkpoint_once(gan_runs, encoder_run, tmp_path, monkeypatch):
    """The exported encoder gives its lineage and then its weights from one read (no second torch.load)."""
    read = []
    real_load = torch.load

    def counting_load(path, *args, **kwargs):
        read.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    GAN_test.main(["--trained_G_model_path", str(gan_runs["full"] / "G_best.pth.tar"), "--no_cuda", "--workers", "0",
                   "--save_images", "false", "--synthesis_n", "0", "--out_dir", str(tmp_path / "out")])
    encoder = next((encoder_run / "models").glob(f"*{ENCODER_SUFFIX}")).name
    assert read.count(encoder) == 1 and read.count("G_best.pth.tar") == 1
    assert len(read) == len(set(read)), read


# --------------------------------------------------------------------------- units


def _tiny_nets(seed=0):
    torch.manual_seed(seed)
    cfg = GANConfig(z_dim=8, gf_dim=4, df_dim=4, ef_dim=8, r_num=1, emb_dim=32, num_classes=5)
    G, D = Generator(cfg), Discriminator128(cfg)
    D.logits_class.requires_grad_(False)
    encoder = freeze_encoder(ImageEmbedder(ArchConfig(image_backbone="resnet18", emb_dim=32, bert_hidden=32,
                                                      bert_intermediate=64, vocab_size=50)))
    opt_G = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=1e-3, betas=(0.5, 0.999))
    scalers = [torch.amp.GradScaler("cpu", enabled=False) for _ in range(2)]
    return cfg, GAN_train.Nets(G, D, encoder, opt_G, opt_D, *scalers)


def test_gan_step_updates_g_and_d_but_not_the_encoder():
    from contextlib import nullcontext

    cfg, nets = _tiny_nets()
    before = {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
              for name, m in (("G", nets.G), ("D", nets.D), ("E", nets.encoder))}
    real = torch.randn(3, 3, 128, 128)
    rec, img = F.normalize(torch.randn(3, 32), dim=1), F.normalize(torch.randn(3, 32), dim=1)
    terms = GAN_train.gan_step(nets, cfg, real, rec, img, torch.tensor([0, 2, 4]), class_weights(5),
                               w_img_img=32.0, w_img_rec=32.0, ctx=nullcontext())
    assert set(terms) == set(LOSS_TAGS) and all(math.isfinite(v) for v in terms.values())
    assert terms["G/loss"] == pytest.approx(terms["G/adversarial"] + terms["G/class"] + 2 * terms["G/kl"]
                                            + 32 * terms["G/cycle_img_img"] + 32 * terms["G/cycle_img_rec"], rel=1e-5)
    changed = {name: [k for k, v in m.state_dict().items() if not torch.equal(v, before[name][k])]
               for name, m in (("G", nets.G), ("D", nets.D), ("E", nets.encoder))}
    assert "ca_net.fc.weight" in changed["G"] and "img_net2.img.0.weight" in changed["G"]
    assert "semantic_branch.weight" in changed["D"] and "jointConv.0.weight" in changed["D"]
    assert not any(k.startswith("logits_class") for k in changed["D"])  # defined but unused
    assert changed["E"] == [] and all(p.grad is None for p in nets.encoder.parameters())
    assert nets.encoder.training is False
    assert 0 <= terms["D/acc_real"] <= 1 and terms["D/acc_fake"] in (0, 1 / 3, 2 / 3, 1)


def test_probe_measures_each_term_at_the_output_and_leaves_the_step_unchanged():
    from contextlib import nullcontext

    real = torch.randn(3, 3, 128, 128)
    rec, img = F.normalize(torch.randn(3, 32), dim=1), F.normalize(torch.randn(3, 32), dim=1)
    results = []
    for probe in (False, True):
        cfg, nets = _tiny_nets()
        torch.manual_seed(9)
        terms = GAN_train.gan_step(nets, cfg, real, rec, img, torch.tensor([0, 2, 4]), class_weights(5),
                                   w_img_img=32.0, w_img_rec=32.0, ctx=nullcontext(), probe=probe)
        results.append((terms, nets.G.state_dict()))
    (plain, g_plain), (probed, g_probed) = results
    assert all(torch.equal(g_plain[k], g_probed[k]) for k in g_plain)
    assert all(plain[k] == probed[k] for k in plain)
    grads = {k: v for k, v in probed.items() if k.startswith("G/grad/")}
    assert set(grads) == {"G/grad/adversarial", "G/grad/class", "G/grad/cycle_img_img", "G/grad/cycle_img_rec"}
    assert all(v > 0 and math.isfinite(v) for v in grads.values())
    # The layout term, when on, is probed like the others.
    cfg, nets = _tiny_nets()
    torch.manual_seed(9)
    terms = GAN_train.gan_step(nets, cfg, real, rec, img, torch.tensor([0, 2, 4]), class_weights(5), w_img_img=32.0,
                               w_img_rec=32.0, ctx=nullcontext(), probe=True, w_layout=5.0, layout_size=8)
    assert terms["G/grad/layout"] > 0 and math.isfinite(terms["G/grad/layout"])


def test_gan_step_without_cycle_terms():
    from contextlib import nullcontext

    cfg, nets = _tiny_nets()
    real = torch.randn(3, 3, 128, 128)
    rec, img = F.normalize(torch.randn(3, 32), dim=1), F.normalize(torch.randn(3, 32), dim=1)
    # Cycle weights 0 switch the terms (and the encoder) off.
    nets.encoder.forward = None  # would fail if called
    terms = GAN_train.gan_step(nets, cfg, real, rec, img, torch.tensor([1, 2, 3]), class_weights(5),
                               w_img_img=0.0, w_img_rec=0.0, ctx=nullcontext())
    assert "G/cycle_img_img" not in terms and "G/cycle_img_rec" not in terms


def test_noise_modes_follow_the_reference():
    """z as the reference's GAN_test sets it per mode; eps (conditioning noise) per recipe in every mode."""
    cfg = GANConfig(z_dim=8, gf_dim=4, df_dim=4, ef_dim=6, r_num=1, emb_dim=32, num_classes=5)

    def stream(*shapes):
        gen = torch.Generator().manual_seed(1)
        return [torch.randn(*shape, generator=gen) for shape in shapes]

    z, eps = draw_noise(5, cfg, "BATCH_RANDOM", 1)
    z_ref, eps_ref = stream((5, 8), (5, 6))
    assert torch.equal(z, z_ref) and torch.equal(eps, eps_ref) and not torch.equal(z[0], z[1])
    z, eps = draw_noise(5, cfg, "SINGLE_RANDOM", 1)
    z_one, eps_ref = stream((1, 8), (5, 6))
    assert torch.equal(z, z_one.expand(5, 8)) and torch.equal(eps, eps_ref) and not torch.equal(eps[0], eps[1])
    z, eps = draw_noise(5, cfg, "ZERO", 1)
    (eps_ref,) = stream((5, 6))
    assert z.shape == (5, 8) and not z.any() and torch.equal(eps, eps_ref)
    z, eps = draw_noise(5, cfg, "MEAN", 1)  # this project's deterministic mode: c = mu
    assert not z.any() and not eps.any() and eps.shape == (5, 6)
    assert torch.equal(draw_noise(5, cfg, "random", 1)[0], draw_noise(5, cfg, "BATCH_RANDOM", 1)[0])
    assert not torch.equal(draw_noise(5, cfg, "BATCH_RANDOM", 2)[0], draw_noise(5, cfg, "BATCH_RANDOM", 1)[0])
    with pytest.raises(Exception, match="BATCH_RANDOM, SINGLE_RANDOM, ZERO or MEAN"):
        parse_noise_mode("loud")

    # generate() feeds exactly these to G: ZERO mode is c = mu + sigma * eps, not c = mu.
    from contextlib import nullcontext

    torch.manual_seed(0)
    G = Generator(cfg).eval()
    embs = F.normalize(torch.randn(5, 32), dim=1)
    pixels = []
    generate(G, embs, mode="ZERO", seed=1, batch_size=2, device="cpu", ctx=nullcontext(),
             on_batch=lambda start, px: pixels.append(px))
    with torch.no_grad():
        expected = G.to_pixels(G(embs, torch.zeros(5, 8), eps=eps_ref)[0])
        mean_only = G.to_pixels(G(embs, torch.zeros(5, 8), eps=torch.zeros(5, 6))[0])
    assert torch.allclose(torch.cat(pixels), expected, atol=1e-6)
    assert not torch.allclose(expected, mean_only, atol=1e-3)


def test_output_space_is_the_references_by_default():
    """D and the encoder get G's tanh output as it is (taken for an ImageNet-normalised image)."""
    from contextlib import nullcontext

    cfg, nets = _tiny_nets()
    assert cfg.output_space == "imagenet" and GAN_train.get_parser().parse_args(["--encoder_dir", "RUN"]).G_output_space == "imagenet"
    seen = {}
    nets.D.register_forward_pre_hook(lambda m, inputs: seen.setdefault("D", []).append(inputs[0].detach().clone()))
    nets.encoder.register_forward_pre_hook(lambda m, inputs: seen.setdefault("E", inputs[0].detach().clone()))
    G_before = {k: v.clone() for k, v in nets.G.state_dict().items()}
    real = torch.randn(3, 3, 128, 128)
    rec, img = F.normalize(torch.randn(3, 32), dim=1), F.normalize(torch.randn(3, 32), dim=1)
    torch.manual_seed(5)
    GAN_train.gan_step(nets, cfg, real, rec, img, torch.tensor([0, 2, 4]), class_weights(5),
                       w_img_img=32.0, w_img_rec=32.0, ctx=nullcontext())
    # Replay G's forward (train mode, same z and eps draws from the global RNG) with the old weights.
    replay = Generator(cfg)
    replay.load_state_dict(G_before)
    torch.manual_seed(5)
    z = torch.randn(3, cfg.z_dim)
    fake = replay(rec, z)[0].detach()
    assert torch.equal(seen["D"][0], real) and torch.allclose(seen["D"][1], fake, atol=1e-6)
    size = nets.encoder.input_size if hasattr(nets.encoder, "input_size") else 224
    expected = F.interpolate(fake, size=(size, size), mode="bilinear", align_corners=True)
    assert torch.allclose(seen["E"], expected, atol=1e-5)


def test_validation_noise_is_the_references_seeded():
    """Validation generates with random z and random eps (BATCH_RANDOM), seeded: the same every epoch."""
    from contextlib import nullcontext

    cfg, nets = _tiny_nets()
    args = GAN_train.get_parser().parse_args(["--encoder_dir", "RUN", "--medr", "6", "--seed", "3", "--batch_size", "4"])
    assert args.val_noise_mode == "BATCH_RANDOM"
    val_rec = F.normalize(torch.randn(6, 32), dim=1)

    class Writer:
        def add_scalar(self, *a):
            pass

    sched = GAN_train.Schedule(lr_G=1e-4, lr_D=1e-4)
    val_img = F.normalize(torch.randn(6, 32), dim=1)
    m1 = GAN_train.validate_epoch(args, 0, nets.G, nets.encoder, val_rec, val_img, "cpu", nullcontext(), Writer(),
                                  print, sched)
    m2 = GAN_train.validate_epoch(args, 1, nets.G, nets.encoder, val_rec, val_img, "cpu", nullcontext(), Writer(),
                                  print, sched)
    assert m1 == m2
    z, eps = draw_noise(6, cfg, "BATCH_RANDOM", 3)
    nets.G.eval()
    with torch.no_grad():
        gen = encode_generated(nets.encoder, nets.G(val_rec, z, eps=eps)[0], cfg.output_space)
    nets.G.train()
    expected = GAN_train.evaluate_retrieval(gen, val_rec, medr=[6], seed=3)["6"]["im2rec"]
    assert m1 == expected


def test_generation_is_independent_of_the_batch_size():
    cfg = GANConfig(z_dim=8, gf_dim=4, df_dim=4, ef_dim=6, r_num=1, emb_dim=32, num_classes=5)
    from contextlib import nullcontext

    torch.manual_seed(0)
    G = Generator(cfg)
    embs = torch.randn(10, 32)
    runs = []
    for batch_size in (3, 10):
        pixels = []
        generate(G, embs, mode="BATCH_RANDOM", seed=5, batch_size=batch_size, device="cpu",
                 ctx=nullcontext(), on_batch=lambda start, px, out=pixels: out.append(px))
        runs.append(torch.cat(pixels))
    assert runs[0].shape == (10, 3, 128, 128) and 0 <= runs[0].min() and runs[0].max() <= 1
    assert torch.allclose(runs[0], runs[1], atol=1e-6)
    assert G.training  # restored


def test_real_image_view():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    a = gan_image(img, None)
    assert a.shape == (3, 128, 128) and torch.equal(a, gan_image(img, None))
    r1 = gan_image(img, np.random.default_rng(1))
    assert torch.equal(r1, gan_image(img, np.random.default_rng(1)))
    assert any(not torch.equal(r1, gan_image(img, np.random.default_rng(s))) for s in range(2, 6))
    # A left-red / right-blue image keeps red on the left in the centre crop.
    two = np.zeros((256, 512, 3), np.uint8)
    two[:, :256, 0], two[:, 256:, 2] = 255, 255
    v = gan_image(Image.fromarray(two), None)
    assert v[0, :, :40].mean() > v[2, :, :40].mean() and v[2, :, -40:].mean() > v[0, :, -40:].mean()


def test_lr_schedule():
    args = Namespace(auto_drop_lr=False, drop_G_lr_epoch=2, drop_D_lr_epoch=0, auto_drop_times=2,
                     auto_drop_after_epochs=1)
    sched = GAN_train.Schedule(lr_G=1e-4, lr_D=1e-4)
    for epoch in range(5):
        GAN_train.end_of_epoch_lr(args, sched, epoch, best_epoch=0)
    assert sched.lr_G == pytest.approx(1e-5) and sched.lr_D == pytest.approx(1e-4)  # D: never
    args.auto_drop_lr = True
    sched = GAN_train.Schedule(lr_G=1e-4, lr_D=1e-4)
    lrs = []
    # The reference's rule: best at epoch 0, patience 1: halve after every epoch more than 1 past the
    # best (epochs 2, 3, ...), no reset after a drop, at most auto_drop_times (2) drops.
    for epoch in range(8):
        GAN_train.end_of_epoch_lr(args, sched, epoch, best_epoch=0)
        lrs.append(sched.lr_G)
    assert lrs == pytest.approx([1e-4, 1e-4, 5e-5, 2.5e-5, 2.5e-5, 2.5e-5, 2.5e-5, 2.5e-5])
    assert sched.lr_D == pytest.approx(2.5e-5) and sched.auto_drops == 2
    # A new best restarts the count: best at epoch 3 -> next drop after epoch 5.
    args.auto_drop_times = 3
    sched = GAN_train.Schedule(lr_G=1e-4, lr_D=1e-4)
    lrs = []
    for epoch in range(7):
        GAN_train.end_of_epoch_lr(args, sched, epoch, best_epoch=0 if epoch < 3 else 3)
        lrs.append(sched.lr_G)
    assert lrs == pytest.approx([1e-4, 1e-4, 5e-5, 5e-5, 5e-5, 2.5e-5, 1.25e-5])


def test_auto_drop_counts_any_recall_as_the_reference():
    # A trace where R@1 + R@5 + R@10 never beats epoch 0 but single recalls do (epochs 1, 2): the
    # reference (best replaced whenever any recall beats the stored triple) keeps epoch 2 as the best
    # and halves after epochs 4, 5, 6; the sum rule would halve after epochs 2, 3, 4.
    trace = [(0.10, 0.30, 0.50), (0.12, 0.20, 0.30), (0.11, 0.21, 0.31), (0.05, 0.10, 0.20),
             (0.05, 0.10, 0.20), (0.05, 0.10, 0.20), (0.05, 0.10, 0.20), (0.05, 0.10, 0.20)]
    args = Namespace(auto_drop_lr=True, drop_G_lr_epoch=0, drop_D_lr_epoch=0, auto_drop_times=3,
                     auto_drop_after_epochs=1)
    sched, lr_best, lrs, bests = GAN_train.Schedule(lr_G=1e-4, lr_D=1e-4), GAN_train.LrBest(), [], []
    for epoch, (r1, r5, r10) in enumerate(trace):
        lr_best = GAN_train.reference_best(lr_best, {"medR": 9.0, "R@1": r1, "R@5": r5, "R@10": r10}, epoch)
        GAN_train.end_of_epoch_lr(args, sched, epoch, lr_best.epoch)
        lrs.append(sched.lr_G)
        bests.append(lr_best.epoch)
    assert bests == [0, 1, 2, 2, 2, 2, 2, 2]
    assert lr_best.to_dict() == {"r1": 0.11, "r5": 0.21, "r10": 0.31, "epoch": 2}  # the triple replaced whole
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-4, 1e-4, 5e-5, 2.5e-5, 1.25e-5, 1.25e-5])
    assert sched.lr_D == pytest.approx(1.25e-5)
    # An epoch that equals the stored recalls is no better (strict >, as the reference).
    assert GAN_train.reference_best(lr_best, {"R@1": 0.11, "R@5": 0.21, "R@10": 0.31}, 9).epoch == 2


# --------------------------------------------------------------------------- Frechet distance


def test_frechet_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6)
    closed = np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_from_stats(m1, np.diag(s1), m2, np.diag(s2), method="eigh")[0] == pytest.approx(closed, rel=1e-12)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    full_a, full_b = a @ a.T, b @ b.T
    fd_eigh, _ = frechet_from_stats(m1, full_a, m2, full_b, method="eigh")
    # tr sqrt(A B) from the eigenvalues of A B itself (real and positive for PSD A, B).
    direct = np.sum((m1 - m2) ** 2) + np.trace(full_a + full_b) - 2 * np.sqrt(np.linalg.eigvals(full_a @ full_b).real).sum()
    assert fd_eigh == pytest.approx(direct, rel=1e-9)
    pytest.importorskip("scipy")
    assert frechet_from_stats(m1, full_a, m2, full_b, method="scipy")[0] == pytest.approx(fd_eigh, rel=1e-9)


def test_frechet_from_samples():
    rng = np.random.default_rng(1)
    m1, m2, s1, s2 = np.zeros(4), np.full(4, 0.5), np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])
    a = m1 + rng.normal(size=(100_000, 4)) * np.sqrt(s1)
    b = m2 + rng.normal(size=(100_000, 4)) * np.sqrt(s2)
    closed = np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    result = frechet_distance(a, b)
    assert result.distance == pytest.approx(closed, rel=0.03) and result.shrinkage is None and result.note == ""
    assert frechet_distance(a, a).distance == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(torch.from_numpy(a[:500]), b[:500], method="eigh").distance == pytest.approx(
        frechet_distance(a[:500], b[:500], method="eigh").distance)


def test_frechet_small_samples_use_ledoit_wolf():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 16))
    shrunk, d = ledoit_wolf(x)
    # Ledoit & Wolf (2004) with the normalised Frobenius norm <A, B> = tr(A B^T) / p.
    n, p = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    m = np.trace(s) / p
    d2 = np.sum((s - m * np.eye(p)) ** 2) / p
    b2 = min(sum(np.sum((np.outer(r, r) - s) ** 2) / p for r in xc) / n**2, d2)
    assert d == pytest.approx(b2 / d2) and 0 < d < 1
    assert np.allclose(shrunk, (1 - d) * s + d * m * np.eye(p))
    y = rng.normal(size=(12, 16)) + 1.0
    result = frechet_distance(x, y)
    assert result.shrinkage is not None and "small sample" in result.note and math.isfinite(result.distance)
    expected, _ = frechet_from_stats(x.mean(0), ledoit_wolf(x)[0], y.mean(0), ledoit_wolf(y)[0])
    assert result.distance == pytest.approx(expected)
    fixed = frechet_distance(x, y, shrinkage=0.5)
    assert fixed.shrinkage == (0.5, 0.5) and fixed.distance != pytest.approx(result.distance)
    assert frechet_distance(x, y, shrinkage="none").shrinkage is None
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(x, rng.normal(size=(12, 15)))


def test_scripts_import_without_side_effects():
    for module in (GAN_train, GAN_test):
        parser = module.get_parser()
        assert all(a.help for a in parser._actions if a.option_strings and a.dest != "help")
    args = GAN_train.get_parser().parse_args(["--encoder_dir", "RUN"])
    assert (args.batch_size, args.Z_DIM, args.W_IMG_IMG_COS_LOSS, args.drop_G_lr_epoch) == (48, 100, 32.0, 30)


def test_spread_against_brute_force():
    x = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    cos = x @ x.T
    brute = 1 - (cos.sum() - cos.diagonal().sum()) / (7 * 6)
    assert GAN_train.spread(x) == pytest.approx(float(brute), rel=1e-12)
    assert GAN_train.spread(x[:1].expand(6, 5)) == pytest.approx(0.0, abs=1e-12)  # mode collapse


def test_encode_generated_shrinks_with_antialias_and_grows_as_the_reference():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.flatten(1)[:, :4]

    enc = freeze_encoder(Probe())
    fake = torch.rand(2, 3, 128, 128) * 2 - 1
    enc.input_size = 64  # a demo-size encoder: G's 128 px output is shrunk like PIL shrank the real images
    encode_generated(enc, fake, "imagenet")
    assert torch.allclose(seen[-1], F.interpolate(fake, size=(64, 64), mode="bilinear", antialias=True), atol=1e-6)
    for half in (torch.float16, torch.bfloat16):  # under autocast: no half-precision antialias kernel on CPU
        encode_generated(enc, fake.to(half), "imagenet")
        assert seen[-1].dtype == half
        assert torch.allclose(seen[-1].float(), seen[0], atol=2e-2)
    enc.input_size = 160  # larger: bilinear upsampling with align_corners, the reference's layer
    encode_generated(enc, fake, "imagenet")
    assert torch.allclose(seen[-1], F.interpolate(fake, size=(160, 160), mode="bilinear", align_corners=True),
                          atol=1e-6)


# --------------------------------------------------------------------------- the independent judge


@pytest.fixture(scope="module")
def judge_run(encoder_run, indexed_set):
    """Another train.py run on the same LMDB (another seed) with test.py's outputs: a judge of G."""
    run = train.main([*TINY_MODEL, "--data_path", str(indexed_set["data"]), "--img_path", str(indexed_set["img"]),
                      "--runs_dir", str(encoder_run.parent), "--batch_size", "8", "--workers", "0", "--epochs", "1",
                      "--max_iters", "2", "--medr", "20", "--projector_every", "0", "--seed", "4321",
                      "--experiment_sufix", "_judge"])
    best = next(p for p in (run / "models").glob("model_BEST_REC_*.pth.tar") if not p.name.endswith(ENCODER_SUFFIX))
    test_script.main(["--model_init_path", str(best), "--partitions", "test,val", "--workers", "0", "--medr", "20"])
    return run


def _frozen_encoder(path):
    enc_ckpt = torch.load(path, weights_only=True)
    encoder = ImageEmbedder(ArchConfig.from_dict(enc_ckpt["arch"]))
    encoder.load_state_dict(enc_ckpt["model"])
    return encoder.eval(), enc_ckpt["image_size"]


def _dense_ranks(queries, candidates):
    sims = F.normalize(queries.double(), dim=1) @ F.normalize(candidates.double(), dim=1).T  # (N, N)
    return 1 + (sims > sims.diagonal()[:, None]).sum(1).numpy()


def test_gan_test_judge_against_brute_force(gan_runs, encoder_run, judge_run, tmp_path):
    g_path = gan_runs["full"] / "G_best.pth.tar"
    metrics = GAN_test.main(["--trained_G_model_path", str(g_path), "--no_cuda", "--workers", "0", "--batch_size",
                             "7", "--save_images", "false", "--synthesis_n", "0", "--judge_dir", str(judge_run),
                             "--metrics_json", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text())["judge"] == metrics["judge"]
    own = load_embeddings(next(encoder_run.glob("foodSpace_vectors_*_test_en.npz")))
    jud = load_embeddings(next(judge_run.glob("foodSpace_vectors_*_test_en.npz")))
    n = len(own["rec_ids"])
    ckpt = torch.load(g_path, weights_only=True)
    G = Generator(GANConfig.from_dict(ckpt["gan"]))
    G.load_state_dict(ckpt["model"])
    G.eval()
    judge, size = _frozen_encoder(next((judge_run / "models").glob(f"*{ENCODER_SUFFIX}")))
    with torch.no_grad():  # the scored images: ZERO noise drawn from --seed 1234, G drawing from G's own recipes
        eps = torch.randn(n, 8, generator=torch.Generator().manual_seed(1234))
        x, _, _ = G(torch.from_numpy(own["rec_embeds"]), torch.zeros(n, 8), eps=eps)
        gen = judge(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True))
    rec_j, img_j = torch.from_numpy(jud["rec_embeds"]), torch.from_numpy(jud["img_embeds"])
    fake_ranks, real_ranks = _dense_ranks(gen, rec_j), _dense_ranks(img_j, rec_j)
    entry = metrics["judge"]
    assert entry["fake2rec"]["all"]["n"] == n
    assert entry["fake2rec"]["all"]["medR"] == pytest.approx(float(np.median(fake_ranks)))
    assert entry["fake2rec"]["all"]["R@5"] == pytest.approx(float(np.mean(fake_ranks <= 5)))
    assert entry["real2rec"]["all"]["medR"] == pytest.approx(float(np.median(real_ranks)))
    assert entry["real2rec"]["all"]["R@10"] == pytest.approx(float(np.mean(real_ranks <= 10)))
    assert entry["ratio"]["all"]["medR"] == pytest.approx(np.median(fake_ranks) / np.median(real_ranks))
    own_real = _dense_ranks(torch.from_numpy(own["img_embeds"]), torch.from_numpy(own["rec_embeds"]))
    assert metrics["real2rec"]["all"]["medR"] == pytest.approx(float(np.median(own_real)))
    g = F.normalize(gen.double(), dim=1)
    off_diag = (g @ g.T).sum() - n
    assert entry["spread"]["generated"] == pytest.approx(float(1 - off_diag / (n * (n - 1))), abs=1e-6)
    # The judge does not change the own encoder's rows: the same as without it.
    plain = GAN_test.main(["--trained_G_model_path", str(g_path), "--no_cuda", "--workers", "0", "--batch_size",
                           "7", "--save_images", "false", "--synthesis_n", "0"])
    assert plain["fake2rec"] == metrics["fake2rec"] and "judge" not in plain


def test_judge_refusals(gan_runs, encoder_run, judge_run, indexed_set, tmp_path):
    g_path = str(gan_runs["full"] / "G_best.pth.tar")
    common = ["--trained_G_model_path", g_path, "--no_cuda", "--workers", "0", "--synthesis_n", "0"]
    with pytest.raises(SystemExit, match=r"^error: --judge_dir .*the same run as G's encoder"):
        GAN_test.main([*common, "--judge_dir", str(encoder_run)])
    copy = tmp_path / "copy_of_g_run"  # a copy of G's own run is the same encoder
    shutil.copytree(encoder_run, copy, ignore=shutil.ignore_patterns("GAN_runs"))
    with pytest.raises(SystemExit, match=r"^error: --judge_dir .*copy_of_g_run: the same run as G's encoder"):
        GAN_test.main([*common, "--judge_dir", str(copy)])
    # A judge trained on another LMDB (another vocabulary in its manifest).
    other_data = tmp_path / "other_lmdb"
    shutil.copytree(indexed_set["data"], other_data)
    manifest = json.loads((other_data / "manifest.json").read_text())
    (other_data / "manifest.json").write_text(json.dumps({**manifest, "vocab_size": manifest["vocab_size"] + 1}))
    other = tmp_path / "other_judge"
    shutil.copytree(judge_run, other)
    opts = (other / "opts.json").read_text().replace(json.dumps(str(indexed_set["data"])), json.dumps(str(other_data)))
    assert str(other_data) in opts
    (other / "opts.json").write_text(opts)
    for main, args in ((GAN_test.main, common), (GAN_train.main, [*GAN_TINY, "--encoder_dir", str(encoder_run)])):
        with pytest.raises(SystemExit, match=r"^error: --judge_dir .*other_judge: trained on .*other_lmdb, not on"):
            main([*args, "--judge_dir", str(other)])
    # The same LMDB copied elsewhere is the same data: accepted up to the recipes' check.
    (other_data / "manifest.json").write_text(json.dumps(manifest))
    GAN_test.main([*common, "--judge_dir", str(other), "--save_images", "false"])


def _as_old_opts_txt(run: Path, **changes) -> None:
    """Turn a train.py run's opts.json into the opts.txt it wrote before the one options format."""
    opts = {**json.loads((run / "opts.json").read_text()), **changes}
    (run / "opts.json").unlink()
    (run / "opts.txt").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in sorted(opts.items())))


def test_an_older_runs_opts_txt_is_still_read(gan_runs, encoder_run, judge_run, tmp_path):
    """GAN_train.py and GAN_test.py read an encoder (or judge) run's options from its opts.txt when it has no opts.json."""
    nowhere = tmp_path / "nowhere"
    old = tmp_path / "old_encoder_run"
    shutil.copytree(encoder_run, old, ignore=shutil.ignore_patterns("GAN_runs"))
    _as_old_opts_txt(old, data_path=str(nowhere))  # GAN_train.py's default --data_path comes from it
    with pytest.raises(SystemExit, match=r"^error: .*is --data_path .*nowhere the folder create_lmdb.py wrote"):
        GAN_train.main([*GAN_TINY, "--encoder_dir", str(old)])
    judge = tmp_path / "old_judge"
    shutil.copytree(judge_run, judge)
    _as_old_opts_txt(judge, data_path=str(nowhere))  # the judge's LMDB, compared with G's
    common = ["--trained_G_model_path", str(gan_runs["full"] / "G_best.pth.tar"), "--no_cuda", "--workers", "0",
              "--synthesis_n", "0"]
    for main, args in ((GAN_test.main, common), (GAN_train.main, [*GAN_TINY, "--encoder_dir", str(encoder_run)])):
        with pytest.raises(SystemExit, match=r"^error: --judge_dir .*old_judge: trained on .*nowhere, not on"):
            main([*args, "--judge_dir", str(judge)])


def test_gan_train_logs_bad_images_as_train_py(encoder_run, indexed_set, tmp_path):
    """Each unreadable image's recipe is logged once, and each epoch's count (train.txt, TensorBoard bad_images/train)."""
    from data.lmdb_format import RecordReader, keys_file, lmdb_dir
    from data.recipe1m import image_path, load_keys

    img = tmp_path / "images"
    shutil.copytree(indexed_set["img"], img)
    rid = str(load_embeddings(next(encoder_run.glob("foodSpace_vectors_*_train_en.npz")))["rec_ids"][0])
    assert rid in load_keys(keys_file(indexed_set["data"], "train"))
    for image_id in RecordReader(lmdb_dir(indexed_set["data"], "train")).get(rid).images:
        image_path(img, "train", image_id).unlink()
    run = GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--epochs", "1", "--max_iters", "0",
                          "--img_path", str(img), "--max_bad_images", "0.5"])
    log = (run / "train.txt").read_text()
    assert log.count(f"epoch 0: skipping recipe {rid}: ") == 1
    assert "epoch 0: 1 samples skipped for an unreadable image (1 of " in log
    assert _events(run)[0]["bad_images/train"] == [(0, 1.0)]


def test_gan_train_judge_only_watches(encoder_run, judge_run):
    """--judge_dir adds val_judge/* and trace columns; G and D train bit for bit as without it."""
    plain = GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--epochs", "1"])
    judged = GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--epochs", "1",
                             "--judge_dir", str(judge_run)])
    for name in ("G_last.pth.tar", "D_last.pth.tar"):
        a, b = (torch.load(r / name, weights_only=True)["model"] for r in (plain, judged))
        assert all(torch.equal(a[k], b[k]) for k in a)
    with open(judged / "trace.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == GAN_train.TRACE_HEADER + GAN_train.JUDGE_HEADER and len(rows) == 2
    with open(plain / "trace.csv", newline="") as handle:
        assert next(csv.reader(handle)) == GAN_train.TRACE_HEADER
    judge_medr = float(rows[1][6])
    n_val = len(load_embeddings(next(judge_run.glob("foodSpace_vectors_*_val_en.npz")))["rec_ids"])
    assert 1 <= judge_medr <= n_val and "val_judge/medR" in _events(judged)[0]


def test_terms_read_in_batches_equal_the_per_step_reads(encoder_run, monkeypatch):
    """Every GAN term stays on the device until a log step or the epoch's end; TensorBoard gets each
    step's value, equal to what float() read right after the step."""
    seen = []
    step = GAN_train.gan_step

    def spy(*args, **kwargs):
        terms = step(*args, **kwargs)
        assert kwargs.get("as_tensors") and all(torch.is_tensor(v) for v in terms.values())
        seen.append({k: float(v) for k, v in terms.items()})
        return terms

    monkeypatch.setattr(GAN_train, "gan_step", spy)
    run = GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--epochs", "1", "--max_iters", "3",
                          "--log_every", "2", "--probe_every", "2"])
    scalars, _ = _events(run)
    assert len(seen) == 3 and "G/grad/adversarial" in seen[0] and "G/grad/adversarial" not in seen[1]
    for tag in {k for terms in seen for k in terms}:
        assert scalars[tag] == [(i + 1, float(np.float32(t[tag]))) for i, t in enumerate(seen) if tag in t], tag


def test_new_step_flags_at_their_neutral_values_change_nothing():
    from contextlib import nullcontext

    real = torch.randn(3, 3, 128, 128)
    rec, img = F.normalize(torch.randn(3, 32), dim=1), F.normalize(torch.randn(3, 32), dim=1)
    runs = []
    for extra in ({}, {"cycle_aug": parse_aug("none"), "d_aug": parse_aug("none"), "d_noise": 0.0, "w_layout": 0.0,
                       "cycle_both": False, "cycle_space": None, "w_kl": KL_WEIGHT}):
        cfg, nets = _tiny_nets()
        torch.manual_seed(9)
        terms = GAN_train.gan_step(nets, cfg, real, rec, img, torch.tensor([0, 2, 4]), class_weights(5),
                                   w_img_img=32.0, w_img_rec=32.0, ctx=nullcontext(), **extra)
        runs.append((terms, nets.G.state_dict(), nets.D.state_dict(), torch.rand(1)))
    (a, ga, da, ra), (b, gb, db, rb) = runs
    assert a == b and torch.equal(ra, rb)  # same losses, and no extra draw from the global RNG
    assert all(torch.equal(ga[k], gb[k]) for k in ga) and all(torch.equal(da[k], db[k]) for k in da)
    args = GAN_train.get_parser().parse_args(["--encoder_dir", "x"])
    assert args.cycle_aug == () and args.D_aug == () and args.D_noise == 0.0 and args.judge_dir == ""
    assert args.W_LAYOUT_LOSS == 0.0 and args.cycle_both is False and args.cycle_whiten == 0.0
    assert args.W_KL_LOSS == KL_WEIGHT == 2.0 and args.G_whiten == 0.0


def test_layout_loss_against_brute_force():
    from models.gan_losses import layout_loss
    from utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

    gen = torch.Generator().manual_seed(3)
    fake, real = torch.randn(2, 3, 12, 12, generator=gen), torch.randn(2, 3, 12, 12, generator=gen)
    total = 0.0
    for b in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(4):  # each 3 x 3 block's mean, in pixel units
                    block = (slice(3 * i, 3 * i + 3), slice(3 * j, 3 * j + 3))
                    f = float(fake[b, c][block].mean()) * IMAGENET_STD[c] + IMAGENET_MEAN[c]
                    r = float(real[b, c][block].mean()) * IMAGENET_STD[c] + IMAGENET_MEAN[c]
                    total += abs(f - r)
    assert float(layout_loss(fake, real, 4)) == pytest.approx(total / (2 * 3 * 4 * 4), rel=1e-5)
    assert float(layout_loss(real, real, 4)) == 0.0


def test_layout_term_joins_gs_loss():
    """--W_LAYOUT_LOSS w adds w x the layout term, of G's image before the update, to G's loss."""
    from contextlib import nullcontext

    from models.gan_losses import layout_loss

    real = torch.randn(3, 3, 128, 128)
    rec, img = F.normalize(torch.randn(3, 32), dim=1), F.normalize(torch.randn(3, 32), dim=1)
    out = {}
    for w in (0.0, 5.0):
        cfg, nets = _tiny_nets()
        torch.manual_seed(9)
        out[w] = GAN_train.gan_step(nets, cfg, real, rec, img, torch.tensor([0, 2, 4]), class_weights(5),
                                    w_img_img=32.0, w_img_rec=32.0, ctx=nullcontext(), w_layout=w, layout_size=8)
    cfg, nets = _tiny_nets()
    torch.manual_seed(9)
    z = torch.randn(3, cfg.z_dim)
    with torch.no_grad():
        fake, _, _ = nets.G(rec, z)
        expected = float(layout_loss(nets.G.to_imagenet(fake), real, 8))
    assert "G/layout" not in out[0.0] and out[5.0]["G/layout"] == pytest.approx(expected, rel=1e-5)
    assert out[5.0]["G/loss"] == pytest.approx(out[0.0]["G/loss"] + 5.0 * expected, rel=1e-5)


def test_cycle_aug_feeds_the_encoder_a_view_of_gs_images(monkeypatch):
    from contextlib import nullcontext

    real = torch.randn(3, 3, 128, 128)
    rec, img = F.normalize(torch.randn(3, 32), dim=1), F.normalize(torch.randn(3, 32), dim=1)
    seen = {}

    def mirror(images, ops, generator=None):  # a deterministic stand-in for the random view
        seen.setdefault(ops, []).append(images.detach().clone())
        return images.flip(-1)

    monkeypatch.setattr(models.gan_step, "random_view_imagenet", mirror)
    cfg, nets = _tiny_nets()
    torch.manual_seed(9)
    terms = GAN_train.gan_step(nets, cfg, real, rec, img, torch.tensor([0, 2, 4]), class_weights(5),
                               w_img_img=32.0, w_img_rec=32.0, ctx=nullcontext(), cycle_aug=("flip",))
    (fake_in,) = seen[("flip",)]  # G's image in D's space, before the G update
    with torch.no_grad():
        emb = encode_generated(nets.encoder, fake_in.flip(-1), "imagenet")
    assert terms["G/cycle_img_rec"] == pytest.approx(float((1 - F.cosine_similarity(emb, rec)).mean()), rel=1e-5)
    assert terms["G/cycle_img_img"] == pytest.approx(float((1 - F.cosine_similarity(emb, img)).mean()), rel=1e-5)


def test_whitening_against_brute_force():
    from models.gan_losses import whiten, whitening

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) @ np.diag([3.0, 1.0, 0.5, 0.1, 0.01, 0.001]) @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
    for ridge in (1e-12, 0.1):
        mean, w = whitening(x, ridge)
        c = np.cov(x.T)
        lam, u = np.linalg.eigh(c)
        expected = u @ np.diag(1 / np.sqrt(lam + ridge * lam.max())) @ u.T
        assert np.allclose(w.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        assert np.allclose(mean.numpy(), x.mean(0), atol=1e-6)
    y = whiten(torch.tensor(x, dtype=torch.float32), whitening(x, 1e-12)).double().numpy()
    assert np.allclose(np.cov(y.T), np.eye(6), atol=2e-3)  # unit variance in every direction, however thin
    with pytest.raises(ValueError, match="ridge > 0"):
        whitening(x, 0.0)


def test_cycle_both_and_whiten_give_the_cycle_terms_they_name(monkeypatch):
    """--cycle_both: the mean of the terms on G's image and on its view; --cycle_whiten: cosines of whitened vectors."""
    from contextlib import nullcontext

    from models.gan_losses import whiten, whitening

    real = torch.randn(3, 3, 128, 128)
    rec, img = F.normalize(torch.randn(3, 32), dim=1), F.normalize(torch.randn(3, 32), dim=1)
    space = whitening(F.normalize(torch.randn(50, 32), dim=1), 1e-3)
    seen = []

    def mirror(images, ops, generator=None):  # a deterministic stand-in for the random view
        if not ops:  # D's view (no --D_aug): the images themselves
            return images
        seen.append(images.detach().clone())
        return images.flip(-1)

    monkeypatch.setattr(models.gan_step, "random_view_imagenet", mirror)
    for space_or_none in (None, space):
        seen.clear()
        cfg, nets = _tiny_nets()
        torch.manual_seed(9)
        terms = GAN_train.gan_step(nets, cfg, real, rec, img, torch.tensor([0, 2, 4]), class_weights(5),
                                   w_img_img=32.0, w_img_rec=32.0, ctx=nullcontext(), cycle_aug=("flip",),
                                   cycle_both=True, cycle_space=space_or_none)
        (fake_in,) = seen  # G's image in D's space, before the G update
        with torch.no_grad():
            embs = [encode_generated(nets.encoder, x, "imagenet") for x in (fake_in, fake_in.flip(-1))]
        for name, target in (("G/cycle_img_rec", rec), ("G/cycle_img_img", img)):
            expected = []
            for emb in embs:
                a, b = (emb, target) if space_or_none is None else (whiten(emb, space), whiten(target, space))
                expected.append(float((1 - F.cosine_similarity(a, b)).mean()))
            assert terms[name] == pytest.approx(sum(expected) / 2, rel=1e-5), name


def test_cycle_flags_are_checked_before_any_work():
    from utils.errors import InputError

    parser = GAN_train.get_parser()
    with pytest.raises(InputError, match="--cycle_aug"):
        GAN_train.check_cycle_flags(parser.parse_args(["--encoder_dir", "x", "--cycle_both"]))
    with pytest.raises(InputError, match="ridge >= 0"):
        GAN_train.check_cycle_flags(parser.parse_args(["--encoder_dir", "x", "--cycle_whiten", "-1"]))
    with pytest.raises(InputError, match="W_KL_LOSS"):
        GAN_train.check_cycle_flags(parser.parse_args(["--encoder_dir", "x", "--W_KL_LOSS", "-1"]))
    GAN_train.check_cycle_flags(parser.parse_args(["--encoder_dir", "x", "--cycle_both", "--cycle_aug", "all",
                                                   "--cycle_whiten", "1e-4"]))


def test_class_whitening_against_brute_force():
    from models.gan_losses import CHUNK_ROWS, class_whitening

    rng = np.random.default_rng(1)
    classes = rng.integers(0, 4, size=300)  # 0: background, left out of the covariance
    centres = rng.normal(size=(4, 5)) * np.array([5.0, 0.1, 0.1, 0.1, 0.1])
    x = centres[classes] + rng.normal(size=(300, 5)) * np.array([3.0, 0.05, 0.02, 1.0, 0.01])
    mean, w = class_whitening(x, classes, 1e-12)
    keep = classes > 0
    r = np.concatenate([x[classes == k] - x[classes == k].mean(0) for k in (1, 2, 3)])
    sw = r.T @ r / (keep.sum() - 3)
    lam, u = np.linalg.eigh(sw)
    expected = u @ np.diag(1 / np.sqrt(lam + 1e-12 * lam.max())) @ u.T
    assert np.allclose(w.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert np.allclose(mean.numpy(), x.mean(0), atol=1e-6)
    wd = w.double().numpy()
    assert np.allclose(wd.T @ sw @ wd, np.eye(5), atol=1e-3)  # within-class spread: 1 in every direction
    assert 40000 > 2 * CHUNK_ROWS  # more rows than two float64 chunks
    big_classes = rng.integers(0, 4, size=40000)
    big = centres[big_classes] + rng.normal(size=(40000, 5)) * np.array([3.0, 0.05, 0.02, 1.0, 0.01])
    r = np.concatenate([big[big_classes == k] - big[big_classes == k].mean(0) for k in (1, 2, 3)])
    lam, u = np.linalg.eigh(r.T @ r / ((big_classes > 0).sum() - 3))
    mean, w = class_whitening(big.astype(np.float32), big_classes, 1e-12)
    expected = u @ np.diag(1 / np.sqrt(lam + 1e-12 * lam.max())) @ u.T
    assert np.allclose(w.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert np.allclose(mean.numpy(), big.mean(0), atol=1e-5)
    # a list of arrays is their concatenation (cut off the chunk boundaries)
    cuts = [0, 7000, 30000, 40000]
    mean_l, w_l = class_whitening([big[a:b].astype(np.float32) for a, b in zip(cuts, cuts[1:])],
                                  [big_classes[a:b] for a, b in zip(cuts, cuts[1:])], 1e-12)
    assert np.allclose(w_l.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert np.allclose(mean_l.numpy(), big.mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        class_whitening([x, x], [classes], 1e-4)  # two arrays, one class vector
    with pytest.raises(ValueError, match="two classes"):
        class_whitening(x, np.where(classes > 1, 2, 0), 1e-4)  # one class besides background
    with pytest.raises(ValueError, match="ridge > 0"):
        class_whitening(x, classes, 0.0)


def test_g_whiten_feeds_g_the_whitened_embeddings():
    cfg = GANConfig(z_dim=8, gf_dim=4, df_dim=4, ef_dim=6, r_num=1, emb_dim=32, num_classes=5, emb_scale=2.0)
    assert not any(k.startswith("in_") for k in Generator(cfg).state_dict())  # off: the reference's G
    torch.manual_seed(0)
    plain = Generator(cfg).eval()
    white = Generator(GANConfig(**{**cfg.to_dict(), "input_whiten": 1e-4})).eval()
    white.load_state_dict({**plain.state_dict(), "in_mean": white.in_mean, "in_w": white.in_w})
    mean, w = torch.randn(32), torch.randn(32, 32) / 6
    white.set_input_whitening(mean, w)
    emb, z, eps = torch.randn(4, 32), torch.randn(4, 8), torch.randn(4, 6)
    with torch.no_grad():
        assert torch.allclose(white(emb, z, eps=eps)[0], plain((emb - mean) @ w, z, eps=eps)[0], atol=1e-6)
    with pytest.raises(ValueError, match="input whitening"):
        plain.set_input_whitening(mean, w)
    with pytest.raises(ValueError, match="G_whiten"):
        GANConfig(input_whiten=-1.0)


def test_g_whiten_run_stores_the_train_statistics_of_both_modalities_and_gan_test_uses_them(encoder_run, indexed_set, tmp_path):
    from data.gan_dataset import GANDataset, load_partition_embeddings
    from models.gan_losses import class_whitening
    from utils.checkpoint import load_checkpoint
    from utils.runs import find_encoder_files

    run = GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--epochs", "1", "--G_whiten", "1e-3"])
    ckpt = load_checkpoint(run / "G_last.pth.tar")
    assert ckpt["gan"]["input_whiten"] == 1e-3
    files = find_encoder_files(encoder_run, "en")
    emb = load_partition_embeddings(files.embeddings["train"], indexed_set["data"], "train")
    classes = GANDataset(indexed_set["data"], indexed_set["img"], "train", emb, train=True).classes()
    assert (classes > 0).any() and len(set(classes.tolist())) > 2
    # G draws from either modality: the statistics of both, given as a list (not concatenated)
    mean, w = class_whitening([emb["rec_embeds"], emb["img_embeds"]], [classes, classes], 1e-3)
    both = np.concatenate([emb["rec_embeds"], emb["img_embeds"]])
    mean_cat, w_cat = class_whitening(both, np.concatenate([classes, classes]), 1e-3)
    assert torch.allclose(mean, mean_cat, atol=1e-6) and torch.allclose(w, w_cat, rtol=1e-4, atol=1e-4 * w.abs().max())
    assert torch.equal(ckpt["model"]["in_mean"], mean) and torch.equal(ckpt["model"]["in_w"], w)
    out = tmp_path / "m.json"
    GAN_test.main(["--trained_G_model_path", str(run / "G_last.pth.tar"), "--no_cuda", "--workers", "0",
                   "--r1m_path", str(indexed_set["r1m"]), "--synthesis_n", "2", "--metrics_json", str(out)])
    assert json.loads(out.read_text())["fake2rec"]  # G loaded with its whitening (a strict state dict)


def test_resume_g_loads_a_reference_state_dict_also_into_a_whitened_g(tmp_path):
    from utils.checkpoint import save_checkpoint
    from utils.errors import InputError

    cfg = GANConfig(z_dim=8, gf_dim=4, df_dim=4, ef_dim=6, r_num=1, emb_dim=32, num_classes=5)
    torch.manual_seed(3)
    ref = Generator(cfg)
    path = tmp_path / "netG_reference.pth"  # the reference saves DataParallel's state dict
    save_checkpoint({f"module.{k}": v for k, v in ref.state_dict().items()}, path)
    for whiten, post, coarse in ((0.0, False, 4), (0.0, False, 0), (1e-4, False, 0), (1e-4, True, 0)):
        G = Generator(GANConfig(**{**cfg.to_dict(), "input_whiten": whiten, "class_posterior": post,
                                   "coarse_rgb": coarse}))
        GAN_train.init_weights(G, str(path), "G")
        state = G.state_dict()
        assert all(torch.equal(state[k], v) for k, v in ref.state_dict().items())
        added = ({"in_mean", "in_w"} if whiten else set()) | ({"cls_means", "cls_mask", "cls_codes"} if post else set())
        assert set(state) - set(ref.state_dict()) == added | ({"coarse_w", "coarse_b"} if coarse else set())
        if coarse:  # zeros: G draws as the reference G it was loaded from
            assert not state["coarse_w"].any() and not state["coarse_b"].any()
    whitened = tmp_path / "G_whitened.pth"  # a whitened G into a plain one: refused, its input would differ
    save_checkpoint({"model": {k: v for k, v in G.state_dict().items() if not k.startswith("cls_")}}, whitened)
    with pytest.raises(InputError, match=r"^--resume_G .*G_whitened\.pth: architecture differs: [^\n]*in_mean[^\n]*$"):
        GAN_train.init_weights(Generator(cfg), str(whitened), "G")


def test_class_posterior_feeds_g_the_posterior_weighted_class_codes():
    cfg = GANConfig(z_dim=8, gf_dim=4, df_dim=4, ef_dim=6, r_num=1, emb_dim=16, num_classes=4, input_whiten=1e-4)
    assert not any(k.startswith("cls_") for k in Generator(cfg).state_dict())  # off: no class code
    torch.manual_seed(0)
    white = Generator(cfg).eval()
    post_cfg = GANConfig(**{**cfg.to_dict(), "class_posterior": True, "class_residual": 0.1})
    post = Generator(post_cfg).eval()
    post.load_state_dict({**white.state_dict(), **{k: v for k, v in post.state_dict().items() if k.startswith("cls_")}})
    mean, w = torch.randn(16), torch.randn(16, 16) / 4
    white.set_input_whitening(mean, w)
    post.set_input_whitening(mean, w)
    means = torch.randn(8, 16) * 3
    mask = torch.tensor([False, True, True, False, False, True, True, True])  # class 3 has images only
    post.set_class_means(means, mask)
    emb, z, eps = torch.randn(5, 16), torch.randn(5, 8), torch.randn(5, 6)
    x = (emb - mean) @ w  # brute force: a Gaussian per known mean, a class's two components summed
    lik = torch.stack([torch.exp(-0.5 * ((x - m) ** 2).sum(1)) if k else torch.zeros(5)
                       for m, k in zip(means.double(), mask)], 1)  # (5, 8)
    p = lik / lik.sum(1, keepdim=True)
    p = p[:, :4] + p[:, 4:]  # (5, 4)
    expect = (p.float() @ post.cls_codes) + 0.1 * x
    assert torch.allclose(post.class_code(x), expect, atol=1e-5)
    assert torch.allclose(post.cls_codes.norm(dim=1), torch.ones(4))
    with torch.no_grad():
        assert torch.allclose(post(emb, z, eps=eps)[0], white(expect @ torch.linalg.inv(w) + mean, z, eps=eps)[0],
                              atol=1e-4)
    near = (means[5] @ torch.linalg.inv(w) + mean)[None]  # at class 1's image mean: its code alone, nearly
    assert torch.allclose(post.class_code((near - mean) @ w) - 0.1 * means[5], post.cls_codes[1], atol=1e-3)
    with pytest.raises(ValueError, match="no class mean"):
        post.set_class_means(means, torch.zeros(8, dtype=torch.bool))
    with pytest.raises(ValueError, match="class posterior"):
        white.set_class_means(means, mask)
    with pytest.raises(ValueError, match="--G_whiten"):
        GANConfig(class_posterior=True)
    with pytest.raises(ValueError, match="--G_class_posterior"):
        GANConfig(input_whiten=1e-4, class_residual=0.1)


def _bilinear_brute(img: np.ndarray, size: int) -> np.ndarray:
    """Upsample ``(C, s, s)`` to ``(C, size, size)``, half-pixel centres, edges clamped (align_corners=False)."""
    s = img.shape[-1]
    src = np.clip((np.arange(size) + 0.5) * s / size - 0.5, 0, s - 1)
    i0 = np.floor(src).astype(int)
    i1, t = np.minimum(i0 + 1, s - 1), src - np.floor(src)
    rows = img[:, i0, :] * (1 - t)[None, :, None] + img[:, i1, :] * t[None, :, None]  # (C, size, s)
    return rows[:, :, i0] * (1 - t) + rows[:, :, i1] * t


def test_coarse_rgb_adds_a_linear_image_of_mu_before_the_tanh():
    from models.gan import COARSE_GAIN

    cfg = GANConfig(z_dim=8, gf_dim=4, df_dim=4, ef_dim=6, r_num=1, emb_dim=16, num_classes=4)
    torch.manual_seed(0)
    plain = Generator(cfg)
    torch.manual_seed(0)
    coarse = Generator(GANConfig(**{**cfg.to_dict(), "coarse_rgb": 4}))
    assert set(coarse.state_dict()) - set(plain.state_dict()) == {"coarse_w", "coarse_b"}
    assert all(torch.equal(coarse.state_dict()[k], v) for k, v in plain.state_dict().items())  # no RNG draw
    emb, z, eps = torch.randn(3, 16), torch.randn(3, 8), torch.randn(3, 6)
    with torch.no_grad():
        for mode in (True, False):  # at its zeros: G as without it, in train and eval mode
            assert torch.equal(coarse.train(mode)(emb, z, eps=eps)[0], plain.train(mode)(emb, z, eps=eps)[0])
        coarse.coarse_w.normal_()
        coarse.coarse_b.normal_()
        pre = {}
        plain.img_net2.img[0].register_forward_hook(lambda m, i, o: pre.update(out=o))
        _, mu, _ = plain(emb, z, eps=eps)
        fake, mu2, _ = coarse(emb, z, eps=eps)
    assert torch.equal(mu, mu2)
    w, b = coarse.coarse_w.detach().double(), coarse.coarse_b.detach().double()
    lin = COARSE_GAIN * (mu.double() @ w.T + b)  # from mu, not c
    up = np.stack([_bilinear_brute(row.view(3, 4, 4).numpy(), 128) for row in lin])  # (3, 3, 128, 128)
    expect = torch.tanh(pre["out"].double() + torch.from_numpy(up))
    assert torch.allclose(fake.double(), expect, atol=1e-5)
    assert (fake - plain(emb, z, eps=eps)[0]).abs().max() > 0.1
    with pytest.raises(ValueError, match=r"coarse_rgb \(--G_coarse_rgb\) must be an integer >= 0, got -1"):
        GANConfig(coarse_rgb=-1)


def test_whitened_class_means_against_brute_force():
    from models.gan_losses import CHUNK_ROWS, whitened_class_means

    rng = np.random.default_rng(0)
    n = 2 * CHUNK_ROWS + 5  # past two chunks
    rec, img = rng.normal(size=(n, 6)).astype(np.float32), rng.normal(size=(300, 6)).astype(np.float32)
    y_rec, y_img = rng.integers(0, 4, n), rng.integers(0, 3, 300)  # no image of class 3
    mean, w = torch.randn(6), torch.randn(6, 6)
    means, mask = whitened_class_means([rec, img], [y_rec, y_img], mean, w, 5)
    assert means.shape == (10, 6) and mask.tolist() == [False, True, True, True, False, False, True, True, False, False]
    for block, (x, y) in enumerate(((rec, y_rec), (img, y_img))):
        xw = (torch.from_numpy(x).double() - mean.double()) @ w.double()
        for c in range(1, 5):
            if (y == c).any():
                assert torch.allclose(means[5 * block + c].double(), xw[torch.from_numpy(y == c)].mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="classes in"):
        whitened_class_means([rec], [y_rec + 3], mean, w, 5)


def test_class_posterior_run_stores_the_class_means_and_gan_test_uses_them(encoder_run, indexed_set, tmp_path):
    from data.gan_dataset import GANDataset, load_partition_embeddings
    from models.gan_losses import class_whitening, whitened_class_means
    from utils.checkpoint import load_checkpoint
    from utils.runs import find_encoder_files

    run = GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--epochs", "1", "--G_whiten", "1e-3",
                          "--G_class_posterior", "--G_class_residual", "0.1", "--G_coarse_rgb", "4"])
    ckpt = load_checkpoint(run / "G_last.pth.tar")
    assert ckpt["gan"]["class_posterior"] is True and ckpt["gan"]["class_residual"] == 0.1
    assert ckpt["gan"]["coarse_rgb"] == 4 and ckpt["model"]["coarse_w"].shape == (3 * 4 * 4, 8)  # (3 side^2, EMBEDDING_DIM)
    assert ckpt["model"]["coarse_w"].any()  # trained away from its zeros
    files = find_encoder_files(encoder_run, "en")
    emb = load_partition_embeddings(files.embeddings["train"], indexed_set["data"], "train")
    classes = GANDataset(indexed_set["data"], indexed_set["img"], "train", emb, train=True).classes()
    embs = [emb["rec_embeds"], emb["img_embeds"]]
    mean, w = class_whitening(embs, [classes, classes], 1e-3)
    means, mask = whitened_class_means(embs, [classes, classes], mean, w, ckpt["gan"]["num_classes"])
    assert torch.equal(ckpt["model"]["cls_means"], means) and torch.equal(ckpt["model"]["cls_mask"], mask)
    assert int(mask.sum()) == 2 * len(set(classes.tolist()) - {0})
    out = tmp_path / "m.json"
    GAN_test.main(["--trained_G_model_path", str(run / "G_last.pth.tar"), "--no_cuda", "--workers", "0",
                   "--r1m_path", str(indexed_set["r1m"]), "--synthesis_n", "2", "--metrics_json", str(out)])
    assert json.loads(out.read_text())["fake2rec"]  # G loaded with its class means (a strict state dict)
    runs = sorted(run.parent.iterdir())
    with pytest.raises(SystemExit):  # a class posterior needs the whitened space: refused before any work
        GAN_train.main([*GAN_TINY, "--encoder_dir", str(encoder_run), "--epochs", "1", "--G_class_posterior"])
    assert sorted(run.parent.iterdir()) == runs  # no run folder made


def test_kl_weight_scales_only_the_kl_term():
    from contextlib import nullcontext

    real = torch.randn(3, 3, 128, 128)
    rec, img = F.normalize(torch.randn(3, 32), dim=1), F.normalize(torch.randn(3, 32), dim=1)
    out = {}
    for w in (0.0, KL_WEIGHT, 5.0):
        cfg, nets = _tiny_nets()
        torch.manual_seed(9)
        out[w] = GAN_train.gan_step(nets, cfg, real, rec, img, torch.tensor([0, 2, 4]), class_weights(5),
                                    w_img_img=32.0, w_img_rec=32.0, ctx=nullcontext(), w_kl=w)
    kl = out[0.0]["G/kl"]
    assert kl > 0 and out[5.0]["G/kl"] == out[KL_WEIGHT]["G/kl"] == kl  # the same G forward
    for w in (KL_WEIGHT, 5.0):
        assert out[w]["G/loss"] - out[0.0]["G/loss"] == pytest.approx(w * kl, abs=1e-5 * out[0.0]["G/loss"])
