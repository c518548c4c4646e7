"""How sure the teacher is, split by split, read from a store with pandas (issue 19: why unlabeled
text can hurt a student).

For each (corpus, split) of a sequence-labeling store: sentences, mean P(top-1 path) (the stored
k-best's first log-probability), the share of tokens the teacher's Viterbi path labels as entities
(not O), and, where the split has gold labels, the sentence exact-match rate of the Viterbi path,
its token accuracy and the expected calibration error of P(top-1) as a predictor of exact match
(10 equal-width bins: sum over bins of |bin share| * |mean P - exact-match rate|); per token, the
max node marginal (mean, share below 0.9) and its ECE against the marginal argmax being gold.

    python bench/teacher_calibration.py stores/conll03-converged
"""
from __future__ import annotations

import sys

import numpy as np

from store import open_store

BINS = 10


def ece(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Expected calibration error of ``confidence`` [N] in [0, 1] against ``correct`` [N] bool."""
    index = np.minimum((confidence * BINS).astype(int), BINS - 1)
    total = 0.0
    for b in range(BINS):
        chosen = index == b
        if chosen.any():
            total += chosen.mean() * abs(confidence[chosen].mean() - correct[chosen].mean())
    return float(total)


def node_confidence(store) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sid -> (max node marginal [L], its label [L]) of every sentence (the stored ``node`` array)."""
    out = {}
    for shard in store.shards():
        for sentence in store.iter_shard(shard):
            node = sentence["node"].astype(np.float64)
            out[sentence["sid"]] = (node.max(1), node.argmax(1))
    return out


def split_rows(path: str) -> list[dict]:
    store = open_store(path)
    outside = store.labels.index("O") if "O" in store.labels else -1
    frame = store.frame(["sid", "corpus", "split", "length", "gold_ids", "viterbi", "kbest_logprob"])
    nodes = node_confidence(store)
    rows = []
    for (corpus, split), part in frame.groupby(["corpus", "split"], sort=False):
        top1 = np.exp(np.array([lp[0] for lp in part["kbest_logprob"]], dtype=np.float64))
        viterbi = list(part["viterbi"])
        confidence = np.concatenate([nodes[sid][0] for sid in part["sid"]])
        row = {"data": f"{corpus}/{split}", "sentences": len(part), "length": float(part["length"].mean()),
               "p_top1": float(top1.mean()), "token_conf": float(confidence.mean()),
               "unsure": float(np.mean(confidence < 0.9)),
               "entity_tokens": float(np.mean(np.concatenate(viterbi) != outside))}
        if part["gold_ids"].notna().all():
            gold = list(part["gold_ids"])
            exact = np.array([np.array_equal(v, g) for v, g in zip(viterbi, gold)])
            right = np.concatenate([nodes[sid][1] == g for sid, g in zip(part["sid"], gold)])
            row.update(exact=float(exact.mean()), ece=ece(top1, exact), token_ece=ece(confidence, right),
                       token_acc=float(np.mean(np.concatenate(viterbi) == np.concatenate(gold))))
        rows.append(row)
    return rows


def main(path: str) -> None:
    print("| data | sentences | mean length | mean P(top-1) | exact match | ECE | mean token conf. | "
          "tokens conf. < 0.9 | token ECE | token acc. | entity tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in split_rows(path):
        fmt = {key: ("-" if key not in r else f"{r[key]:.4f}") for key in ("exact", "ece", "token_ece", "token_acc")}
        print(f"| {r['data']} | {r['sentences']} | {r['length']:.1f} | {r['p_top1']:.4f} | {fmt['exact']} | "
              f"{fmt['ece']} | {r['token_conf']:.4f} | {r['unsure']:.4f} | {fmt['token_ece']} | "
              f"{fmt['token_acc']} | {r['entity_tokens']:.4f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/teacher_calibration.py STORE")
    main(sys.argv[1])
