"""FoodSpaceNet, its encoders and ArchConfig on tiny configurations (docs/model.md)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from transformers import BertConfig, BertModel

from models.foodspace import HEAD_DIM, ArchConfig, FoodSpaceNet, ImageEmbedder
from models.image_encoder import ImageEncoder
from models.losses import batch_hard_triplet
from models.text_encoder import EMBEDDING_TABLES, TextEncoder, init_embeddings

TINY = dict(image_backbone="resnet18", emb_dim=16, bert_layers=1, bert_heads=2, bert_hidden=32,
            bert_intermediate=64, vocab_size=100, max_len=48, pad_id=0)


def tiny_cfg(**over) -> ArchConfig:
    return ArchConfig(**{**TINY, **over})


def make_tokens(lengths: list[int], width: int, seed: int = 0) -> torch.Tensor:
    """Rows of ``[CLS]=1`` + random ids in 2..99, zero-padded to ``width``."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, 0] = 1
        tokens[i, 1:n] = torch.randint(2, 100, (n - 1,), generator=gen)
    return tokens  # (B, width)


@pytest.fixture(scope="module")
def model() -> FoodSpaceNet:
    torch.manual_seed(0)
    return FoodSpaceNet(tiny_cfg())


def images(b: int = 4, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (B, 3, S, S)


def test_forward_backward_shapes_and_norms(model):
    model.train()
    tokens = make_tokens([12, 7, 20, 3], 20)
    img_emb, rec_emb = model(images(), tokens)
    assert img_emb.shape == rec_emb.shape == (4, 16)
    torch.testing.assert_close(img_emb.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(rec_emb.norm(dim=1), torch.ones(4))
    model.zero_grad(set_to_none=True)
    batch_hard_triplet(img_emb, rec_emb).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.visual.backbone.net.conv1.weight.grad.abs().sum() > 0
    assert model.text_encoder.word_embeddings.weight.grad.abs().sum() > 0


def test_head_input_follows_backbone():
    assert tiny_cfg().image_feat_dim == 512
    assert ArchConfig().image_feat_dim == 2048
    emb = ImageEmbedder(tiny_cfg(image_backbone="resnet34"))
    assert emb.head[1].in_features == 512 and emb.head[1].out_features == HEAD_DIM
    assert emb.shared.in_features == HEAD_DIM and emb.shared.out_features == 16


def test_channels_last_gives_the_same_embeddings(model):
    model.eval()
    x = images()
    with torch.no_grad():
        a = model.embed_images(x)
        b = model.embed_images(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_padding_beyond_the_longest_row_changes_nothing(model):
    model.eval()
    tokens = make_tokens([12, 7, 20, 3], 20)
    padded = torch.cat([tokens, torch.zeros(4, 28, dtype=torch.long)], dim=1)  # (4, 48)
    with torch.no_grad():
        ref = model.embed_recipes(tokens)
        trimmed = model.embed_recipes(padded)
        # the mask alone (BERT over all 48 columns, untrimmed) must give the same answer
        pooled = model.text_encoder.bert(input_ids=padded, attention_mask=(padded != 0).long()).pooler_output
        masked = torch.nn.functional.normalize(model.text_out(model.shared(model.text_head(pooled))), dim=1)
        changed = tokens.clone()
        changed[1, 3] = (changed[1, 3] + 1) % 98 + 2  # a real token: the embedding must move
        moved = model.embed_recipes(changed)
    torch.testing.assert_close(trimmed, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(masked, ref, atol=1e-5, rtol=1e-4)
    assert (moved[1] - ref[1]).abs().max() > 1e-4
    torch.testing.assert_close(moved[[0, 2, 3]], ref[[0, 2, 3]])  # other rows do not see row 1


def test_attention_maps(model):
    model.eval()
    tokens = make_tokens([12, 7, 20, 3], 20)
    enc = model.text_encoder
    with torch.no_grad():  # the longest row fills the 20 columns: nothing is trimmed
        emb, attn = model.embed_recipes(tokens, output_attentions=True)
        plain = model.embed_recipes(tokens)
    assert len(attn) == 1 and attn[0].shape == (4, 2, 20, 20)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(4, 2, 20))
    key_is_pad = (tokens == 0)[:, None, None, :].expand_as(attn[0])  # attention mask = id > 0
    assert attn[0][key_is_pad].abs().max() == 0
    assert attn[0][~key_is_pad].min() > 0
    torch.testing.assert_close(emb, plain, atol=1e-5, rtol=1e-4)
    assert enc.bert.config._attn_implementation == "sdpa"  # switched back after the call


def test_param_groups_partition_the_parameters(model):
    groups = model.param_groups()
    assert list(groups) == ["heads", "vision", "wordemb", "text"]
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert all(g for g in groups.values())


def test_param_groups_exact_names_as_the_reference_splits(model):
    name = {id(p): n for n, p in model.named_parameters()}
    got = {group: [name[id(p)] for p in params] for group, params in model.param_groups().items()}
    bert = "text_encoder.bert."
    assert got["wordemb"] == [bert + "embeddings." + t for t in (
        "word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
        "LayerNorm.weight", "LayerNorm.bias")]
    layer = bert + "encoder.layer.0."
    assert got["text"] == [layer + t for t in (
        "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight",
        "attention.self.key.bias", "attention.self.value.weight", "attention.self.value.bias",
        "attention.output.dense.weight", "attention.output.dense.bias", "attention.output.LayerNorm.weight",
        "attention.output.LayerNorm.bias", "intermediate.dense.weight", "intermediate.dense.bias",
        "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias",
    )] + [bert + "pooler.dense.weight", bert + "pooler.dense.bias"]
    assert got["heads"] == [f"{m}.{k}" for m in ("visual.head.0", "visual.head.1", "visual.shared", "visual.out.0",
                                                 "text_head.0", "text_head.1", "text_out.0")
                            for k in ("weight", "bias")]
    assert set(got["vision"]) == {n for n in name.values() if n.startswith("visual.backbone.")}
    assert len(got["vision"]) == len(list(model.visual.backbone.parameters())) == 60  # resnet18
    # The reference's rule on its own names: under the text model, a name containing
    # "embeddings" is a word-embedding tensor and every other one a text tensor.
    text_names = [n for n in name.values() if n.startswith("text_encoder.")]
    assert set(got["wordemb"]) == {n for n in text_names if "embeddings" in n}
    assert set(got["text"]) == {n for n in text_names if "embeddings" not in n}


def test_arch_config_round_trips(tmp_path):
    cfg = tiny_cfg(max_len=300)
    assert ArchConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"arch": cfg.to_dict()}, path)
    assert ArchConfig.from_dict(torch.load(path, weights_only=True)["arch"]) == cfg
    assert ArchConfig.from_dict({"emb_dim": 32}) == ArchConfig(emb_dim=32)  # missing keys: defaults
    with pytest.raises(ValueError, match="unknown ArchConfig keys.*bert_dropout"):
        ArchConfig.from_dict({**cfg.to_dict(), "bert_dropout": 0.1})
    with pytest.raises(ValueError, match="resnet"):
        ArchConfig(image_backbone="vgg16")
    with pytest.raises(ValueError, match="multiple"):
        ArchConfig(bert_hidden=30, bert_heads=4)
    with pytest.raises(ValueError, match="emb_dim"):
        ArchConfig.from_dict({"emb_dim": "1024"})


def test_paper_defaults():
    cfg = ArchConfig()
    assert (cfg.image_backbone, cfg.emb_dim, cfg.bert_layers, cfg.bert_heads, cfg.bert_hidden,
            cfg.bert_intermediate, cfg.max_len, cfg.pad_id) == ("resnet50", 1024, 2, 2, 768, 3072, 512, 0)
    bert = TextEncoder(vocab_size=50, hidden=768, layers=2, heads=2, intermediate=3072, max_len=512).bert
    c = bert.config
    assert (c.hidden_act, c.hidden_dropout_prob, c.attention_probs_dropout_prob, c.max_position_embeddings) == \
        ("gelu", 0.1, 0.1, 512)


def _saved_bert(tmp_path, name: str, vocab: int, hidden: int = 32, seed: int = 3):
    torch.manual_seed(seed)
    src = BertModel(BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=512))
    with torch.no_grad():  # a trained LayerNorm is not (1, 0): make the copy visible
        src.embeddings.LayerNorm.weight.uniform_(0.5, 1.5)
        src.embeddings.LayerNorm.bias.uniform_(-0.5, 0.5)
    src.save_pretrained(tmp_path / name)
    return src.state_dict()


