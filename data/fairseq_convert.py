"""fairseq transformer checkpoint -> FSMT model folder (``translate_text.py --convert_fairseq``).

The reference code translated with fairseq's own WMT19 checkpoints. This module turns one of those
release folders (``model1.pt`` beside ``dict.<src>.txt``, ``dict.<tgt>.txt`` and ``bpecodes``)
into a folder that transformers' ``AutoModelForSeq2SeqLM`` loads, without fairseq and without
running anything stored in the checkpoint. :func:`convert_fairseq_checkpoint` runs four steps:

1. check (:func:`check_release`): read the checkpoint safely, refuse what FSMT cannot represent,
   upgrade old weight names, read and size-check the dictionaries, find the BPE codes;
2. config (:func:`fsmt_config`): the ``FSMTConfig`` the settings and weight shapes describe;
3. model (:func:`fsmt_model`): the FSMT model holding the checkpoint's weights, every name and
   shape matched;
4. write (:func:`write_fsmt_folder`): weights, vocabularies, merges and tokenizer files, written
   in a hidden sibling folder and renamed into place.

Every refusal is a :class:`FairseqConversionError` naming the file and what does not fit.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.errors import InputError

if TYPE_CHECKING:  # imported where used: translate_text.py --help needs neither
    import torch
    from transformers import FSMTConfig, FSMTForConditionalGeneration


class FairseqConversionError(InputError):
    """A fairseq checkpoint folder that cannot become an FSMT model; the message names the file."""


# What fairseq stores besides weights: version counters, and its sinusoidal position module's
# buffer (an empty ``_float_tensor``; before mid-2019 the table itself, ``weights``). None carries
# information: FSMT computes the same sinusoids.
_FAIRSEQ_IGNORED = re.compile(r"^(encoder|decoder)\.(version|embed_positions\.(_float_tensor|weights))$")

# Settings of a fairseq transformer that FSMT has no equivalent for -> what they mean.
_UNSUPPORTED = {"encoder_normalize_before": "pre-norm encoder layers",
                "decoder_normalize_before": "pre-norm decoder layers",
                "encoder_learned_pos": "learned encoder positions", "decoder_learned_pos": "learned decoder positions",
                "no_token_positional_embeddings": "no positional embeddings",
                "layernorm_embedding": "a layer norm on the embeddings", "cross_self_attention": "cross+self attention",
                "adaptive_softmax_cutoff": "an adaptive softmax", "adaptive_input": "adaptive inputs"}


@dataclass
class FairseqRelease:
    """A checked fairseq release folder: what the config, model and write steps need.

    Attributes:
        checkpoint: the ``.pt`` file (named in every later error).
        src, tgt: the source and target language codes.
        args: the model's settings (``args`` or ``cfg`` of the checkpoint) as a dict.
        activation: ``"relu"`` or ``"gelu"``.
        weights: the tensors under their current fairseq names, without the ignored buffers and
            with ``decoder.output_projection.weight`` present (the input embedding when shared).
        dicts: ``"src"`` / ``"tgt"`` -> ``{token: index}`` of the dictionaries.
        merges: the BPE merges (``"a b"``) of the codes file.
    """

    checkpoint: Path
    src: str
    tgt: str
    args: dict[str, Any]
    activation: str
    weights: dict[str, torch.Tensor]
    dicts: dict[str, dict[str, int]]
    merges: list[str]


# --------------------------------------------------------------------------- reading the files

class _Inert:
    """Stand-in for a class a fairseq checkpoint refers to outside its weights (meters, numpy scalars).

    Unpickling builds one of these instead of importing anything: the arguments and state are kept
    as plain values, no code of the original class runs.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


@contextmanager
def _safe_globals(allowed: list[Any]) -> Iterator[None]:
    """``torch.serialization.safe_globals`` (torch >= 2.5), or the global allow-list of torch 2.4."""
    import torch

    if hasattr(torch.serialization, "safe_globals"):
        with torch.serialization.safe_globals(allowed):
            yield
    else:
        torch.serialization.add_safe_globals(allowed)
        yield


def _unpickler_reason(err: Exception) -> str:
    """The one line of torch's weights-only error that says what was refused (never its advice to
    retry with ``weights_only=False``, which would run the file's code)."""
    text = str(err)
    tail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
    lines = [line.strip() for line in tail.splitlines() if line.strip()
             and not re.search(r"weights.only|file an issue|documentation of torch\.load", line, re.I)]
    return lines[0] if lines else type(err).__name__


