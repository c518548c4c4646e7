"""Write a Hugging Face token-classification checkpoint from a structkd transformer teacher folder.

The fit-crf measurement (issue 18 §1) needs a "teacher you already have": an
``AutoModelForTokenClassification`` folder with ``config.id2label``. None is downloadable here, so
this script builds one from ../shared/models/conll03-minilm-crf: its BERT encoder becomes
``BertForTokenClassification.bert`` and its emission head (``head.weight`` [T, H], ``head.bias``
[T]) the ``classifier``; the CRF factors (and the unused
pooler) are dropped. The checkpoint is then a MaxEnt tagger whose
emissions were trained under a CRF, which is what ``structkd fit-crf`` gives transitions back to.

    python bench/make_hf_teacher.py ../shared/models/conll03-minilm-crf models/hf-conll03-minilm
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification


def convert(folder: Path, out: Path) -> None:
    meta = json.loads((folder / "config.json").read_text())
    if meta["model"]["encoder"]["kind"] != "transformer":
        sys.exit(f"{folder}: a transformer teacher is needed, not {meta['model']['encoder']['kind']}")
    labels = meta["labels"]
    config = BertConfig.from_pretrained(folder / "encoder", num_labels=len(labels),
                                        id2label=dict(enumerate(labels)),
                                        label2id={name: i for i, name in enumerate(labels)})
    config.architectures = ["BertForTokenClassification"]
    weights = load_file(folder / "model.safetensors")
    state = {f"bert.{key[len('encoder.model.'):]}": value for key, value in weights.items()
             if key.startswith("encoder.model.") and ".pooler." not in key}
    state["classifier.weight"], state["classifier.bias"] = weights["head.weight"], weights["head.bias"]
    model = BertForTokenClassification(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [name for name in missing if "position_ids" not in name]:
        sys.exit(f"{folder}: weights do not fit BertForTokenClassification (missing {missing}, "
                 f"unexpected {unexpected})")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder / "encoder").save_pretrained(out)
    print(f"wrote {out}: {len(labels)} labels {labels}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/make_hf_teacher.py TEACHER_FOLDER OUT_FOLDER")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