def test_text_init_copies_matching_tables_only(tmp_path):
    src = _saved_bert(tmp_path, "src", vocab=120)  # word table differs in shape; the rest match
    torch.manual_seed(0)
    net = FoodSpaceNet(tiny_cfg())
    before = {k: v.clone() for k, v in net.text_encoder.bert.state_dict().items()}
    report = init_embeddings(net.text_encoder, str(tmp_path / "src"))
    after = net.text_encoder.bert.state_dict()
    copied = [t for t in EMBEDDING_TABLES if t != "embeddings.word_embeddings.weight"]
    assert report["copied"] == copied
    assert len(report["skipped"]) == 1 and "word_embeddings" in report["skipped"][0]
    for table in copied:
        torch.testing.assert_close(after[table], src[table], rtol=0, atol=0)
        assert not torch.equal(before[table], src[table])
    torch.testing.assert_close(after["embeddings.word_embeddings.weight"],
                               before["embeddings.word_embeddings.weight"], rtol=0, atol=0)
    # layers and pooler stay random: nothing else was touched
    for key in after:
        if key not in EMBEDDING_TABLES:
            torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)

    src2 = _saved_bert(tmp_path, "same_vocab", vocab=100, seed=4)  # through the constructor this time
    net2 = FoodSpaceNet(tiny_cfg(), text_init=str(tmp_path / "same_vocab"))
    assert net2.text_init_report["copied"] == list(EMBEDDING_TABLES)
    torch.testing.assert_close(net2.text_encoder.word_embeddings.weight.detach(),
                               src2["embeddings.word_embeddings.weight"], rtol=0, atol=0)


