"""Write the synthetic demo corpus of structkd (deterministic: same seed, same bytes).

    python data/demo/make_demo.py [--out data/demo] [--seed 13]

Writes train.conll (900 sentences), dev.conll (200), test.conll (250) in CoNLL-2003 format (``word POS
chunk NER``, IOB2, PER/ORG/LOC/MISC, ``-DOCSTART-`` lines between documents) and unlabeled.txt
(600 raw-text documents, one per line, same domain, no labels). Every sentence comes from the
templates and name lists below, written for this file: nothing is copied from a real corpus.

What makes it hard enough for the methods to differ (a teacher good but imperfect):
- names drawn by Zipf's law from pools of a few hundred (real and invented): dev and test hold
  many names train never shows, which the unlabeled documents do show;
- names of several types (Jordan, Ford, Chelsea), told apart only by the context, sometimes words
  away across a clause, and places inside organisations' names (Bank of Lima, Oslo Airlines);
- annotation noise in train only: 6% of its entities left unlabeled or given another type.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

FIRST = ["Anna", "David", "Maria", "John", "Laura", "Peter", "Sofia", "Thomas", "Elena", "Mark",
         "Julia", "Samuel", "Nadia", "Oliver", "Grace", "Victor", "Ingrid", "Kwame", "Mei",
         "Rafael"]
LAST = ["Hartley", "Moreno", "Okafor", "Lindqvist", "Brennan", "Tanaka", "Kowalski", "Dubois",
        "Fischer", "Novak", "Ramirez", "Whitford", "O'Neill", "Haddad", "Petrov", "Achterberg"]
ORG_STEM = ["Northwind", "Bluefield", "Crestline", "Ironbridge", "Silverlake", "Redwood", "Harbor",
            "Summit", "Granite", "Meridian", "Oakmont", "Pinecrest", "Lakeshore", "Brightwater"]
ORG_SUFFIX = ["Holdings", "Corporation", "Bank", "Group", "Airlines", "Motors", "Energy", "Mining",
              "Foods", "Telecom", "Insurance", "Shipping"]
ORG_FIXED = ["Reuters", "the World Bank", "the Ministry of Finance", "the European Commission"]
LOC = ["London", "Paris", "Tokyo", "Brazil", "Germany", "Chicago", "Nairobi", "Lima", "Oslo",
       "Sydney", "New York", "Buenos Aires", "South Africa", "Hong Kong", "Canada", "Poland",
       "Mexico City", "Vietnam", "Egypt", "Lagos", "Seoul", "Texas", "Bavaria", "Rio de Janeiro"]
NAT = ["German", "French", "Japanese", "Brazilian", "Kenyan", "European", "Canadian", "Polish",
       "Mexican", "Egyptian", "Australian", "Korean"]
EVENT = ["World Cup", "Olympic Games", "Davis Cup", "Asian Games", "Tour de France",
         "Nobel Prize", "Wimbledon"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "March", "April", "June", "July", "September", "October", "December"]
NUMBERS = ["2", "3.5", "12", "40", "1,200", "0.8", "250", "7", "18.4", "3,500"]
SCORES = ["2-1", "3-0", "1-1", "4-2", "6-3"]
TYPES = ["PER", "ORG", "LOC", "MISC"]
SYLLABLES = ["ka", "lo", "ren", "vi", "mar", "do", "sel", "ta", "bri", "no", "gar", "lin", "mo", "ra",
             "ste", "vel", "an", "cor", "dri", "fen", "ga", "hol", "ju", "ker", "mi", "pra", "sa", "tor",
             "ul", "wen", "bo", "ze", "qui", "har", "ny", "ost"]
# Names of more than one type: the context (or a cue words away) is all that tells them apart.
AMBIGUOUS = {"Jordan": "PER LOC", "Washington": "PER LOC", "Georgia": "PER LOC", "Lincoln": "PER LOC",
             "Victoria": "PER LOC", "Madison": "PER LOC", "Florence": "PER LOC", "Austin": "PER LOC",
             "Chester": "PER LOC", "Sydney": "PER LOC", "Troy": "PER LOC", "Paris": "PER LOC",
             "Ford": "PER ORG", "Santos": "PER ORG", "Mercedes": "PER ORG", "Dell": "PER ORG",
             "Chelsea": "PER LOC ORG", "Porto": "LOC ORG", "Everton": "LOC ORG", "Reading": "LOC ORG",
             "Marseille": "LOC ORG", "Monaco": "LOC ORG"}
CLAUSES = ["according to officials speaking on {DAY}", "as most analysts had expected last week",
           "after a long week of difficult talks", "in a statement released late on {DAY}",
           "despite heavy pressure from its critics", "for the second time in {NUM} years",
           "which had been expected to win", "speaking to reporters after the meeting"]

# Template tokens: a slot {X}, a word (POS from LEXICON, label O) or word|LABEL|POS.
TEMPLATES = [
    "{PER} , chief executive of {ORG} , said on {DAY} that profits rose {NUM} percent .",
    "{ORG} shares fell {NUM} % in {LOC} after the {NAT} government cut its forecast .",
    "{PER} scored twice as {LOC} beat {LOC} {SCORE} in the {EVENT} on {DAY} .",
    "The {NAT} team will meet {LOC} in the final of the {EVENT} .",
    "{ORG} said it would buy {ORG} for {MONEY} .",
    "{PER} 's new book was published by {ORG} in {LOC} .",
    "\" We do n't expect any changes , \" {PER} told reporters in {LOC} .",
    "{LOC} and {LOC} signed a trade agreement on {DAY} .",
    "The central bank of {LOC} left interest rates unchanged at {NUM} percent .",
    "{PER} , a spokesman for {ORG} , declined to comment .",
    "Police in {LOC} arrested {NUM} people after the protest , {PER} said .",
    "{ORG} ( {ABBR} ) reported a net loss of {MONEY} for the quarter .",
    "{NAT} farmers protested against the year-on-year fall in prices .",
    "{PER} won the {EVENT} title for the second time .",
    "The {NAT} foreign minister , {PER} , arrived in {LOC} on {DAY} .",
    "{ORG} employs about {NUM} people in {LOC} .",
    "Heavy rain caused flooding across {LOC} , officials in {LOC} said .",
    "{PER} replaced {PER} as chairman of {ORG} .",
    "Oil prices rose to {MONEY} a barrel on {DAY} .",
    "{ORG} and {ORG} agreed to merge their {LOC} operations .",
    "Analysts expect|O|VBP {ORG} to raise its dividend next year .",
    "The {EVENT} will be held in {LOC} next summer .",
    "{PER} was elected mayor of {LOC} with {NUM} percent of the vote .",
    "Exports from {LOC} fell sharply in {MONTH} , the statistics office said .",
    "{PER} and {PER} will lead the talks in {LOC} .",
    "{NAT} stocks closed higher on {DAY} , led by {ORG} .",
    "It was n't clear whether {ORG} would appeal , {PER} said .",
    "The right-wing party of {PER} gained seats in {LOC} .",
    "{ORG} 's profit rose to {MONEY} in {MONTH} .",
    "{LOC} 's economy grew {NUM} percent last year .",
    "{ORG} opened a plant in the U.S.|B-LOC|NNP state of {LOC} .",
    "Mr. {LAST} said the {NAT} economy would recover in {MONTH} .",
    "{PER*} , {CLAUSE} , said he would not stand again .",
    "{LOC*} , {CLAUSE} , reported its first snow of the winter .",
    "{ORG*} , {CLAUSE} , said its sales rose {NUM} percent .",
    "Flights to {LOC*} were cancelled on {DAY} .",
    "{PER*} scored the winner for {ORG*} on {DAY} .",
    "Fans of {ORG*} celebrated in {LOC*} after the final .",
    "{PER*} met {PER*} in {LOC*} on {DAY} .",
    "The mayor of {LOC*} , {PER*} , resigned on {DAY} .",
    "{ORG*} recalled {NUM} cars sold in {LOC*} .",
    "Troops crossed from {LOC*} into {LOC*} overnight .",
    "{PER*} told the {NAT} newspaper that {ORG*} would sell its stake .",
    "Shares of {ORG*} rose after {PER*} bought {NUM} percent of the company .",
    "In {LOC*} , {PER*} said , prices were higher than in {LOC*} .",
    "{ORG*} beat {ORG*} {SCORE} in the {EVENT} , {CLAUSE} .",
    "{PER*} , {CLAUSE} , was born in {LOC*} .",
    "{LOC*} , {CLAUSE} , has a population of {NUM} million .",
]
LEXICON = {
    ",": ",", ".": ".", "\"": "\"", "(": "(", ")": ")", "$": "$", "%": "NN", "'s": "POS",
    "n't": "RB", "The": "DT", "the": "DT", "a": "DT", "its": "PRP$", "their": "PRP$", "It": "PRP",
    "it": "PRP", "We": "PRP", "Mr.": "NNP", "chief": "JJ", "executive": "NN", "of": "IN",
    "said": "VBD", "on": "IN", "that": "IN", "profits": "NNS", "rose": "VBD", "percent": "NN",
    "shares": "NNS", "fell": "VBD", "in": "IN", "after": "IN", "government": "NN", "cut": "VBD",
    "forecast": "NN", "scored": "VBD", "twice": "RB", "as": "IN", "beat": "VBD", "team": "NN",
    "will": "MD", "meet": "VB", "final": "NN", "would": "MD", "buy": "VB", "for": "IN",
    "new": "JJ", "book": "NN", "was": "VBD", "published": "VBN", "by": "IN", "do": "VBP",
    "expect": "VB", "any": "DT", "changes": "NNS", "told": "VBD", "reporters": "NNS",
    "and": "CC", "signed": "VBD", "trade": "NN", "agreement": "NN", "central": "JJ",
    "bank": "NN", "left": "VBD", "interest": "NN", "rates": "NNS", "unchanged": "JJ", "at": "IN",
    "spokesman": "NN", "declined": "VBD", "to": "TO", "comment": "VB", "Police": "NNS",
    "arrested": "VBD", "people": "NNS", "protest": "NN", "reported": "VBD", "net": "JJ",
    "loss": "NN", "quarter": "NN", "farmers": "NNS", "protested": "VBD", "against": "IN",
    "year-on-year": "JJ", "fall": "NN", "prices": "NNS", "won": "VBD", "title": "NN",
    "second": "JJ", "time": "NN", "foreign": "JJ", "minister": "NN", "arrived": "VBD",
    "employs": "VBZ", "about": "IN", "Heavy": "JJ", "rain": "NN", "caused": "VBD",
    "flooding": "NN", "across": "IN", "officials": "NNS", "replaced": "VBD", "chairman": "NN",
    "Oil": "NN", "barrel": "NN", "agreed": "VBD", "merge": "VB", "operations": "NNS",
    "Analysts": "NNS", "raise": "VB", "dividend": "NN", "next": "JJ",
    "year": "NN", "be": "VB", "held": "VBN", "summer": "NN", "elected": "VBN", "mayor": "NN",
    "with": "IN", "vote": "NN", "Exports": "NNS", "from": "IN", "sharply": "RB",
    "statistics": "NNS", "office": "NN", "lead": "VB", "talks": "NNS", "stocks": "NNS",
    "closed": "VBD", "higher": "JJR", "led": "VBN", "clear": "JJ", "whether": "IN",
    "appeal": "VB", "right-wing": "JJ", "party": "NN", "gained": "VBD", "seats": "NNS",
    "profit": "NN", "economy": "NN", "grew": "VBD", "last": "JJ", "opened": "VBD",
    "plant": "NN", "state": "NN", "recover": "VB", "million": "CD", "billion": "CD",
    "according": "VBG", "officials": "NNS", "speaking": "VBG", "most": "JJS", "analysts": "NNS",
    "had": "VBD", "expected": "VBN", "week": "NN", "long": "JJ", "difficult": "JJ", "statement": "NN",
    "released": "VBN", "late": "RB", "despite": "IN", "heavy": "JJ", "pressure": "NN", "critics": "NNS",
    "years": "NNS", "which": "WDT", "been": "VBN", "win": "VB", "meeting": "NN", "he": "PRP",
    "not": "RB", "stand": "VB", "again": "RB", "first": "JJ", "snow": "NN", "winter": "NN",
    "sales": "NNS", "Flights": "NNS", "were": "VBD", "cancelled": "VBN", "winner": "NN",
    "Fans": "NNS", "celebrated": "VBD", "met": "VBD", "resigned": "VBD", "recalled": "VBD",
    "cars": "NNS", "sold": "VBN", "Troops": "NNS", "crossed": "VBD", "into": "IN",
    "overnight": "RB", "newspaper": "NN", "sell": "VB", "stake": "NN", "Shares": "NNS",
    "bought": "VBD", "company": "NN", "In": "IN", "than": "IN", "born": "VBN",
    "population": "NN", "has": "VBZ",
}
_CHUNK = {"NP": {"DT", "JJ", "JJR", "NN", "NNS", "NNP", "CD", "PRP", "PRP$", "POS", "$"},
          "VP": {"VB", "VBD", "VBZ", "VBP", "VBN", "MD", "TO"}, "PP": {"IN"}, "ADVP": {"RB"}}
_CHUNK_OF = {pos: chunk for chunk, tags in _CHUNK.items() for pos in tags}
_NO_SPACE_BEFORE = {",", ".", ")", "%", "'s", "n't"}
_NO_SPACE_AFTER = {"(", "$"}


SPLITS = [("train", 900, 0.06), ("dev", 200, 0.0), ("test", 250, 0.0)]  # name, sentences, noise
UNLABELED_DOCS = 600


def _pseudo(rng: random.Random, n: int, suffixes: list[str]) -> list[str]:
    """``n`` distinct invented names: two or three syllables and one of ``suffixes``."""
    out: set[str] = set()
    while len(out) < n:
        stem = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3))))
        out.add((stem + rng.choice(suffixes)).capitalize())
    return sorted(out)


def _ranked(real: list[str], invented: list[str], rng: random.Random) -> tuple[list[str], list[float]]:
    """A name pool in a random rank order and its Zipf (1 / rank) cumulative weights: a few names
    are frequent, most are rare, so dev and test hold names that train never shows."""
    pool = real + invented
    rng.shuffle(pool)
    weights = [1.0 / (rank + 1) for rank in range(len(pool))]
    return pool, [sum(weights[:i + 1]) for i in range(len(weights))]


_POOLS = random.Random(7)
POOL = {"FIRST": _ranked(FIRST, _pseudo(_POOLS, 40, ["a", "o", "el", "ine", "is", ""]), _POOLS),
        "LAST": _ranked(LAST, _pseudo(_POOLS, 260, ["son", "ez", "ova", "ski", "er", "ini", "ard", ""]), _POOLS),
        "LOC": _ranked(LOC, _pseudo(_POOLS, 160, ["ia", "burg", "stan", "ville", "ton", "ona", "ar"]), _POOLS),
        "ORG": _ranked(ORG_STEM, _pseudo(_POOLS, 110, ["tex", "ix", "ora", "ant", "um", ""]), _POOLS)}


def _draw(pool: str, rng: random.Random) -> str:
    names, cum = POOL[pool]
    return rng.choices(names, cum_weights=cum)[0]


def _ambiguous(etype: str, rng: random.Random) -> str:
    return rng.choice([word for word, types in AMBIGUOUS.items() if etype in types.split()])


def _entity(words: str, etype: str, pos: str = "NNP") -> list[tuple[str, str, str]]:
    return [(w, pos, ("B-" if i == 0 else "I-") + etype) for i, w in enumerate(words.split())]


def _org(rng: random.Random) -> list[tuple[str, str, str]]:
    draw = rng.random()
    if draw < 0.1:
        name = rng.choice(ORG_FIXED)
        if name.startswith("the "):
            return [("the", "DT", "O")] + _entity(name[4:], "ORG")
        return _entity(name, "ORG")
    if draw < 0.25:  # a place inside an organisation's name is part of the organisation
        place = _draw("LOC", rng)
        return _entity(f"Bank of {place}" if rng.random() < 0.4 else f"{place} {rng.choice(ORG_SUFFIX)}", "ORG")
    return _entity(f"{_draw('ORG', rng)} {rng.choice(ORG_SUFFIX)}", "ORG")


def _fill(slot: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """(word, POS, NER) triples for one template slot. ``X*`` prefers a name that is also a name of
    another type (Jordan, Ford, Chelsea): only the rest of the sentence tells which."""
    etype = slot.rstrip("*")
    if etype in ("PER", "LOC", "ORG") and rng.random() < (0.5 if slot.endswith("*") else 0.06):
        return _entity(_ambiguous(etype, rng), etype)
    if etype == "PER":
        first = "" if rng.random() < 0.3 else _draw("FIRST", rng) + " "
        return _entity(first + _draw("LAST", rng), "PER")
    if etype == "LAST":
        return _entity(_draw("LAST", rng), "PER")
    if etype == "ORG":
        return _org(rng)
    if etype == "ABBR":
        return _entity("".join(rng.sample("ABCDEFGHKLMNPRSTW", 3)), "ORG")
    if etype == "LOC":
        return _entity(_draw("LOC", rng), "LOC")
    if etype == "NAT":
        return _entity(rng.choice(NAT), "MISC", "JJ")
    if etype == "EVENT":
        return _entity(rng.choice(EVENT), "MISC")
    if etype == "MONEY":
        return [("$", "$", "O"), (rng.choice(NUMBERS), "CD", "O"),
                (rng.choice(["million", "billion"]), "CD", "O")]
    if etype == "CLAUSE":
        return [triple for token in rng.choice(CLAUSES).split() for triple in _token(token, rng)]
    word = {"NUM": NUMBERS, "SCORE": SCORES, "DAY": DAYS, "MONTH": MONTHS}[etype]
    return [(rng.choice(word), "NNP" if etype in ("DAY", "MONTH") else "CD", "O")]


def _token(token: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """A template token: a slot {X}, a word (POS from LEXICON, label O) or word|LABEL|POS."""
    if token.startswith("{"):
        return _fill(token[1:-1], rng)
    if "|" in token:
        word, label, pos = token.split("|")
        return [(word, pos, label)]
    return [(token, LEXICON[token], "O")]


def _noisy(triples: list[tuple[str, str, str]], rng: random.Random, noise: float) -> list[tuple[str, str, str]]:
    """Annotation noise: each entity is, with probability ``noise``, left unlabeled (half the
    cases) or given another type."""
    out = list(triples)
    starts = [i for i, (_, _, label) in enumerate(out) if label.startswith("B-")]
    for start in starts:
        if rng.random() >= noise:
            continue
        end = start + 1
        while end < len(out) and out[end][2].startswith("I-"):
            end += 1
        new = "O" if rng.random() < 0.5 else rng.choice([t for t in TYPES if t != out[start][2][2:]])
        for i in range(start, end):
            prefix = "B-" if i == start else "I-"
            out[i] = (out[i][0], out[i][1], "O" if new == "O" else prefix + new)
    return out


def _chunks(pos_tags: list[str]) -> list[str]:
    """IOB2 chunk tags from POS tags: a phrase is a run of one chunk type (PP: one word)."""
    out, prev = [], None
    for pos in pos_tags:
        chunk = _CHUNK_OF.get(pos)
        out.append("O" if chunk is None else ("I-" if chunk == prev and chunk != "PP" else "B-")
                   + chunk)
        prev = chunk
    return out


def sentence(rng: random.Random, noise: float = 0.0) -> list[tuple[str, str, str, str]]:
    """One synthetic sentence as (word, POS, chunk, NER) rows; ``noise``: see ``_noisy``."""
    triples = [triple for token in rng.choice(TEMPLATES).split() for triple in _token(token, rng)]
    if triples[0][0] == "the":
        triples[0] = ("The",) + triples[0][1:]
    if noise:
        triples = _noisy(triples, rng, noise)
    chunks = _chunks([pos for _, pos, _ in triples])
    return [(w, pos, chunk, ner) for (w, pos, ner), chunk in zip(triples, chunks)]


def detokenize(tokens: list[str]) -> str:
    """Raw text of a token list, as a news writer would type it."""
    text, glue, quote_open = "", True, False
    for tok in tokens:
        if tok == "\"":
            attach = quote_open
            quote_open = not quote_open
        else:
            attach = tok in _NO_SPACE_BEFORE
        text += tok if glue or attach else " " + tok
        glue = tok in _NO_SPACE_AFTER or (tok == "\"" and quote_open)
    return text


def conll_text(sentences: list[list[tuple[str, str, str, str]]], rng: random.Random) -> str:
    """CoNLL-2003 text: documents of 4 to 12 sentences, each after a -DOCSTART- line."""
    out, left = [], 0
    for rows in sentences:
        if left == 0:
            out.append("-DOCSTART- -X- -X- O\n")
            left = rng.randint(4, 12)
        out.append("".join(" ".join(row) + "\n" for row in rows))
        left -= 1
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for split, n, noise in SPLITS:
        text = conll_text([sentence(rng, noise) for _ in range(n)], rng)
        (args.out / f"{split}.conll").write_text(text, encoding="utf-8")
    docs = [" ".join(detokenize([row[0] for row in sentence(rng)])
                     for _ in range(rng.randint(2, 4))) for _ in range(UNLABELED_DOCS)]
    (args.out / "unlabeled.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
