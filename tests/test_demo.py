"""demo.py: the whole pipeline through the real command lines, on a tiny synthetic set."""

import json
from pathlib import Path

import demo
from utils.metrics import format_results, results_by_bag


def test_demo_runs_every_stage_then_reuses_them(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo prints paths under the current folder relative to it
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--recipes", "70", "--epochs", "1", "--train_iters", "2", "--gan_epochs", "1",
            "--gan_iters", "1", "--judge_iters", "3", "--workers", "0"]
    summary = demo.main(argv)
    for stage in ("synthetic", "create_lmdb", "train", "test", "judge_train", "judge_test", "gan_train", "gan_test"):
        assert (out / f".done_{stage}").is_file(), stage
    retrieval = json.loads((out / "retrieval.json").read_text())
    entry = next(iter(retrieval["test"]["en"].values()))
    assert set(entry) == {"n", "bags", "im2rec", "rec2im"} and 0 <= entry["im2rec"]["R@1"] <= 1
    synthesis = json.loads((out / "synthesis.json").read_text())
    assert {"fake2rec", "rec2fake", "fake2img", "img2fake", "frechet_distance"} <= set(synthesis)
    assert summary["retrieval"] == retrieval["test"]["en"]
    printed = capsys.readouterr().out
    assert "chance R@1" in printed and "TensorBoard" in printed and "host: fp32 matmul" in printed
    assert str(tmp_path) not in printed and "[demo] train: python train.py " in printed
    assert "TensorBoard: tensorboard --logdir demo/runs/" in printed
    judge_cmd = next(line for line in printed.splitlines() if line.startswith("[demo] judge_train: python train.py"))
    assert "--seed 4321" in judge_cmd and "--max_iters 2 " in judge_cmd  # capped by --train_iters 2 (< 3)
    # generated -> recipe is printed beside real image -> recipe, from the same bag, in the one table format
    bag = next(iter(retrieval["test"]["en"]))
    fake = synthesis["fake2rec"][bag]
    table = format_results(demo.bag_rows(bag, entry, synthesis))
    assert table in printed
    for name, m in (("generated -> recipe", fake), ("real image -> recipe", entry["im2rec"])):
        line = next(line for line in table.splitlines() if f"  {name} " in line)
        assert line.startswith(f"{bag} ")
        assert line.endswith(f"{m['medR']:>7.2f} " + " ".join(f"{100 * m[k]:>7.1f}" for k in ("R@1", "R@5", "R@10")))
    assert f"generated / real: medR x{fake['medR'] / entry['im2rec']['medR']:.2f}" in printed
    # The judge (a second retrieval run, another seed) scores the same images; its rows are printed.
    judge = synthesis["judge"]
    assert Path(judge["encoder"]).parents[1].name.endswith("_judge")  # <run>/models/<encoder>
    assert format_results(results_by_bag({"judge: generated -> recipe": judge["fake2rec"]})).splitlines()[-1] in printed
    assert f"judge ({bag}): generated / real medR x{judge['ratio'][bag]['medR']:.2f}" in printed

    # A second run reuses every finished stage and prints the same summary.
    again = demo.main(argv)
    printed = capsys.readouterr().out
    assert printed.count("done before, reused") == 8
    assert again["retrieval"] == summary["retrieval"]


def test_time_estimate_scales_with_the_hosts_matmul_speed():
    minutes = sum(demo.MEASURED_SECONDS.values()) / 60
    same = demo.estimate(demo.MEASURED_GFLOPS)
    assert f"expect about {minutes:.0f} min here" in same and "more than" not in same
    slow = demo.estimate(demo.MEASURED_GFLOPS / 4)  # 4x slower: 4x the time, past the budget
    assert f"expect about {4 * minutes:.0f} min here" in slow and "more than the 12 min" in slow


def test_the_judge_trains_at_most_as_long_as_the_main_run():
    assert demo.judge_cap(0, 40) == 40 and demo.judge_cap(2, 40) == 2 and demo.judge_cap(50, 40) == 40
    assert demo.judge_cap(0, 0) == 0 and demo.judge_cap(7, 0) == 7