def test_text_init_errors_name_the_way_out(tmp_path):
    enc = TextEncoder(vocab_size=100, hidden=32, layers=1, heads=2, intermediate=64, max_len=48)
    with pytest.raises(RuntimeError, match="--text_init none"):
        init_embeddings(enc, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="--text_init none"):
        init_embeddings(enc, str(tmp_path / "empty"))
    assert init_embeddings(enc, "none") == {"copied": [], "skipped": []}


def test_image_pretrained_download_failure(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"--image_pretrained none.*state dict"):
        ImageEncoder("resnet18", "imagenet")


def test_image_pretrained_sources(monkeypatch, tmp_path):
    torch.manual_seed(5)
    donor = torchvision.models.resnet18(weights=None)  # plays the ImageNet weights, fc included
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url",
                        lambda url, *a, **k: donor.state_dict())
    enc = ImageEncoder("resnet18", "imagenet")
    torch.testing.assert_close(enc.net.conv1.weight, donor.conv1.weight, rtol=0, atol=0)

    path = tmp_path / "r18.pth"
    torch.save(donor.state_dict(), path)
    enc = ImageEncoder("resnet18", path)
    torch.testing.assert_close(enc.net.layer4[1].bn2.running_mean, donor.layer4[1].bn2.running_mean)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ImageEncoder("resnet18", tmp_path / "missing.pth")
    bad = donor.state_dict()
    bad["conv1.weight"] = bad["conv1.weight"][:, :1]  # another network's first conv
    bad["head.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match=r"not a resnet18 state dict.*head\.weight.*conv1\.weight"):
        ImageEncoder("resnet18", tmp_path / "bad.pth")


def test_image_embedder_reproduces_the_model(model):
    model.eval()
    assert model.image_embedder() is model.visual  # shares the weights
    fresh = ImageEmbedder(tiny_cfg())
    fresh.load_state_dict(model.image_embedder_state_dict())  # strict: same keys
    fresh.eval()
    x = images(3, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model.embed_images(x), rtol=0, atol=0)
        torch.testing.assert_close(fresh(x), model(x, make_tokens([5, 6, 7], 8))[0], rtol=0, atol=0)


def test_bench_quick_run(tmp_path):
    from bench import train_step

    out = tmp_path / "bench.json"
    res = train_step.main(["--quick", "--threads", "1", "--lengths", "synthetic", "--length_samples", "30",
                           "--json", str(out)])
    assert out.is_file() and set(res["paths"]) == {"reference", "ours"}
    ref, ours = res["paths"]["reference"], res["paths"]["ours"]
    assert 0 < res["trimmed_lengths"][0] < 512
    assert 0 < ours["gflop_per_step"] < ref["gflop_per_step"]  # trimming saves work
    assert ref["images_per_s"] > 0 and res["speedup"] == pytest.approx(ours["images_per_s"] / ref["images_per_s"])


def test_bench_reads_lengths_from_an_lmdb(tmp_path):
    import json

    import lmdb
    import numpy as np

    from bench.train_step import lmdb_lengths
    from data.lmdb_format import MANIFEST, Record, encode_record

    (tmp_path / MANIFEST).write_text(json.dumps({"max_len": 16}))
    env = lmdb.open(str(tmp_path / "train_lmdb"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i, (n_de, n_en) in enumerate([(3, 5), (9, 16), (4, 1)]):
            ids = np.zeros((2, 16), dtype=np.int32)
            ids[0, :n_de], ids[1, :n_en] = 7, 8
            rec = Record(langs=["de", "en"], ids=ids, parts=np.zeros_like(ids, dtype=np.int8), cls=1, images=[])
            txn.put(f"{i:010x}".encode(), encode_record(rec))
    env.close()
    # English rows, + [SEP], capped at the row length (a full row's SEP overwrites its last token)
    assert lmdb_lengths(tmp_path, 10, 512).tolist() == [6, 16, 2]
    assert lmdb_lengths(tmp_path, 2, 512).tolist() == [6, 16]
    with pytest.raises(SystemExit, match="manifest.json"):
        lmdb_lengths(tmp_path / "nowhere", 10, 512)
