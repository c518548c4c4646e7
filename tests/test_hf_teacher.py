"""Bring your own teacher: a tiny random ``BertForTokenClassification`` (``save_pretrained``) as a
structkd teacher (labels, scheme, fingerprint, first sub-word emissions, windowing, label mapping),
annotate -> store verify -> distill through it, and fit-crf (its CRF learnt, saved, reloaded,
annotated with edge marginals)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline.config import (AnnotateConfig, CorpusConfig, DecoderConfig, DistillConfig, EncoderConfig,
                             KDConfig, ModelConfig, OptimConfig)
from pipeline.corpus import read_corpus
from pipeline.windows import most_central as _most_central, windows as _windows
from pipeline.fit_crf import FitCRFConfig, cache_emissions, fit_crf, fit_factors, gold_ids, make_batches
from pipeline.hf_teacher import (CRFTeacher, HFTeacher, TeacherError, is_hf_checkpoint, load_any_teacher,
                                 looks_like_hub_name, map_labels, teacher_kind)
from pipeline.metrics import evaluate_tags
from pipeline.structs import ChainCRF, Factorized
from pipeline.tagger import Tagger, build_tagger
from pipeline.trainer import predict
from stages.cli import app
from store import open_store
from store.build import build_store
from store.feed import distill
from store.verify import verify_store
from tests.helpers import write_tiny_bert, write_tiny_conll

# id order of the checkpoint: not the corpus's sorted order (O, B-LOC, I-LOC, B-ORG, ...)
HF_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
LONG = ("John Smithson visited the Acmecorporation bank in Londonderry and said Maryanne works for "
        "the bank of Parisville in New York 42 times").split()


def save_checkpoint(folder, labels=HF_LABELS, seed=0):
    """The tiny BERT's vocab / tokenizer (tests.helpers) with a random token-classification model
    of ``labels`` saved over it by ``save_pretrained``."""
    from transformers import BertConfig, BertForTokenClassification

    write_tiny_bert(folder)
    config = BertConfig.from_pretrained(folder, id2label=dict(enumerate(labels)),
                                        label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(seed)
    model = BertForTokenClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)  # peaked logits: the argmax is not a coin toss
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf")


@pytest.fixture(scope="module")
def checkpoint(root):
    return save_checkpoint(root / "bert-ner")


@pytest.fixture(scope="module")
def teacher(checkpoint):
    return HFTeacher.load(checkpoint)


@pytest.fixture(scope="module")
def corpus(root):
    files = write_tiny_conll(root / "corpus", sizes={"train": 40, "dev": 12, "test": 12})
    return CorpusConfig(name="tiny", scheme="IOB2", files={k: str(v) for k, v in files.items()})


def by_hand(model, tokenizer, tokens):
    """[L, T] logits of each word's first sub-word, the checkpoint run on the whole sentence."""
    enc = tokenizer(tokens, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0]
    words = enc.word_ids(0)
    return logits[[words.index(w) for w in range(len(tokens))]]


def test_labels_scheme_fingerprint_and_folder_kinds(checkpoint, teacher, root):
    assert teacher.labels == HF_LABELS and teacher.scheme == "IOB2" and not teacher.is_crf
    assert teacher.fingerprint() == HFTeacher.load(checkpoint).fingerprint()
    reordered = HFTeacher.load(checkpoint, labels=sorted(HF_LABELS))
    assert reordered.fingerprint() != teacher.fingerprint()
    other = HFTeacher.load(checkpoint)
    with torch.no_grad():
        other.model.classifier.bias[0] += 1e-3
    assert other.fingerprint() != teacher.fingerprint()
    assert is_hf_checkpoint(checkpoint) and teacher_kind(checkpoint) == "hf"
    plain = write_tiny_bert(root / "plain-bert")  # a BertModel: no classifier, no labels
    assert not is_hf_checkpoint(plain)
    with pytest.raises(TeacherError, match="plain-bert: .*not a token-classification model"):
        teacher_kind(plain)
    model = ModelConfig(EncoderConfig(kind="bilstm", word_dim=8, hidden=8, char="none"), DecoderConfig("crf"))
    ours = build_tagger(model, HF_LABELS, "IOB2", [["a"]]).save(root / "ours")
    assert not is_hf_checkpoint(ours) and teacher_kind(ours) == "tagger"
    assert isinstance(load_any_teacher(ours), Tagger) and isinstance(load_any_teacher(checkpoint), HFTeacher)
    with pytest.raises(TeacherError, match="no-such: no such folder"):
        teacher_kind(root / "no-such")
    with pytest.raises(TeacherError, match="no-such: no such folder"):
        load_any_teacher(root / "no-such")
    bioes = HFTeacher.load(save_checkpoint(root / "bilou", ["O", "B-PER", "I-PER", "L-PER", "U-PER"]))
    assert bioes.labels == ["O", "B-PER", "I-PER", "E-PER", "S-PER"] and bioes.scheme == "BIOES"


