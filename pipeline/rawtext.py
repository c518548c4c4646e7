"""Offline, rule-based sentence splitting and tokenization in the style of CoNLL tokens.

The corpus's language (``CorpusConfig.lang``) picks the splitter. English uses the hand-written
rules below: on CoNLL-2003's own raw sentences they agree better with its tokens and sentence
breaks than spaCy's or syntok's rule-based splitters (bench/README.md, issue 19). Every other
language uses spaCy's rule-based tokenizer for that language (``spacy.blank(lang)``, its
language's exceptions and punctuation rules, no model) with its sentencizer, and two documented
CoNLL adjustments: hyphens inside a word or number are not split off (``árabe-israelí``,
``1996-08-22``, as CoNLL-2002/2003 keep them), and a mark spaced off a sentence's final
punctuation (``medidas. "Es``, ``pasa. ¿Qué``) starts the next sentence rather than ending it. A
language spaCy does not cover is an error.

English conventions (those of the CoNLL-2003 / Penn Treebank tokens):
- punctuation is split off words: ``said,`` -> ``said ,``; ``(AP)`` -> ``( AP )``; ``"Yes"`` ->
  ``" Yes "`` (quotes are kept as typed, not rewritten to `` and ''); ``$5`` -> ``$ 5``;
  ``3.5%`` -> ``3.5 %``; ``--`` and ``...`` are tokens;
- clitics are split: ``Germany's`` -> ``Germany 's``, ``don't`` -> ``do n't``, ``we're`` ->
  ``we 're``; a possessive plural keeps its apostrophe as a token (``ministers'`` ->
  ``ministers '``);
- kept whole: dotted abbreviations and initials (``U.S.``, ``a.m.``, ``J.``), known abbreviations
  (``Inc.``, ``Mr.``, ``Calif.``), numbers (``1,200.50``, ``1996-08-22``, ``6-4``, ``1/2``,
  ``10:30``), hyphenated words (``right-wing``, ``U.S.-led``), names with an apostrophe
  (``O'Brien``);
- a sentence that ends with an abbreviation gets its own final period, as CoNLL-2003 does: ``Acme
  Inc.`` -> ``Acme Inc .``, and ``the U.S.`` -> ``the U.S. .``.

Sentences end after ``.``, ``!`` or ``?`` (with any closing quotes or brackets glued to them) when
the next word does not start in lower case; after ``...`` when it starts in upper case; after an
abbreviation only when the next word is a common sentence opener (``The``, ``It``, ...), and never
after a title (``Mr.``, ``Dr.``, ``St.``) or an initial.
"""
from __future__ import annotations

import functools
import re

TITLES = frozenset("""Mr Mrs Ms Messrs Dr Prof Gen Sen Rep Gov Lt Col Capt Sgt Maj Adm Cmdr Rev
    Gens St Mt Ft No Nos vs""".split())
ABBREVIATIONS = TITLES | frozenset("""Jr Sr Inc Corp Co Cos Ltd Plc Bros Assn Dept Univ Govt etc
    approx est Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec Mon Tue Tues Wed Thu Thur Thurs Fri
    Sat Sun Ala Ariz Ark Calif Colo Conn Del Fla Ga Ill Ind Kan Ky La Md Mass Mich Minn Miss Mo
    Mont Neb Nev Okla Ore Pa Tenn Tex Va Vt Wash Wis Wyo""".split())
OPENERS = frozenset("We It He She They In On At But This That These Those Its His Her Their "
                    "There The A An I However Meanwhile Also For As After Earlier Later Last If "
                    "When While Some Most Other Both One Analysts Officials".split())
_OPEN_PUNCT = frozenset("\"'`“‘([{<«")
_CLOSE_PUNCT = frozenset("\"'”’)]}>»,;:!?%")
_GLUED_CLOSERS = frozenset("\"'”’)]}»")
_CLITIC = re.compile(r"(.+?)(n['’]t|['’](?:s|re|ve|ll|d|m))", re.IGNORECASE)
_BARE_CLITIC = re.compile(r"n['’]t|['’](?:s|re|ve|ll|d|m)", re.IGNORECASE)
_INITIALS = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")
_INNER = re.compile(r"(-{2,}|—|…|\.{2,}|[;!?]|(?<!\d),|,(?!\d))")
_DOTS = re.compile(r"\.{2,}|…")
_TRAILING_DOTS = re.compile(r"(?:\.{2,}|…)$")
_DECADE = re.compile(r"['’]\d0s(?![\w'’])")
_LIST_NUMBER = re.compile(r"\d{1,3}\.")
_NO_GLYPH = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


def _chunk_tokens(text: str) -> list[list[str]]:
    """Tokens of each whitespace-separated chunk of ``text``. Control and zero-width characters
    count as whitespace, soft hyphens are removed, and a list number opening the text (``1.``,
    as in sports results) keeps its period."""
    chunks = _NO_GLYPH.sub(" ", text.replace("\xad", "")).split()
    return [[chunk] if i == 0 and _LIST_NUMBER.fullmatch(chunk) else _split_chunk(chunk)
            for i, chunk in enumerate(chunks)]


