"""train.py end to end on the synthetic set: run folder, TensorBoard, checkpoints, resume, torchrun."""

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL

import train
from utils.checkpoint import load_checkpoint


def _args(indexed, runs, *extra):
    return [*TINY_MODEL, "--data_path", str(indexed["data"]), "--img_path", str(indexed["img"]),
            "--runs_dir", str(runs), "--batch_size", "8", "--workers", "0", "--medr", "20",
            "--textAug", "english,de,ru,fr", "--projector_every", "1", "--projector_n", "16", *extra]


def _scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_writes_run_folder_events_and_checkpoints(indexed_set, tmp_path):
    run_dir = train.main(_args(indexed_set, tmp_path, "--epochs", "2", "--max_iters", "3",
                               "--experiment_sufix", "_smoke", "--warmup", "1", "--freeVision", "false"))
    assert run_dir.parent == tmp_path and run_dir.name.endswith("__train_smoke")
    for name in ("opts.json", "train.txt", "test.txt", "models/model.pth.tar"):
        assert (run_dir / name).is_file(), name
    best_val = list((run_dir / "models").glob("model_BEST_VAL_e*.pth.tar"))
    best_rec = list((run_dir / "models").glob("model_BEST_REC_e*.pth.tar"))
    assert len(best_val) == 1 and len(best_rec) == 1

    ckpt = load_checkpoint(run_dir / "models" / "model.pth.tar")  # weights_only=True inside
    assert ckpt["epoch"] == 1 and ckpt["iteration"] == 6 and ckpt["kind"] == "foodspace"
    assert ckpt["arch"]["bert_hidden"] == 32 and ckpt["arch"]["image_backbone"] == "resnet18"
    assert ckpt["schedule"]["free"]["vision"] is True  # released after epoch 1 (--warmup 1)

    scalars = _scalars(run_dir)
    for tag in ("loss", "d_pos", "d_neg", "lr/heads", "lr/vision", "lr/wordemb", "lr/text",
                "val/medR", "val/R@1", "val/R@5", "val/R@10"):
        assert tag in scalars, tag
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(v) and v >= 0 for _, v in scalars["loss"])
    # --freeVision false: vision frozen (lr 0) in epoch 0, released by --warmup 1 for epoch 1.
    assert scalars["lr/vision"] == [(0, 0.0), (1, pytest.approx(1e-4))]
    assert len(scalars["val/medR"]) == 2
    assert all(0.0 <= v <= 1.0 for _, v in scalars["val/R@10"])
    assert (run_dir / "projector_config.pbtxt").is_file() or any(run_dir.rglob("projector_config.pbtxt"))