def test_hub_names_load_from_the_local_cache_only_when_offline(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert looks_like_hub_name("nobody-here/bert-ner") and not looks_like_hub_name("models/teacher-en")
    assert not looks_like_hub_name("a/b/c") and not looks_like_hub_name("bert")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TeacherError, match="nobody-here/bert-ner: no such folder, and cannot load a "):
        load_any_teacher("nobody-here/bert-ner")
    from transformers import AutoModelForTokenClassification

    asked = []

    def from_pretrained(source, **kwargs):
        asked.append((source, kwargs))
        raise OSError("not cached")

    monkeypatch.setattr(AutoModelForTokenClassification, "from_pretrained", from_pretrained)
    with pytest.raises(TeacherError, match=r"owner-x/ner: .*\(not cached\)"):
        load_any_teacher("owner-x/ner")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(TeacherError):
        HFTeacher.load("owner-x/ner")
    assert asked == [("owner-x/ner", {"local_files_only": True}),
                     ("owner-x/ner", {"local_files_only": False})]


def test_emissions_are_the_first_subword_logits(teacher):
    batch = [["John", "Smithson", "visited", "Londonderry"], ["Acmecorp", "said", "x"], LONG[:9]]
    structure = teacher.structure(batch)
    assert isinstance(structure, Factorized) and structure.constraints is not None
    assert structure.lengths.tolist() == [4, 3, 9]
    for b, tokens in enumerate(batch):
        expected = by_hand(teacher.model, teacher.tokenizer, tokens)
        torch.testing.assert_close(structure.emissions[b, :len(tokens)], expected, rtol=1e-5, atol=1e-5)
    paths = structure.argmax()
    assert structure.log_prob(paths).isfinite().all() and structure.score(paths).isfinite().all()


