"""Write the synthetic demo corpus of structkd (deterministic: same seed, same bytes).

    python data/demo/make_demo.py [--out data/demo] [--seed 13]

Writes train.conll (600 sentences), dev.conll (150), test.conll (150) in CoNLL-2003 format (``word POS
chunk NER``, IOB2, PER/ORG/LOC/MISC, ``-DOCSTART-`` lines between documents) and unlabeled.txt
(300 raw-text documents, one per line, same domain, no labels). Every sentence comes from the
templates and name lists below, written for this file: nothing is copied from a real corpus.
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
ORG_SUFFIX = ["Holdings", "Corp", "Bank", "Group", "Airlines", "Motors", "Energy", "Mining",
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
}
_CHUNK = {"NP": {"DT", "JJ", "JJR", "NN", "NNS", "NNP", "CD", "PRP", "PRP$", "POS", "$"},
          "VP": {"VB", "VBD", "VBZ", "VBP", "VBN", "MD", "TO"}, "PP": {"IN"}, "ADVP": {"RB"}}
_CHUNK_OF = {pos: chunk for chunk, tags in _CHUNK.items() for pos in tags}
_NO_SPACE_BEFORE = {",", ".", ")", "%", "'s", "n't"}
_NO_SPACE_AFTER = {"(", "$"}


def _entity(words: str, etype: str, pos: str = "NNP") -> list[tuple[str, str, str]]:
    return [(w, pos, ("B-" if i == 0 else "I-") + etype) for i, w in enumerate(words.split())]


def _org(rng: random.Random) -> list[tuple[str, str, str]]:
    if rng.random() < 0.15:
        name = rng.choice(ORG_FIXED)
        if name.startswith("the "):
            return [("the", "DT", "O")] + _entity(name[4:], "ORG")
        return _entity(name, "ORG")
    return _entity(f"{rng.choice(ORG_STEM)} {rng.choice(ORG_SUFFIX)}", "ORG")


def _fill(slot: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """(word, POS, NER) triples for one template slot."""
    if slot == "PER":
        first = "" if rng.random() < 0.25 else rng.choice(FIRST) + " "
        return _entity(first + rng.choice(LAST), "PER")
    if slot == "LAST":
        return _entity(rng.choice(LAST), "PER")
    if slot == "ORG":
        return _org(rng)
    if slot == "ABBR":
        return _entity("".join(rng.sample("ABCDEFGHKLMNPRSTW", 3)), "ORG")
    if slot == "LOC":
        return _entity(rng.choice(LOC), "LOC")
    if slot == "NAT":
        return _entity(rng.choice(NAT), "MISC", "JJ")
    if slot == "EVENT":
        return _entity(rng.choice(EVENT), "MISC")
    if slot == "MONEY":
        return [("$", "$", "O"), (rng.choice(NUMBERS), "CD", "O"),
                (rng.choice(["million", "billion"]), "CD", "O")]
    word = {"NUM": NUMBERS, "SCORE": SCORES, "DAY": DAYS, "MONTH": MONTHS}[slot]
    return [(rng.choice(word), "NNP" if slot in ("DAY", "MONTH") else "CD", "O")]


def _chunks(pos_tags: list[str]) -> list[str]:
    """IOB2 chunk tags from POS tags: a phrase is a run of one chunk type (PP: one word)."""
    out, prev = [], None
    for pos in pos_tags:
        chunk = _CHUNK_OF.get(pos)
        out.append("O" if chunk is None else ("I-" if chunk == prev and chunk != "PP" else "B-")
                   + chunk)
        prev = chunk
    return out


def sentence(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """One synthetic sentence as (word, POS, chunk, NER) rows."""
    triples: list[tuple[str, str, str]] = []
    for token in rng.choice(TEMPLATES).split():
        if token.startswith("{"):
            triples.extend(_fill(token[1:-1], rng))
        elif "|" in token:
            word, label, pos = token.split("|")
            triples.append((word, pos, label))
        else:
            triples.append((token, LEXICON[token], "O"))
    if triples[0][0] == "the":
        triples[0] = ("The",) + triples[0][1:]
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
    for split, n in [("train", 600), ("dev", 150), ("test", 150)]:
        text = conll_text([sentence(rng) for _ in range(n)], rng)
        (args.out / f"{split}.conll").write_text(text, encoding="utf-8")
    docs = [" ".join(detokenize([row[0] for row in sentence(rng)])
                     for _ in range(rng.randint(2, 4))) for _ in range(300)]
    (args.out / "unlabeled.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