def _is_abbreviation(token: str) -> bool:
    """A word ending in ``.`` whose period belongs to it (``U.S.``, ``J.``, ``Inc.``, ``CORP.``)."""
    if len(token) < 2 or token[-1] != "." or token[-2] == ".":
        return False
    body = token[:-1]
    if _INITIALS.fullmatch(body) or body in ABBREVIATIONS:
        return True
    return len(body) > 2 and body.isupper() and body.title() in ABBREVIATIONS


def _is_title(token: str) -> bool:
    """An abbreviation after which a sentence never ends: titles and single initials."""
    body = token[:-1]
    return body in TITLES or (len(body) == 1 and body.isalpha())


def _split_chunk(chunk: str) -> list[str]:
    """Tokens of one whitespace-free chunk of text."""
    if chunk.isalnum():
        return [chunk]
    head: list[str] = []
    tail: list[str] = []
    while len(chunk) > 1:
        dots = _DOTS.match(chunk)
        if dots:
            head.append(dots.group())
            chunk = chunk[dots.end():]
        elif chunk[0] == "$" or (chunk[0] in _OPEN_PUNCT and not _BARE_CLITIC.fullmatch(chunk)
                                 and not _DECADE.match(chunk)):
            head.append(chunk[0])
            chunk = chunk[1:]
        else:
            break
    while len(chunk) > 1:
        dots = _TRAILING_DOTS.search(chunk)
        if dots:
            tail.insert(0, dots.group())
            chunk = chunk[:dots.start()]
        elif chunk[-1] in _CLOSE_PUNCT or (chunk[-1] == "." and not _is_abbreviation(chunk)):
            tail.insert(0, chunk[-1])
            chunk = chunk[:-1]
        else:
            break
    if not chunk:
        return head + tail
    parts = [p for p in _INNER.split(chunk) if p]
    if len(parts) > 1:
        return head + [t for part in parts for t in _split_chunk(part)] + tail
    clitic = _CLITIC.fullmatch(chunk)
    if clitic:
        return head + [clitic.group(1), clitic.group(2)] + tail
    return head + [chunk] + tail


def tokenize(text: str, lang: str = "en") -> list[str]:
    """CoNLL-style tokens of ``text`` in language ``lang`` (no sentence splitting)."""
    if lang != "en":
        return [tok for sent in sentences(text, lang) for tok in sent]
    return [tok for chunk in _chunk_tokens(text) for tok in chunk]


def _ends_sentence(last: str, following: str) -> bool:
    """Does a sentence end after token ``last`` when token ``following`` comes next?"""
    if _is_abbreviation(last):
        return not _is_title(last) and following in OPENERS
    if _DOTS.fullmatch(last):
        return following[0].isupper()
    return not following[0].islower()


def _close_abbreviation(sentence: list[str]) -> None:
    """Give a sentence ending on an abbreviation its own final period (CoNLL style)."""
    token = sentence[-1]
    if _is_abbreviation(token):
        sentence[-1:] = [token[:-1], "."] if token.count(".") == 1 else [token, "."]


def sentences(text: str, lang: str = "en") -> list[list[str]]:
    """Split raw ``text`` (a paragraph or document) in language ``lang`` into tokenized
    sentences; none are dropped."""
    if lang != "en":
        return _spacy_sentences(text, lang)
    tokens = [(tok, i == 0) for chunk in _chunk_tokens(text) for i, tok in enumerate(chunk)]
    out: list[list[str]] = []
    current: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i][0]
        current.append(token)
        i += 1
        if token not in (".", "!", "?") and not _DOTS.fullmatch(token) \
                and not _is_abbreviation(token):
            continue
        while i < len(tokens) and not tokens[i][1] and tokens[i][0] in _GLUED_CLOSERS:
            current.append(tokens[i][0])
            i += 1
        if i == len(tokens) or _ends_sentence(token, tokens[i][0]):
            _close_abbreviation(current)
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


@functools.cache
def _spacy_pipeline(lang: str):
    """``spacy.blank(lang)`` + sentencizer, with hyphens inside words and numbers left whole."""
    import spacy
    from spacy.util import compile_infix_regex
    try:
        nlp = spacy.blank(lang)
    except ImportError:
        raise ValueError(f"raw text in language {lang!r}: spaCy has no tokenizer for it "
                         f"(use an ISO 639-1 code spaCy supports, e.g. en, es, de, nl)") from None
    infixes = [p for p in nlp.Defaults.infixes
               if not re.search(p, "a-b") and not re.search(p, "1-2")]
    nlp.tokenizer.infix_finditer = compile_infix_regex(infixes).finditer
    nlp.add_pipe("sentencizer")
    return nlp


def _spacy_sentences(text: str, lang: str) -> list[list[str]]:
    nlp = _spacy_pipeline(lang)
    ends = nlp.get_pipe("sentencizer").punct_chars
    doc = nlp(_NO_GLYPH.sub(" ", text.replace("\xad", "")))
    out: list[list] = []
    for sent in doc.sents:
        words = [t for t in sent if not t.is_space]
        if out:  # marks spaced off the last sentence's final punctuation open this one
            last = out[-1]
            while len(last) > 1 and last[-1].is_punct and last[-1].text not in ends \
                    and last[-2].whitespace_:
                words.insert(0, last.pop())
        if words:
            out.append(words)
    return [[t.text for t in words] for words in out]