def test_long_sentences_are_windowed_like_our_encoders(checkpoint, teacher):
    windowed = HFTeacher.load(checkpoint, max_length=10, stride=3)
    short = LONG[:3]
    assert len(windowed.tokenizer(short, is_split_into_words=True)["input_ids"]) <= 10
    torch.testing.assert_close(windowed.emissions([short])[0], teacher.emissions([short])[0])
    emissions, mask = windowed.emissions([LONG, short])
    assert emissions.shape == (2, len(LONG), len(HF_LABELS)) and mask.sum(1).tolist() == [len(LONG), 3]
    torch.testing.assert_close(emissions[1, :3], teacher.emissions([short])[0][0])
    # by hand: the windows of 8 pieces (10 minus [CLS], [SEP]) sharing 3; each word's first piece
    # read from the window in which it is most central
    tok = teacher.tokenizer
    enc = tok(LONG, is_split_into_words=True, add_special_tokens=False)
    ids, owner = enc["input_ids"], enc.word_ids()
    starts = _windows(len(ids), 8, 3)
    assert len(starts) > 2
    logits = []
    with torch.no_grad():
        for s in starts:
            row = torch.tensor([[tok.cls_token_id] + ids[s:s + 8] + [tok.sep_token_id]])
            logits.append(teacher.model(input_ids=row).logits[0])
    for word in range(len(LONG)):
        j = owner.index(word)
        w = _most_central(j, starts, 8)
        torch.testing.assert_close(emissions[0, word], logits[w][1 + j - starts[w]], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(emissions[0], teacher.emissions([LONG])[0][0], atol=1e-3)  # context differs


def test_label_mapping(checkpoint, teacher, root):
    corpus_labels = sorted(HF_LABELS, key=lambda x: (x != "O", x[2:], x))
    columns = map_labels(HF_LABELS, corpus_labels)
    assert [HF_LABELS[i] for i in columns] == corpus_labels and columns != list(range(7))
    mapped = HFTeacher.load(checkpoint, labels=corpus_labels)
    tokens = [["John", "visited", "Londonderry"]]
    assert mapped.labels == corpus_labels
    torch.testing.assert_close(mapped.emissions(tokens)[0], teacher.emissions(tokens)[0][..., columns])
    assert mapped.decode(tokens) == teacher.decode(tokens)
    bilou = ["O", "U-PER", "B-PER", "I-PER", "L-PER"]
    assert map_labels(bilou, ["O", "B-PER", "I-PER", "E-PER", "S-PER"]) == [0, 2, 3, 4, 1]
    with pytest.raises(TeacherError, match=r"IOB2 and the corpus's BIOES: .*convert_to: IOB2"):
        map_labels(["O", "B-PER", "I-PER"], ["O", "B-PER", "I-PER", "E-PER", "S-PER"])
    with pytest.raises(TeacherError, match=r"teacher labels \['B-MISC', 'I-MISC'\] have no corpus label"):
        map_labels(HF_LABELS + ["B-MISC", "I-MISC"], corpus_labels)
    with pytest.raises(TeacherError, match=r"bert-ner: .*corpus labels \['B-MISC'\] are not the teacher's"):
        HFTeacher.load(checkpoint, labels=HF_LABELS + ["B-MISC"])


def test_annotate_verify_distill_and_evaluate_through_the_hf_teacher(checkpoint, teacher, corpus, root):
    cfg = AnnotateConfig(teachers={"en": str(checkpoint)}, corpora=[corpus], out=str(root / "store"),
                         k=3, shard_size=16, splits=["train", "dev", "test"], device="cpu")
    build_store(cfg, teachers={"en": teacher})
    assert verify_store(cfg.out) == []
    meta = next(iter(open_store(cfg.out).teachers.values()))
    assert meta.labels == HF_LABELS and meta.decoder == "maxent" and meta.fingerprint == teacher.fingerprint()
    kd = KDConfig(method="posterior", k=3)
    student = ModelConfig(EncoderConfig(kind="bilstm", word_dim=16, hidden=16, char="none", dropout=0.0),
                          DecoderConfig(kind="crf"))
    run = DistillConfig(store=cfg.out, kd=kd, model=student, batch_tokens=120, shuffle_buffer=32,
                        optim=OptimConfig(epochs=2, lr=2e-2, warmup=0.0, seed=1), out=str(root / "run"),
                        device="cpu")
    metrics = distill(run, progress=False)
    assert metrics["steps"] > 0 and 0.0 <= metrics["test"]["all"]["f1"] <= 1.0
    assert Tagger.load(root / "run" / "model").labels == HF_LABELS
    test = read_corpus(corpus, "test")
    scores = evaluate_tags([s.labels for s in test], predict(teacher, test), "IOB2")  # evaluate's path
    assert scores["sentences"] == 12 and not teacher.training


@pytest.fixture(scope="module")
def fitted(checkpoint, corpus, root):
    cfg = FitCRFConfig(checkpoint=str(checkpoint), corpus=corpus, out=str(root / "crf"), epochs=8, lr=0.1,
                       batch_size=8, device="cpu", select="last")
    crf_teacher, summary = fit_crf(cfg)
    crf_teacher.save(cfg.out)
    return cfg, crf_teacher, summary


def test_fit_crf_learns_transitions(fitted, teacher, corpus):
    cfg, crf_teacher, summary = fitted
    assert crf_teacher.is_crf and crf_teacher.labels == HF_LABELS
    history = summary["train_nll"]
    assert len(history) == 8 and history[-1] < history[0]
    train = read_corpus(corpus, "train")
    batches = make_batches(cache_emissions(teacher, train, 8), gold_ids(teacher, train), 40)
    (batch,) = batches
    zeros = torch.zeros_like(crf_teacher.transitions)

    def nll(trans, start, end):
        chain = ChainCRF(batch.emissions, trans, batch.mask, start, end, teacher.constraints)
        return -chain.log_prob(batch.gold).mean()

    fitted_nll = nll(crf_teacher.transitions, crf_teacher.start, crf_teacher.end)
    assert fitted_nll < nll(zeros, zeros[0], zeros[0]) - 1.0
    allowed = teacher.constraints.transitions
    assert crf_teacher.transitions[allowed].abs().max() > 0.1
    assert summary["dev_sentences"] == 12 and 0.0 <= summary["dev_f1_after"] <= 1.0
    assert summary["fit_seconds"] >= 0.0 and summary["dev_before"]["sentences"] == 12


@pytest.mark.parametrize("curve, best", [([0.5, 0.4, 0.3, 0.2], 0), ([0.1, 0.2, 0.3, 0.3], 3),
                                         ([0.2, 0.6, 0.3, 0.1], 1)])
def test_fit_factors_keeps_the_best_dev_epoch(teacher, corpus, curve, best):
    """The factors returned are those scored best (epoch 0 = zeros included, ties to the later)."""
    train = read_corpus(corpus, "train")
    batches = make_batches(cache_emissions(teacher, train, 8), gold_ids(teacher, train), 8)
    seen, scored = [], iter(curve)

    def score(factors):
        seen.append({name: value.detach().clone() for name, value in factors.items()})
        return next(scored)

    factors, history, scores = fit_factors(teacher, batches, epochs=3, lr=0.1, seed=1, score=score)
    assert scores == curve and len(history) == 3
    for name in factors:
        assert torch.equal(factors[name], seen[best][name])
    assert seen[0]["transitions"].abs().max() == 0 and seen[3]["transitions"].abs().max() > 0
    last, _, none = fit_factors(teacher, batches, epochs=3, lr=0.1, seed=1)
    assert none == [] and torch.equal(last["transitions"], seen[3]["transitions"])


def test_fit_crf_reports_its_dev_curve(checkpoint, corpus, root):
    cfg = FitCRFConfig(checkpoint=str(checkpoint), corpus=corpus, out=str(root / "crf-dev"), epochs=3,
                       lr=0.1, batch_size=8, device="cpu")
    _, summary = fit_crf(cfg)
    curve = summary["dev_f1_per_epoch"]
    assert summary["select"] == "dev" and len(curve) == 4 and curve[0] == summary["dev_f1_before"]
    assert summary["dev_f1_after"] == curve[summary["best_epoch"]] == max(curve)


def test_fitted_teacher_reloads_and_annotate_stores_its_edges(fitted, corpus, root):
    cfg, crf_teacher, _ = fitted
    assert teacher_kind(cfg.out) == "hf-crf"
    json.loads((root / "crf" / "crf.json").read_text())  # plain JSON beside the safetensors
    loaded = load_any_teacher(cfg.out)
    assert isinstance(loaded, CRFTeacher) and loaded.fingerprint() == crf_teacher.fingerprint()
    tokens = [["John", "Smithson", "visited", "Londonderry"], ["Acmecorp", "said"]]
    a, b = crf_teacher.structure(tokens), loaded.structure(tokens)
    assert isinstance(b, ChainCRF)
    for name in ("node", "edge", "start", "end"):
        torch.testing.assert_close(a.parts[name], b.parts[name])
    assert a.argmax().equal(b.argmax()) and loaded.decode(tokens) == crf_teacher.decode(tokens)
    store = AnnotateConfig(teachers={"en": cfg.out}, corpora=[corpus], out=str(root / "crf-store"), k=3,
                           shard_size=16, splits=["train", "dev"], dtype="float32", device="cpu")
    build_store(store, teachers={"en": loaded})
    assert verify_store(store.out) == []
    opened = open_store(store.out)
    meta = next(iter(opened.teachers.values()))
    assert meta.decoder == "crf"
    row = opened.get("tiny/dev/0")
    chain = loaded.structure([[str(t) for t in row["tokens"]]])
    edge = chain.marginals("edge")["edge"][0].numpy()
    np.testing.assert_allclose(row["edge"], edge, atol=1e-5)
    node = row["node"]
    assert np.abs(row["edge"] - node[:-1, :, None] * node[1:, None, :]).max() > 1e-3  # not MaxEnt's
    assert row["kbest_paths"].shape[0] == 3


def test_fitted_folder_refuses_changed_files(fitted, checkpoint, root):
    cfg, crf_teacher, _ = fitted
    moved = root / "moved"
    shutil.copytree(checkpoint, moved / "ckpt")
    crf_teacher.base.source = str(moved / "ckpt")
    try:
        crf_teacher.save(moved / "crf")
    finally:
        crf_teacher.base.source = str(checkpoint)
    assert json.loads((moved / "crf" / "crf.json").read_text())["checkpoint"] == "../ckpt"
    assert load_any_teacher(moved / "crf").fingerprint() == crf_teacher.fingerprint()
    save_checkpoint(moved / "ckpt", seed=1)  # another model in the checkpoint's place
    with pytest.raises(TeacherError, match="checkpoint .*ckpt changed since fit-crf"):
        load_any_teacher(moved / "crf")
    weights = root / "crf" / "crf.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-4] + b"\0\0\0\0")
        with pytest.raises(TeacherError, match="crf.safetensors does not match crf.json"):
            CRFTeacher.load(cfg.out)
    finally:
        weights.write_bytes(original)


def test_fit_crf_refuses_a_corpus_in_another_scheme(checkpoint, root):
    files = write_tiny_conll(root / "bioes", sizes={"train": 8, "dev": 4}, scheme="BIOES")
    corpus = CorpusConfig(name="bioes", files={k: str(v) for k, v in files.items()})
    with pytest.raises(TeacherError, match="IOB2 and the corpus's BIOES: .*convert_to: IOB2"):
        fit_crf(FitCRFConfig(checkpoint=str(checkpoint), corpus=corpus, out=str(root / "x"), device="cpu"))


def test_fit_crf_command(checkpoint, corpus, root):
    """`structkd fit-crf` end to end."""
    out, params = root / "cli-crf", root / "params.yaml"
    params.write_text("fit_crf: {en: {}}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["fit-crf", "--params", str(params), "--checkpoint", str(checkpoint),
                                      "--train", corpus.files["train"], "--dev", corpus.files["dev"],
                                      "--out", str(out), "--epochs", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    assert isinstance(load_any_teacher(out), CRFTeacher)
