"""Lineage (utils/lineage.py): a stage refuses files of the stage before that do not belong together.

Each stage reads what the one before wrote (LMDB -> train.py -> test.py's embeddings and encoder ->
GAN_train.py -> GAN_test.py, search.py). Here a new user's mistakes are made on tiny runs: the LMDB
rebuilt with another vocabulary (smaller: the ids stay in range and the results are silently wrong;
larger: ids past the embedding table), and a GAN run's G used with another train run's encoder. Each
must stop with one ``error:`` line naming both files before any work, leaving every result as it
was, byte for byte. Files written before lineage was recorded still load, with one warning line.
"""

import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_MODEL

import create_lmdb
import GAN_test
import GAN_train
import search
import train
from data.dataset import DatasetError, read_manifest
from utils import lineage
from utils.embeddings import embeddings_lineage, load_embeddings, save_embeddings
from utils.runs import ENCODER_SUFFIX

_spec = importlib.util.spec_from_file_location("xmrs_test_script_lineage", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

GAN_TINY = ["--Z_DIM", "8", "--GF_DIM", "4", "--DF_DIM", "4", "--EMBEDDING_DIM", "8", "--R_NUM", "1",
            "--batch_size", "8", "--max_iters", "1", "--workers", "0", "--no_cuda", "--grid_n", "0",
            "--medr", "1000", "--epochs", "1"]
RECIPE = {"id": "pie", "title": "Apple pie", "ingredients": [{"text": "3 apples"}], "instructions": []}


def _train(indexed_set, runs, *extra) -> Path:
    return train.main([*TINY_MODEL, "--data_path", str(indexed_set["data"]), "--img_path", str(indexed_set["img"]),
                       "--runs_dir", str(runs), "--batch_size", "8", "--workers", "0", "--epochs", "1",
                       "--max_iters", "1", "--medr", "20", "--projector_every", "0", *extra])


def _best(run: Path) -> Path:
    return next(p for p in (run / "models").glob("model_BEST_REC_*.pth.tar") if not p.name.endswith(ENCODER_SUFFIX))


def _embed(ckpt: Path, partitions: str = "test", *extra) -> None:
    test_script.main(["--model_init_path", str(ckpt), "--partitions", partitions, "--workers", "0",
                      "--medr", "20", "--no_cuda", *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(excinfo, *names) -> str:
    line = str(excinfo.value.code)
    assert line.startswith("error: ") and "\n" not in line, line
    for name in names:
        assert str(name) in line, (name, line)
    return line


@pytest.fixture(scope="module")
def other_lmdbs(synthetic_set, tmp_path_factory):
    """The session's Recipe1M indexed again with a smaller (300) and a larger (800) vocabulary than its 400."""
    root = tmp_path_factory.mktemp("other_lmdbs")
    for name, size in (("small", 300), ("large", 800)):
        create_lmdb.main(["--r1m_path", str(synthetic_set), "--data_path", str(root / name), "--tokenizer", "train",
                          "--vocab_size", str(size), "--workers", "1"])
    return {"small": root / "small", "large": root / "large"}


@pytest.fixture(scope="module")
def run_a(indexed_set, tmp_path_factory):
    """Run A: train.py, test.py on every partition, one GAN_train.py run on it."""
    run = _train(indexed_set, tmp_path_factory.mktemp("lineage_a"))
    _embed(_best(run), "test,val,train")
    gan = GAN_train.main([*GAN_TINY, "--embDim", "32", "--encoder_dir", str(run)])
    return {"run": run, "best": _best(run), "gan": gan}


@pytest.fixture(scope="module")
def run_b(indexed_set, tmp_path_factory):
    """Run B: A's architecture and data, another seed; test.py on the test split."""
    run = _train(indexed_set, tmp_path_factory.mktemp("lineage_b"), "--seed", "7")
    _embed(_best(run))
    return run


@pytest.fixture(scope="module")
def run_c(indexed_set, tmp_path_factory):
    """Run C: as B but 16-d embeddings."""
    args = list(TINY_MODEL)
    args[args.index("--embDim") + 1] = "16"
    run = train.main([*args, "--data_path", str(indexed_set["data"]), "--img_path", str(indexed_set["img"]),
                      "--runs_dir", str(tmp_path_factory.mktemp("lineage_c")), "--batch_size", "8", "--workers", "0",
                      "--epochs", "1", "--max_iters", "1", "--medr", "20", "--projector_every", "0"])
    _embed(_best(run))
    return run


def _copy_run(run: Path, parent: Path) -> Path:
    """A copy of ``run`` (without its GAN runs) under ``parent``, with the same name: test.py writes the same files."""
    return shutil.copytree(run, parent / run.name, ignore=shutil.ignore_patterns("GAN_runs"))


# --------------------------------------------------------------------------- what is recorded


def test_every_stage_records_its_lineage(run_a, indexed_set):
    manifest = json.loads((indexed_set["data"] / "manifest.json").read_text())
    made = manifest["lineage"]
    assert made["fingerprint"] == lineage.fingerprint({k: made[k] for k in lineage.LMDB_FIELDS})
    assert made["vocab_size"] == manifest["vocab_size"] == 400 and made["special_ids"] == manifest["special_ids"]
    assert made["vocab_sha256"] == lineage.file_sha256(indexed_set["data"] / "tokenizer" / "vocab.txt")
    assert made["tokenizer"] == "train" and made["max_len"] == manifest["max_len"]

    ckpt = torch.load(run_a["best"], weights_only=True)
    assert ckpt["lineage"]["lmdb"] == made and ckpt["lineage"]["textinputs"] == "title,ingr,inst"
    assert ckpt["lineage"]["fingerprint"] == lineage.weights_fingerprint(ckpt["model"])
    latest = torch.load(run_a["run"] / "models" / "model.pth.tar", weights_only=True)
    assert latest["lineage"] == ckpt["lineage"]  # the same epoch's weights

    encoder = torch.load(run_a["best"].with_name(run_a["best"].name.replace(".pth.tar", ENCODER_SUFFIX)),
                         weights_only=True)
    assert encoder["lineage"] == {"checkpoint": ckpt["lineage"]["fingerprint"], "checkpoint_name": run_a["best"].name[:-8],
                                  "lmdb": made["fingerprint"]}
    files = {p: next(run_a["run"].glob(f"foodSpace_vectors_*_{p}_en.npz")) for p in ("train", "val", "test")}
    for partition, path in files.items():
        emb = embeddings_lineage(path)
        assert (emb["checkpoint"], emb["lmdb"], emb["partition"], emb["language"]) == (
            ckpt["lineage"]["fingerprint"], made["fingerprint"], partition, "en")
        assert f'"fingerprint": "{emb["fingerprint"]}"'.encode() in zipfile.ZipFile(path).read("lineage.npy")  # readable

    gan = torch.load(run_a["gan"] / "G_last.pth.tar", weights_only=True)
    assert gan["lineage"] == {"encoder": ckpt["lineage"]["fingerprint"], "checkpoint_name": run_a["best"].name[:-8],
                              "lmdb": made["fingerprint"],
                              "embeddings": {p: embeddings_lineage(files[p])["fingerprint"] for p in ("train", "val")}}
    assert json.loads((run_a["gan"] / "opts.json").read_text())["lineage"] == gan["lineage"]
    assert torch.load(run_a["gan"] / "D_last.pth.tar", weights_only=True)["lineage"] == gan["lineage"]


def test_weights_fingerprint_ignores_memory_format_and_sees_one_value():
    conv = torch.nn.Conv2d(3, 4, 3)
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    last = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in state.items()}
    assert lineage.weights_fingerprint(last) == lineage.weights_fingerprint(state)
    changed = {**state, "bias": state["bias"].clone()}
    changed["bias"][2] += 1e-6
    assert lineage.weights_fingerprint(changed) != lineage.weights_fingerprint(state)


def test_manifest_lineage_is_checked_against_the_tokenizer_folder(indexed_set, tmp_path):
    data = shutil.copytree(indexed_set["data"], tmp_path / "data")
    vocab = data / "tokenizer" / "vocab.txt"
    vocab.write_text(vocab.read_text().replace("\n", "\nx", 1))
    with pytest.raises(DatasetError, match="tokenizer folder was replaced"):
        read_manifest(data)
    manifest = json.loads((indexed_set["data"] / "manifest.json").read_text())
    del manifest["lineage"]  # an LMDB built before lineage was recorded: derived from its vocab.txt
    (data / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(indexed_set["data"] / "tokenizer" / "vocab.txt", vocab)
    assert read_manifest(data)["lineage"] == read_manifest(indexed_set["data"])["lineage"]


def test_check_lmdb_without_recorded_lineage(indexed_set, tmp_path, capsys):
    manifest = read_manifest(indexed_set["data"])  # vocabulary 400, rows of 512
    old = tmp_path / "old.pth.tar"
    with pytest.raises(lineage.LineageError, match="the model's vocab_size 300 vs 400 of the LMDB"):
        lineage.check_lmdb(old, None, indexed_set["data"], manifest, arch={"vocab_size": 300, "max_len": 512})
    assert capsys.readouterr().err == ""
    lineage.check_lmdb(old, None, indexed_set["data"], manifest, arch={"vocab_size": 400, "max_len": 512})
    lineage.check_lmdb(old, None, indexed_set["data"], manifest, arch={"vocab_size": 400, "max_len": 512})
    assert capsys.readouterr().err.splitlines() == [  # once per file
        f"warning: {old} records no lineage (written before lineage was recorded): not checked against "
        f"{indexed_set['data'] / 'manifest.json'}"]
    other = {**manifest["lineage"], "max_len": 256}
    other["fingerprint"] = lineage.fingerprint({k: other[k] for k in lineage.LMDB_FIELDS})
    with pytest.raises(lineage.LineageError, match=r"max_len 256 vs 512\); give the --data_path it was made"):
        lineage.check_lmdb(old, other, indexed_set["data"], manifest)


# --------------------------------------------------------------------------- the LMDB rebuilt with another tokenizer


@pytest.mark.parametrize("vocab", ["small", "large"])
def test_test_py_refuses_another_vocabulary_and_keeps_the_results(run_a, other_lmdbs, vocab):
    before = _snapshot(run_a["run"])
    with pytest.raises(SystemExit) as err:
        _embed(run_a["best"], "test,val,train", "--data_path", str(other_lmdbs[vocab]))
    line = _error(err, run_a["best"], other_lmdbs[vocab] / "manifest.json", "--tokenizer train --vocab_size 400")
    assert f"vocab_size 400 vs {300 if vocab == 'small' else 800}" in line
    assert _snapshot(run_a["run"]) == before  # embeddings and exported encoder byte-identical


@pytest.mark.parametrize("vocab", ["small", "large"])
def test_train_resume_refuses_another_vocabulary_before_writing(run_a, other_lmdbs, vocab, tmp_path):
    run = _copy_run(run_a["run"], tmp_path)
    before = _snapshot(run)
    with pytest.raises(SystemExit) as err:
        train.main(["--resume", str(run), "--epochs", "2", "--workers", "0", "--no_cuda",
                    "--data_path", str(other_lmdbs[vocab])])
    _error(err, run / "models" / "model.pth.tar", other_lmdbs[vocab] / "manifest.json")
    assert _snapshot(run) == before  # opts.txt, checkpoints, logs untouched


def test_train_model_init_path_refuses_another_vocabulary(run_a, other_lmdbs, indexed_set, tmp_path):
    with pytest.raises(SystemExit) as err:
        train.main([*TINY_MODEL, "--data_path", str(other_lmdbs["small"]), "--img_path", str(indexed_set["img"]),
                    "--runs_dir", str(tmp_path / "runs"), "--model_init_path", str(run_a["best"]), "--workers", "0"])
    _error(err, run_a["best"], other_lmdbs["small"] / "manifest.json", "vocab_size 400 vs 300")
    assert not (tmp_path / "runs").exists()


def _without_lineage(src: Path, dest: Path) -> Path:
    ckpt = torch.load(src, weights_only=True)
    del ckpt["lineage"]
    torch.save(ckpt, dest)
    return dest


def test_model_init_path_names_the_first_mismatched_tensor(run_a, other_lmdbs, indexed_set, tmp_path, capsys):
    # Another --embDim on the same LMDB: lineage agrees, the shapes do not.
    args = list(TINY_MODEL)
    args[args.index("--embDim") + 1] = "16"
    common = ["--img_path", str(indexed_set["img"]), "--runs_dir", str(tmp_path / "runs"), "--workers", "0"]
    with pytest.raises(SystemExit) as err:
        train.main([*args, "--data_path", str(indexed_set["data"]), "--model_init_path", str(run_a["best"]), *common])
    line = _error(err, run_a["best"], "architecture differs")
    assert "has shape (32," in line and "in the checkpoint, (16," in line and "in the model built here" in line
    # A checkpoint from before lineage, on another vocabulary: one warning, then the word embeddings' shapes.
    old = _without_lineage(run_a["best"], tmp_path / "old.pth.tar")
    with pytest.raises(SystemExit) as err:
        train.main([*TINY_MODEL, "--data_path", str(other_lmdbs["small"]), "--model_init_path", str(old), *common])
    line = _error(err, old)
    assert "word_embeddings.weight has shape (400, 32) in the checkpoint, (300, 32) in the model built here" in line
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert warnings == [f"warning: {old} records no lineage (written before lineage was recorded): not checked "
                        f"against {other_lmdbs['small'] / 'manifest.json'}"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("vocab", ["small", "large"])
def test_search_refuses_another_vocabulary(run_a, other_lmdbs, vocab, tmp_path, capsys):
    run = _copy_run(run_a["run"], tmp_path)
    before = _snapshot(run)
    with pytest.raises(SystemExit) as err:
        search.main(["--run", str(run), "--text", "Apple pie", "--data_path", str(other_lmdbs[vocab]), "--no_cuda"])
    _error(err, _best(run), other_lmdbs[vocab] / "manifest.json")
    assert "query 1" not in capsys.readouterr().out
    assert _snapshot(run) == before  # no index written


def test_search_refuses_embeddings_of_another_checkpoint(run_a, run_b, tmp_path):
    run = _copy_run(run_a["run"], tmp_path)
    shutil.copy(_best(run_b), _best(run))  # the checkpoint replaced after test.py ran
    with pytest.raises(SystemExit) as err:
        search.main(["--run", str(run), "--text", "Apple pie", "--index_parts", "test", "--no_cuda"])
    _error(err, next(run.glob("foodSpace_vectors_*_test_en.npz")), _best(run), "python test.py")


# --------------------------------------------------------------------------- G with another train run's encoder


@pytest.mark.parametrize("other", ["same_arch", "other_embdim"])
@pytest.mark.parametrize("mode", ["test_split", "recipe"])
def test_gan_test_refuses_another_encoder_run(run_a, run_b, run_c, other, mode, tmp_path):
    encoder_dir = run_b if other == "same_arch" else run_c
    g_path = run_a["gan"] / "G_last.pth.tar"
    out_dir = tmp_path / "out"
    extra = []
    if mode == "recipe":
        (tmp_path / "r.json").write_text(json.dumps(RECIPE))
        extra = ["--recipe", str(tmp_path / "r.json"), "--nearest", "1"]
    before = _snapshot(encoder_dir)
    with pytest.raises(SystemExit) as err:
        GAN_test.main(["--trained_G_model_path", str(g_path), "--encoder_dir", str(encoder_dir), "--no_cuda",
                       "--workers", "0", "--out_dir", str(out_dir), *extra])
    line = _error(err, g_path, encoder_dir, f"give the --encoder_dir G was trained with ({run_a['run']})")
    assert "records the image encoder of checkpoint" in line and "do not belong together" in line
    assert not out_dir.exists() and _snapshot(encoder_dir) == before
    assert not (run_a["gan"] / "synthesis.png").exists()


def test_gan_test_with_its_own_encoder_run_still_works(run_a, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(RECIPE))
    out = GAN_test.main(["--trained_G_model_path", str(run_a["gan"] / "G_last.pth.tar"), "--recipe",
                         str(tmp_path / "r.json"), "--nearest", "1", "--no_cuda", "--out_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "pie" / "generated_0.png").is_file() and out["checkpoint"] == str(run_a["best"])


def _renamed_checkpoint(run: Path, parent: Path, name: str = "model_BEST_REC_e099_v-1.000_cr-0.0001") -> Path:
    """A copy of ``run`` whose BEST_REC checkpoint (and its embedding files and export) is called ``name``."""
    copy = _copy_run(run, parent)
    old = _best(copy).name[: -len(".pth.tar")]
    for path in list(copy.rglob(f"*{old}*")):
        path.rename(path.with_name(path.name.replace(old, name)))
    return copy


@pytest.mark.parametrize("encoder", ["other_weights", "same_weights"])
def test_gan_test_recipe_notes_a_gone_checkpoint_only_when_the_stand_in_is_accepted(run_a, run_b, encoder, tmp_path,
                                                                                    capsys):
    """G's own checkpoint is gone from --encoder_dir: the run's default stands in if it has G's encoder.

    Another run's weights are refused with the lineage line alone (no note about the gone checkpoint
    before it); the same weights under another name are used, and the note says so.
    """
    encoder_dir = _renamed_checkpoint(run_b if encoder == "other_weights" else run_a["run"], tmp_path / "enc")
    trained_with = torch.load(run_a["gan"] / "G_last.pth.tar", weights_only=True)["encoder"]["ckpt_name"]
    assert not (encoder_dir / "models" / f"{trained_with}.pth.tar").exists()
    (tmp_path / "r.json").write_text(json.dumps(RECIPE))
    args = ["--trained_G_model_path", str(run_a["gan"] / "G_last.pth.tar"), "--encoder_dir", str(encoder_dir),
            "--recipe", str(tmp_path / "r.json"), "--nearest", "1", "--no_cuda", "--out_dir", str(tmp_path / "out")]
    if encoder == "other_weights":
        with pytest.raises(SystemExit) as err:
            GAN_test.main(args)
        assert "do not belong together" in _error(err, encoder_dir)
        assert "is gone" not in capsys.readouterr().out
    else:
        out = GAN_test.main(args)
        printed = capsys.readouterr().out
        assert printed.count(f"note: G was trained with the encoder of {trained_with}, whose checkpoint") == 1
        assert out["checkpoint"] == str(_best(encoder_dir)) and (tmp_path / "out" / "pie" / "generated_0.png").is_file()


@pytest.fixture(scope="module")
def changed_encoder_run(run_a, run_b, tmp_path_factory):
    """A copy of run A with a GAN run, whose checkpoint was then replaced by B's and test.py run again on test.

    Its exported encoder and test embeddings now come from B's weights; train and val from A's.
    """
    run = _copy_run(run_a["run"], tmp_path_factory.mktemp("changed"))
    gan = GAN_train.main([*GAN_TINY, "--embDim", "32", "--encoder_dir", str(run)])
    shutil.copy(_best(run_b), _best(run))
    _embed(_best(run))
    return {"run": run, "gan": gan}


def test_gan_train_resume_refuses_a_changed_encoder(changed_encoder_run):
    gan = changed_encoder_run["gan"]
    before = _snapshot(gan)
    with pytest.raises(SystemExit) as err:
        GAN_train.main(["--resume", str(gan), "--epochs", "2", "--workers", "0", "--no_cuda"])
    line = _error(err, gan / "G_last.pth.tar", "_image_encoder.pth.tar", "start a new one")
    assert "records the image encoder of checkpoint" in line and "do not belong together" in line
    assert _snapshot(gan) == before


def test_gan_train_refuses_embeddings_of_another_checkpoint(changed_encoder_run):
    run = changed_encoder_run["run"]
    with pytest.raises(SystemExit) as err:
        GAN_train.main([*GAN_TINY, "--embDim", "32", "--encoder_dir", str(run)])
    _error(err, next(run.glob("foodSpace_vectors_*_train_en.npz")), "_image_encoder.pth.tar", "python test.py")
    assert sorted(p.name for p in (run / "GAN_runs").iterdir()) == [changed_encoder_run["gan"].name]


# --------------------------------------------------------------------------- older files


def test_files_without_lineage_still_load_with_one_warning(run_a, tmp_path, capsys):
    run = _copy_run(run_a["run"], tmp_path)
    best = _best(run)
    _without_lineage(best, best)
    capsys.readouterr()
    _embed(best)
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and str(best) in warnings[0]
    test_file = next(run.glob("foodSpace_vectors_*_test_en.npz"))
    ckpt = torch.load(best, weights_only=True)
    assert embeddings_lineage(test_file)["checkpoint"] == lineage.weights_fingerprint(ckpt["model"])
    # An embedding file from before lineage: search.py answers, with one warning naming it.
    emb = load_embeddings(test_file)
    save_embeddings(test_file, emb["img_embeds"], emb["rec_embeds"], emb["rec_ids"])
    assert embeddings_lineage(test_file) is None
    out = search.main(["--run", str(run), "--text", "Apple pie", "--index_parts", "test", "--no_cuda", "--json"])
    assert len(out["results"][0]["results"]) == 5
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and str(test_file) in warnings[0]
    assert np.array_equal(load_embeddings(test_file)["rec_embeds"], emb["rec_embeds"])
