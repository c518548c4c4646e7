"""Agreement of raw-text sentence splitting + tokenization with CoNLL's own tokens (issue 19).

    OMP_NUM_THREADS=1 python bench/bench_rawtext.py [--old REV] [--json FILE]

Raw text is rebuilt from the CoNLL files: one document per ``-DOCSTART-`` (CoNLL-2003), or per
10 consecutive sentences (CoNLL-2002 Spanish has no document marks), its sentences joined by one
space. Two renderings of each sentence:

- ``spaced``: its tokens joined by one space (no detokenization, nothing is ambiguous);
- ``detok``: no space before ``, . ; : ! ? % ) ] }`` and the clitics ``'s n't 're 've 'll 'd 'm``,
  none after ``( [ { $ ¿ ¡``; a ``.`` after a token ending in ``.`` (CoNLL's ``U.S. .``) and quotes,
  whose side is ambiguous, keep their spaces.

Each splitter's tokens are located in the text in order; scores are over character spans: token
P/R/F1, exact sentences (same token spans) and sentence breaks (start offsets of the 2nd, 3rd, ...
sentence of a document). ``old`` is ``pipeline/rawtext.py`` at git revision ``--old`` (the
hand-written English rules), ``new`` the current ``pipeline.rawtext.sentences(text, lang)``,
``spacy+`` its spaCy path (with its two CoNLL adjustments) for every language, English included,
``spacy`` a bare ``spacy.blank(lang)`` + sentencizer and ``syntok`` syntok's segmenter as it comes
(hyphens and ``n't`` kept).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
CORPORA = {"en": [DATA / "conll2003_en" / f"{s}.txt" for s in ("train", "valid", "test")],
           "es": [DATA / "conll2002" / f"esp.{s}" for s in ("train", "testa", "testb")]}
NO_SPACE_BEFORE = frozenset(",.;:!?%)]}") | {"'s", "'S", "n't", "N'T", "'re", "'ve", "'ll", "'d",
                                               "'m"}
NO_SPACE_AFTER = frozenset("([{$¿¡")


def documents(paths: list[Path], per_doc: int = 10) -> list[list[list[str]]]:
    """Documents (lists of token lists) of CoNLL files: split at ``-DOCSTART-``, or every
    ``per_doc`` sentences in files without it."""
    docs: list[list[list[str]]] = []
    for path in paths:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        marked = any(line.startswith("-DOCSTART-") for line in lines)
        doc: list[list[str]] = []
        sent: list[str] = []
        for line in lines + [""]:
            word = line.split(" ")[0] if line.strip() else ""
            if word and word != "-DOCSTART-":
                sent.append(word)
                continue
            if sent:
                doc.append(sent)
                sent = []
            if (word == "-DOCSTART-" or (not marked and len(doc) == per_doc)) and doc:
                docs.append(doc)
                doc = []
        if doc:
            docs.append(doc)
    return docs


def render(doc: list[list[str]], detok: bool) -> tuple[str, list[list[tuple[int, int]]]]:
    """Raw text of a document and the character spans of its gold tokens."""
    text, spans = "", []
    for sent in doc:
        spans.append([])
        for i, tok in enumerate(sent):
            glued = detok and i > 0 and (
                (tok in NO_SPACE_BEFORE and not (tok == "." and sent[i - 1].endswith(".")))
                or sent[i - 1] in NO_SPACE_AFTER)
            if text and not glued:
                text += " "
            spans[-1].append((len(text), len(text) + len(tok)))
            text += tok
    return text, spans


def locate(text: str, sents: list[list[str]]) -> list[list[tuple[int, int] | None]]:
    """Character spans of predicted tokens, found in order (None: a token not in the text)."""
    pos, out = 0, []
    for sent in sents:
        out.append([])
        for tok in sent:
            start = text.find(tok, pos)
            if start < 0 or text[pos:start].strip():
                out[-1].append(None)
                continue
            pos = start + len(tok)
            out[-1].append((start, pos))
    return out


def f1(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p, r = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return {"P": round(100 * p, 2), "R": round(100 * r, 2),
            "F1": round(200 * p * r / max(p + r, 1e-12), 2)}


def score(split, docs: list[list[list[str]]], lang: str, detok: bool) -> dict:
    counts = dict.fromkeys(("tok_tp", "tok_p", "tok_g", "sen_tp", "sen_p", "sen_g", "brk_tp",
                            "brk_p", "brk_g"), 0)
    seconds = 0.0
    for doc in docs:
        text, gold = render(doc, detok)
        start = time.perf_counter()
        pred = locate(text, split(text, lang))
        seconds += time.perf_counter() - start
        gtok = {s for sent in gold for s in sent}
        ptok = [s for sent in pred for s in sent]
        counts["tok_tp"] += len(gtok.intersection(ptok))
        counts["tok_p"] += len(ptok)
        counts["tok_g"] += len(gtok)
        gsen = {tuple(sent) for sent in gold}
        counts["sen_tp"] += sum(tuple(sent) in gsen for sent in pred)
        counts["sen_p"] += len(pred)
        counts["sen_g"] += len(gold)
        gbrk = {sent[0][0] for sent in gold[1:]}
        pbrk = {sent[0][0] for sent in pred[1:] if sent and sent[0]}
        counts["brk_tp"] += len(gbrk & pbrk)
        counts["brk_p"] += len(pred) - 1
        counts["brk_g"] += len(gold) - 1
    c = counts
    return {"tokens": f1(c["tok_tp"], c["tok_p"], c["tok_g"]),
            "sentences": f1(c["sen_tp"], c["sen_p"], c["sen_g"]),
            "breaks": f1(c["brk_tp"], c["brk_p"], c["brk_g"]),
            "seconds": round(seconds, 1), "gold_tokens": c["tok_g"], "gold_sentences": c["sen_g"]}


def old_splitter(rev: str):
    """``sentences`` of pipeline/rawtext.py at git revision ``rev`` (English rules, no lang)."""
    source = subprocess.run(["git", "show", f"{rev}:pipeline/rawtext.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_rawtext.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_rawtext", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda text, lang: module.sentences(text)


def spacy_splitter():
    import spacy
    nlps = {}

    def split(text, lang):
        if lang not in nlps:
            nlps[lang] = spacy.blank(lang)
            nlps[lang].add_pipe("sentencizer")
        return [[t.text for t in s if not t.is_space] for s in nlps[lang](text).sents]
    return split


def syntok_splitter():
    from syntok.segmenter import split as segment
    from syntok.tokenizer import Tokenizer
    tok = Tokenizer(emit_hyphen_or_underscore_sep=True, replace_not_contraction=False)
    return lambda text, lang: [[t.value for t in s] for s in segment(tok.tokenize(text))]


def new_splitter(spacy_path: bool = False):
    from pipeline import rawtext
    return rawtext._spacy_sentences if spacy_path else rawtext.sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", default="707c755", help="git revision of the English rules")
    parser.add_argument("--only", nargs="*", help="splitters to run (old new spacy+ spacy syntok)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    makers = {"old": lambda: old_splitter(args.old), "new": new_splitter,
              "spacy+": lambda: new_splitter(spacy_path=True), "spacy": spacy_splitter, "syntok": syntok_splitter}
    results = []
    for lang, paths in CORPORA.items():
        docs = documents(paths)
        for name, make in makers.items():
            if args.only and name not in args.only:
                continue
            split = make()
            for detok in (False, True):
                row = {"lang": lang, "splitter": name, "text": "detok" if detok else "spaced",
                       "documents": len(docs), **score(split, docs, lang, detok)}
                results.append(row)
                print(f"{lang} {name:7s} {row['text']:6s} tokens F1 {row['tokens']['F1']:6.2f}  "
                      f"sentences F1 {row['sentences']['F1']:6.2f} (R {row['sentences']['R']:6.2f})"
                      f"  breaks P/R/F1 {row['breaks']['P']:6.2f} {row['breaks']['R']:6.2f} "
                      f"{row['breaks']['F1']:6.2f}  {row['seconds']:6.1f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