def test_resume_equals_uninterrupted_run(indexed_set, tmp_path):
    common = ("--max_iters", "3", "--projector_every", "0", "--decayLR", "1")
    full = train.main(_args(indexed_set, tmp_path / "a", "--epochs", "2", *common))
    half = train.main(_args(indexed_set, tmp_path / "b", "--epochs", "1", *common))
    resumed = train.main(["--resume", str(half), "--epochs", "2", "--workers", "0"])
    assert resumed == half
    a = load_checkpoint(full / "models" / "model.pth.tar")
    b = load_checkpoint(half / "models" / "model.pth.tar")
    assert a["epoch"] == b["epoch"] == 1 and a["iteration"] == b["iteration"]
    assert a["schedule"] == b["schedule"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_ohem_warmup_averages_negatives_then_takes_the_hardest(indexed_set, tmp_path):
    common = ("--epochs", "2", "--max_iters", "2", "--projector_every", "0", "--valfreq", "5")
    mean = _scalars(train.main(_args(indexed_set, tmp_path / "mean", "--ohem", "false", *common)))
    warm = _scalars(train.main(_args(indexed_set, tmp_path / "warm", "--ohem", "true", "--ohem_warmup", "1", *common)))
    # Epoch 0 (steps 1-2) is the mean-negative loss, step for step; epoch 1 takes the hardest
    # negative, whose distance is below the mean over negatives.
    assert warm["d_neg"][:2] == mean["d_neg"][:2] and warm["loss"][:2] == mean["loss"][:2]
    assert all(w < m for (_, w), (_, m) in zip(warm["d_neg"][2:], mean["d_neg"][2:], strict=True))


def test_torchrun_two_cpu_processes(indexed_set, tmp_path, torchrun):
    runs_dir = tmp_path / "runs"
    out = torchrun("train.py", _args(indexed_set, runs_dir, "--epochs", "1", "--max_iters", "2", "--no_cuda",
                                     "--projector_every", "0"), cwd=tmp_path)
    assert "rank 0/2: trained on 16 images" in out[0]
    assert "rank 1/2: trained on 16 images" in out[1]
    runs = [p for p in runs_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1  # rank 0 alone made the run folder
    ckpt = load_checkpoint(runs[0] / "models" / "model.pth.tar")
    assert ckpt["iteration"] == 2 and len(ckpt["rng"]) == 2


def test_schedule_release_and_decay():
    args = train.get_parser().parse_args(["--warmup", "2", "--decayLR", "3", "--freeHeads", "no",
                                          "--w2vTrain", "false"])
    state = train.initial_schedule(args)
    assert state == train.Schedule(lr_scale=1.0, free={"heads": False, "vision": True, "wordemb": True, "text": True})
    assert train.Schedule.from_dict(state.to_dict()) == state  # stored as a plain dict in the checkpoint
    assert train.group_lrs(args, state) == {"heads": 0.0, "vision": 1e-4, "wordemb": 0.0, "text": 1e-4}
    assert train.end_of_epoch_schedule(args, state, 0) == []
    assert train.end_of_epoch_schedule(args, state, 1)  # after 1-based epoch 2: release
    assert state.free["heads"] is True
    train.end_of_epoch_schedule(args, state, 2)
    assert state.lr_scale == pytest.approx(0.1)
    assert train.group_lrs(args, state)["heads"] == pytest.approx(1e-5)
    assert train.group_lrs(args, state)["wordemb"] == 0.0  # --w2vTrain false: frozen for good


def _lr_table(argv: list[str], epochs: int) -> list[dict[str, float]]:
    """The lr of each group in each epoch, computed the way train.main sets them."""
    args = train.get_parser().parse_args(argv)
    state, table = train.initial_schedule(args), []
    for epoch in range(epochs):
        table.append(train.group_lrs(args, state))
        train.end_of_epoch_schedule(args, state, epoch)
    return table


def _row(heads, vision, wordemb, text) -> dict[str, float]:
    return {"heads": heads, "vision": vision, "wordemb": wordemb, "text": text}


B = 1e-4  # the default --lr
# The reference's rules: after each --warmup epoch (1-based, default "1") heads, vision and word
# embeddings are released (the latter only with --w2vTrain true); after each --decayLR epoch the
# lr is multiplied by 0.1 and the same groups released; the text group is never released.
SCHEDULES = [
    ([], [_row(B, B, B, B)] * 3),
    (["--freeVision", "false"], [_row(B, 0, B, B), _row(B, B, B, B), _row(B, B, B, B)]),
    (["--freeHeads", "false", "--freeWordEmb", "false"], [_row(0, B, 0, B), _row(B, B, B, B), _row(B, B, B, B)]),
    (["--w2vTrain", "false"], [_row(B, B, 0, B)] * 3),
    (["--w2vTrain", "false", "--freeWordEmb", "true", "--freeVision", "false"],
     [_row(B, 0, 0, B), _row(B, B, 0, B), _row(B, B, 0, B)]),
    (["--freeText", "false", "--freeVision", "false"], [_row(B, 0, B, 0), _row(B, B, B, 0), _row(B, B, B, 0)]),
    (["--freeVision", "false", "--warmup", "2"], [_row(B, 0, B, B), _row(B, 0, B, B), _row(B, B, B, B)]),
    (["--freeVision", "false", "--warmup", ""], [_row(B, 0, B, B)] * 3),
    (["--freeVision", "false", "--warmup", "", "--decayLR", "2"],
     [_row(B, 0, B, B), _row(B, 0, B, B), _row(B / 10, B / 10, B / 10, B / 10)]),
    (["--decayLR", "1,2", "--freeText", "false"],
     [_row(B, B, B, 0), _row(B / 10, B / 10, B / 10, 0), _row(B / 100, B / 100, B / 100, 0)]),
    (["--freeVision", "false", "--freeText", "false", "--w2vTrain", "false", "--lr", "0.5", "--decayLR", "3"],
     [_row(0.5, 0, 0, 0), _row(0.5, 0.5, 0, 0), _row(0.5, 0.5, 0, 0), _row(0.05, 0.05, 0, 0)]),
]


@pytest.mark.parametrize(("argv", "expected"), SCHEDULES)
def test_group_lrs_per_epoch(argv, expected):
    assert train.get_parser().parse_args([]).warmup == [1]  # the reference's default '1'
    assert train.get_parser().parse_args([]).decayLR == [20]
    got = _lr_table(argv, len(expected))
    assert len(got) == len(expected)
    for epoch, (row, want) in enumerate(zip(got, expected)):
        assert row == pytest.approx(want, rel=1e-12, abs=0), (epoch, row)


def test_frozen_groups_stay_frozen_and_validation_is_english(indexed_set, tmp_path, monkeypatch):
    """End to end, default --warmup: heads and vision released after epoch 1; under --w2vTrain
    false every tensor under BERT's embeddings module (position and token-type tables and their
    LayerNorm too) stays untouched while the rest of BERT trains; validation reads English rows
    whatever --language says."""
    from data.dataset import RecipeImageDataset
    from utils.checkpoint import save_checkpoint

    made = []

    class Recording(RecipeImageDataset):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append((self.partition, self.train, self.language, dict(self.language_probs)))

    monkeypatch.setattr(train, "RecipeImageDataset", Recording)
    argv = _args(indexed_set, tmp_path / "runs", "--epochs", "3", "--max_iters", "1", "--valfreq", "5",
                 "--projector_every", "0", "--language", "de", "--freeVision", "false", "--freeHeads", "false",
                 "--w2vTrain", "false", "--decayLR", "2")
    manifest = train.read_manifest(indexed_set["data"])
    init = train.build_model(train.get_parser().parse_args(argv), manifest["vocab_size"], manifest["max_len"],
                             manifest["special_ids"]["pad"])
    save_checkpoint({"model": init.state_dict()}, tmp_path / "init.pth.tar")
    run_dir = train.main([*argv, "--model_init_path", str(tmp_path / "init.pth.tar")])

    assert made[1][:3] == ("val", False, "en") and made[1][3] == {"en": 1.0}
    assert made[0][:2] == ("train", True) and "de" in made[0][3]  # training follows --textAug
    scalars = _scalars(run_dir)
    lr = {g: [v for _, v in scalars[f"lr/{g}"]] for g in train.GROUPS}
    assert lr["heads"] == lr["vision"] == [0.0, pytest.approx(1e-4), pytest.approx(1e-5)]
    assert lr["wordemb"] == [0.0, 0.0, 0.0]
    assert lr["text"] == [pytest.approx(1e-4), pytest.approx(1e-4), pytest.approx(1e-5)]

    final = load_checkpoint(run_dir / "models" / "model.pth.tar")["model"]
    start = init.state_dict()
    names = {id(p): n for n, p in init.named_parameters()}
    groups = {g: [names[id(p)] for p in ps] for g, ps in init.param_groups().items()}
    assert len(groups["wordemb"]) == 5  # word, position, token type, LayerNorm weight and bias
    for name in groups["wordemb"]:
        assert torch.equal(final[name], start[name]), name
    for group in ("heads", "vision", "text"):  # heads and vision trained in epochs 1 and 2
        assert all(not torch.equal(final[n], start[n]) for n in groups[group]), group


def test_step_values_read_in_batches_equal_the_per_step_reads(indexed_set, tmp_path, monkeypatch):
    """No .item() per step: the values TensorBoard and the log get equal those read right after each step."""
    import numpy as np

    seen = []  # what today's loop read with .item() right after each step
    step = train.train_step

    def spy(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.append(tuple(getattr(out, k).item() for k in ("loss", "d_pos", "d_neg")))
        return out

    monkeypatch.setattr(train, "train_step", spy)
    run_dir = train.main(_args(indexed_set, tmp_path, "--epochs", "1", "--max_iters", "5", "--log_every", "2",
                               "--projector_every", "0"))
    scalars = _scalars(run_dir)
    assert len(seen) == 5
    for k, name in enumerate(("loss", "d_pos", "d_neg")):  # every step, in order, the same float32 values
        assert scalars[name] == [(i + 1, float(np.float32(v[k]))) for i, v in enumerate(seen)]
    logged = [line for line in (run_dir / "train.txt").read_text().splitlines() if " iter " in line]
    assert [line.split(" global ")[0].split(" iter ")[1] for line in logged] == ["0/5", "2/5", "4/5"]
    for line, i in zip(logged, (0, 2, 4)):  # the log step's own values, read at that step
        assert line.endswith(f"loss {seen[i][0]:.4f} d_pos {seen[i][1]:.4f} d_neg {seen[i][2]:.4f}")