def load_fairseq_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fairseq ``model*.pt`` with ``torch.load(weights_only=True)``, never running its code.

    The checkpoint's ``args`` is an ``argparse.Namespace`` (allowed explicitly); anything else it
    refers to outside ``torch`` (training meters, numpy scalars of old trainers) becomes an
    inert :class:`_Inert` object. Both the legacy and the zip format of ``torch.save`` load.

    Raises:
        FairseqConversionError: unreadable file, or a refused ``torch`` global.
    """
    import argparse
    import pickle

    import torch

    allowed: list[Any] = [argparse.Namespace]
    for _ in range(100):  # one more inert class per unknown global the file names
        try:
            with _safe_globals(allowed), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's note on a plain pickle's protocol
                state = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as err:
            match = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
            name = match[1] if match else None
            if name is None or name.startswith("torch.") or name == "torch":
                raise FairseqConversionError(f"{path}: cannot read the checkpoint safely (it needs more than "
                                             f"torch.load(weights_only=True) allows: {_unpickler_reason(err)}); "
                                             "a fairseq model*.pt is expected") from None
            module, _, qualname = name.rpartition(".")
            allowed.append(type(qualname, (_Inert,), {"__module__": module, "__qualname__": qualname}))
        except (OSError, RuntimeError, EOFError) as err:
            raise FairseqConversionError(f"{path}: not a readable torch checkpoint: {err}") from None
        except Exception as err:  # noqa: BLE001 - any other failure of the unpickler on a file that is no checkpoint
            raise FairseqConversionError(f"{path}: not a readable torch checkpoint "
                                         f"({type(err).__name__}: {err})") from None
    else:
        raise FairseqConversionError(f"{path}: too many unknown classes in the checkpoint")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise FairseqConversionError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return state


def _read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file of the release (line ends read as ``"\\n"``).

    Raises:
        FairseqConversionError: the file is not UTF-8 text.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as err:
        raise FairseqConversionError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                                     f"a fairseq release file is expected") from None


def read_fairseq_dict(path: str | os.PathLike) -> dict[str, int]:
    """A fairseq ``dict.<lang>.txt`` as ``{token: index}``, as ``fairseq.data.Dictionary.load`` numbers it.

    Indices 0-3 are ``<s> <pad> </s> <unk>``; each line ``<token> <count> [#fairseq:overwrite]``
    adds the next index (an overwriting line takes a new index, like fairseq's ``add_symbol``).
    """
    indices = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    size = len(indices)  # fairseq's symbol count: an overwritten token keeps its old row too
    for number, line in enumerate(io.StringIO(_read_text(path)), 1):
        token, _, field = line.rstrip().rpartition(" ")
        overwrite = field == "#fairseq:overwrite"
        if overwrite:
            token, _, field = token.rpartition(" ")
        if not token or not re.fullmatch(r"-?\d+", field):
            raise FairseqConversionError(f"{path}: line {number}: expected '<token> <count>', got {line!r}")
        if token in indices and not overwrite:
            raise FairseqConversionError(f"{path}: line {number}: duplicate token {token!r}")
        indices[token] = size
        size += 1
    return indices


def fsmt_vocab(fairseq_indices: dict[str, int]) -> dict[str, int]:
    """fairseq's BPE vocabulary in FSMT's spelling: ``ab@@`` (word goes on) -> ``ab``, ``ab`` -> ``ab</w>``."""
    specials = ("<s>", "<pad>", "</s>", "<unk>")
    vocab = {}
    for token, index in fairseq_indices.items():
        if token in specials:
            vocab[token] = index
        elif token.endswith("@@"):
            vocab[token[:-2]] = index
        else:
            vocab[token + "</w>"] = index
    return vocab


def _upgrade_fairseq_state(model_state: dict[str, Any]) -> dict[str, Any]:
    """Rename old fairseq weights to the current names FSMT mirrors (what fairseq's upgrades do).

    ``in_proj_weight`` / ``in_proj_bias`` (q, k, v stacked) are split; ``layer_norms.<i>`` get
    their names; an unshared ``decoder.embed_out`` becomes ``decoder.output_projection.weight``.
    """
    state = dict(model_state)
    for key in [k for k in state if k.endswith(".in_proj_weight") or k.endswith(".in_proj_bias")]:
        prefix, kind = key.rsplit(".in_proj_", 1)
        qkv = state.pop(key)
        dim = qkv.shape[0] // 3
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            state[f"{prefix}.{name}.{kind}"] = qkv[i * dim:(i + 1) * dim]
    names = {"encoder": ("self_attn_layer_norm", "final_layer_norm"),
             "decoder": ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")}
    for key in list(state):
        match = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.layer_norms\.(\d+)\.(weight|bias)", key)
        if match and int(match[3]) < len(names[match[1]]):
            state[f"{match[1]}.layers.{match[2]}.{names[match[1]][int(match[3])]}.{match[4]}"] = state.pop(key)
    if "decoder.embed_out" in state and "decoder.output_projection.weight" not in state:
        state["decoder.output_projection.weight"] = state.pop("decoder.embed_out")
    return state


def _fairseq_model_args(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """The model's hyper-parameters: ``args`` (old fairseq) or ``cfg["model"]`` plus the task's languages."""
    args = state.get("args")
    if args is None and isinstance(state.get("cfg"), dict):
        cfg = state["cfg"]
        model = cfg.get("model")
        args = {**(vars(cfg["task"]) if hasattr(cfg.get("task"), "__dict__") else cfg.get("task") or {}),
                **(vars(model) if hasattr(model, "__dict__") else model or {})}
    elif args is not None and hasattr(args, "__dict__"):
        args = vars(args)
    if not isinstance(args, dict):
        raise FairseqConversionError(f"{path}: no model settings ('args' or 'cfg') in the checkpoint")
    return args


# --------------------------------------------------------------------------- step 1: check

def _supported_activation(args: dict[str, Any], checkpoint: Path) -> str:
    """The activation function, after refusing every setting FSMT cannot represent (all named at once)."""
    found = [f"{flag}={args[flag]!r} ({what})" for flag, what in _UNSUPPORTED.items() if args.get(flag)]
    activation = args.get("activation_fn", "relu")
    if activation not in ("relu", "gelu"):
        found.append(f"activation_fn={activation!r}")
    if found:
        raise FairseqConversionError(f"{checkpoint}: FSMT cannot represent {', '.join(found)}")
    return activation


def _checked_weights(model_state: dict[str, Any], checkpoint: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under current names, buffers FSMT recomputes dropped, the output
    projection present (the decoder's input embedding when fairseq shared them)."""
    import torch

    weights = _upgrade_fairseq_state(model_state)
    not_tensors = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise FairseqConversionError(f"{checkpoint}: 'model' holds non-tensors: {not_tensors[:5]}")
    weights = {k: v for k, v in weights.items() if not _FAIRSEQ_IGNORED.match(k)}
    for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if key not in weights:
            raise FairseqConversionError(f"{checkpoint}: no {key} among the weights")
    if "decoder.output_projection.weight" not in weights:  # shared input/output embedding
        weights["decoder.output_projection.weight"] = weights["decoder.embed_tokens.weight"]
    return weights


def _read_dicts(checkpoint: Path, src: str, tgt: str, weights: dict[str, torch.Tensor]) -> dict[str, dict[str, int]]:
    """``dict.<src>.txt`` and ``dict.<tgt>.txt`` beside ``checkpoint``, each no larger than its embedding."""
    rows = {"src": weights["encoder.embed_tokens.weight"].shape[0],
            "tgt": weights["decoder.embed_tokens.weight"].shape[0]}
    dicts = {}
    for side, lang in (("src", src), ("tgt", tgt)):
        path = checkpoint.parent / f"dict.{lang}.txt"
        if not path.is_file():
            raise FairseqConversionError(f"{path}: missing (the {side} dictionary of {checkpoint})")
        dicts[side] = read_fairseq_dict(path)
        size = max(dicts[side].values()) + 1
        if size > rows[side]:
            raise FairseqConversionError(f"{path}: {size} tokens, but the model has {rows[side]} embeddings")
    return dicts


def read_bpe_merges(path: Path) -> list[str]:
    """The merges of a BPE codes file as FSMT's ``merges.txt`` lines ``"a b"``.

    fastBPE lines are ``a b count``, subword-nmt's ``a b`` after a ``#version`` header.

    Raises:
        FairseqConversionError: the file is not UTF-8 text.
    """
    return [" ".join(line.split()[:2]) for line in _read_text(path).splitlines()
            if line.strip() and not line.startswith("#version")]


def _num_layers(weights: dict[str, Any], side: str) -> int:
    """How many ``<side>.layers.<i>.`` the weights hold."""
    return len({int(m[1]) for k in weights if (m := re.match(rf"{side}\.layers\.(\d+)\.", k))})


def check_release(checkpoint: Path) -> FairseqRelease:
    """Step 1: read and check a fairseq release folder before anything is built.

    Reads ``checkpoint`` (:func:`load_fairseq_checkpoint`) and its settings, and beside it
    ``dict.<src>.txt``, ``dict.<tgt>.txt`` and ``bpecodes`` (older releases: ``code``).

    Raises:
        FairseqConversionError: naming the file: unreadable, no languages, a setting FSMT cannot
            represent, non-tensor weights, a missing embedding, a missing, malformed or too large
            dictionary, no BPE codes (or not UTF-8), shared embeddings that differ, no layers.
    """
    import torch

    state = load_fairseq_checkpoint(checkpoint)
    args = _fairseq_model_args(state, checkpoint)
    src, tgt = args.get("source_lang"), args.get("target_lang")
    if not src or not tgt:
        raise FairseqConversionError(f"{checkpoint}: the checkpoint names no source_lang / target_lang")
    activation = _supported_activation(args, checkpoint)
    weights = _checked_weights(state["model"], checkpoint)
    dicts = _read_dicts(checkpoint, src, tgt, weights)
    folder = checkpoint.parent
    bpe = next((folder / n for n in ("bpecodes", "code") if (folder / n).is_file()), None)
    if bpe is None:
        raise FairseqConversionError(f"{folder}: no bpecodes (or code) file beside {checkpoint.name}")
    merges = read_bpe_merges(bpe)
    if args.get("share_all_embeddings") and not (
            torch.equal(weights["encoder.embed_tokens.weight"], weights["decoder.embed_tokens.weight"])
            and torch.equal(weights["decoder.output_projection.weight"], weights["decoder.embed_tokens.weight"])):
        raise FairseqConversionError(f"{checkpoint}: share_all_embeddings is set but the embeddings differ")
    if _num_layers(weights, "encoder") == 0 or _num_layers(weights, "decoder") == 0:
        raise FairseqConversionError(f"{checkpoint}: no encoder or decoder layers among the weights")
    return FairseqRelease(checkpoint, src, tgt, args, activation, weights, dicts, merges)


# --------------------------------------------------------------------------- step 2: config

def fsmt_config(release: FairseqRelease, *, length_penalty: float, num_beams: int,
                early_stopping: bool) -> FSMTConfig:
    """Step 2: the ``FSMTConfig`` of the checked release: sizes from the weights, the rest from its settings.

    The generation settings (``length_penalty``, ``num_beams``, ``early_stopping``) are stored
    with the model; the special ids are fairseq's (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2).

    Raises:
        FairseqConversionError: the settings name no attention heads for a side.
    """
    from transformers import FSMTConfig

    args, weights, checkpoint = release.args, release.weights, release.checkpoint

    def heads(side: str) -> int:
        value = args.get(f"{side}_attention_heads")
        if not isinstance(value, int) or value < 1:
            raise FairseqConversionError(f"{checkpoint}: no {side}_attention_heads in the checkpoint's settings")
        return value

    src_rows, d_model = weights["encoder.embed_tokens.weight"].shape
    return FSMTConfig(
        langs=[release.src, release.tgt], src_vocab_size=src_rows,
        tgt_vocab_size=weights["decoder.embed_tokens.weight"].shape[0], d_model=d_model,
        encoder_layers=_num_layers(weights, "encoder"), decoder_layers=_num_layers(weights, "decoder"),
        encoder_attention_heads=heads("encoder"), decoder_attention_heads=heads("decoder"),
        encoder_ffn_dim=weights["encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=weights["decoder.layers.0.fc1.weight"].shape[0],
        max_position_embeddings=int(args.get("max_source_positions") or 1024),
        activation_function=release.activation, scale_embedding=not args.get("no_scale_embedding", False),
        dropout=float(args.get("dropout", 0.1)), attention_dropout=float(args.get("attention_dropout", 0.0)),
        activation_dropout=float(args.get("activation_dropout", args.get("relu_dropout", 0.0)) or 0.0),
        tie_word_embeddings=bool(args.get("share_all_embeddings")), bos_token_id=0, pad_token_id=1,
        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2, num_beams=num_beams,
        length_penalty=length_penalty, early_stopping=early_stopping)


# --------------------------------------------------------------------------- step 3: model

def fsmt_model(config: FSMTConfig, release: FairseqRelease) -> FSMTForConditionalGeneration:
    """Step 3: an FSMT model of ``config`` holding the release's weights, every name and shape matched.

    The sinusoidal position tables are FSMT's own (fairseq computes the same ones).

    Raises:
        FairseqConversionError: a weight FSMT has no place for, one it lacks, or a shape that
            differs (inconsistent settings).
    """
    import torch
    from transformers import FSMTForConditionalGeneration

    weights, checkpoint = release.weights, release.checkpoint
    model = FSMTForConditionalGeneration(config).eval()
    expected = {k[len("model."):] for k in model.state_dict() if ".embed_positions." not in k}
    extra, missing = sorted(set(weights) - expected), sorted(expected - set(weights))
    if extra or missing:
        raise FairseqConversionError(f"{checkpoint}: weights FSMT has no place for: {extra[:8]}; "
                                     f"FSMT weights the checkpoint lacks: {missing[:8]}")
    shapes = model.state_dict()
    wrong = [k for k, v in weights.items() if tuple(v.shape) != tuple(shapes[f"model.{k}"].shape)]
    if wrong:
        raise FairseqConversionError(f"{checkpoint}: unexpected shapes for {wrong[:8]} (inconsistent settings)")
    with torch.no_grad():
        model.model.load_state_dict(weights, strict=False)  # positions: FSMT's own sinusoids
    return model


# --------------------------------------------------------------------------- step 4: write

def write_fsmt_folder(model: FSMTForConditionalGeneration, release: FairseqRelease, out_dir: Path) -> Path:
    """Step 4: write ``out_dir`` whole or not at all: built in a hidden sibling folder, then renamed.

    Writes the weights, ``config.json``, the generation settings, ``vocab-src.json``,
    ``vocab-tgt.json`` (:func:`fsmt_vocab`), ``merges.txt`` (:func:`read_bpe_merges`) and the
    tokenizer files; the tokenizer lower-cases when the source vocabulary has no capital letter.
    """
    import shutil
    import tempfile

    from transformers import FSMTTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = {"src_vocab_file": work / "vocab-src.json", "tgt_vocab_file": work / "vocab-tgt.json",
                 "merges_file": work / "merges.txt"}
        vocabs = {side: fsmt_vocab(d) for side, d in release.dicts.items()}
        for side in ("src", "tgt"):
            files[f"{side}_vocab_file"].write_text(json.dumps(vocabs[side], ensure_ascii=False, indent=1),
                                                   encoding="utf-8")
        files["merges_file"].write_text("".join(m + "\n" for m in release.merges), encoding="utf-8")
        lower = not any(ch.isupper() for token in vocabs["src"] for ch in token)
        tokenizer = FSMTTokenizer(langs=[release.src, release.tgt], do_lower_case=lower, model_max_length=1024,
                                  **{k: str(v) for k, v in files.items()})
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def convert_fairseq_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *,
                               length_penalty: float = 1.0, num_beams: int = 5, early_stopping: bool = True) -> Path:
    """Convert a fairseq transformer translation checkpoint into an FSMT model folder.

    Reads ``checkpoint`` (e.g. ``wmt19.en-de.joined-dict.ensemble/model1.pt``) and, beside it,
    ``dict.<src>.txt``, ``dict.<tgt>.txt`` and ``bpecodes`` (older releases: ``code``). Writes
    ``out_dir`` (must not exist; written aside, then renamed into place) loadable with
    ``AutoTokenizer`` / ``AutoModelForSeq2SeqLM``: weights, ``config.json``, the generation
    settings, ``vocab-src.json``, ``vocab-tgt.json``, ``merges.txt``, ``tokenizer_config.json``.
    This is what transformers' old ``convert_fsmt_original_pytorch_checkpoint_to_pytorch.py`` did,
    without fairseq: the weights are read from the file (old names upgraded like fairseq does),
    the settings from its ``args``. Only what FSMT can represent converts: post-norm layers,
    sinusoidal positions, a shared or separate output projection; anything else is refused.

    Args:
        checkpoint: the fairseq ``.pt`` file.
        out_dir: the FSMT folder to create.
        length_penalty: beam search's length penalty; 1.0 is fairseq's default ``--lenpen``.
        num_beams: the default beam size stored with the model.
        early_stopping: end a sentence's beam search once it has ``num_beams`` finished
            hypotheses, as fairseq's generator does (Hugging Face's FSMT ports store False).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FairseqConversionError: naming the file and what does not fit.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists():
        raise FairseqConversionError(f"{out_dir}: already exists; give a new folder for the converted model")
    release = check_release(checkpoint)
    config = fsmt_config(release, length_penalty=length_penalty, num_beams=num_beams, early_stopping=early_stopping)
    return write_fsmt_folder(fsmt_model(config, release), release, out_dir)
