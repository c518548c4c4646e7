#!/usr/bin/env bash
# The docs/RESULTS.md runs beyond CoNLL-2003: CoNLL-2000 chunking, UD-EWT POS, multilingual (en + es
# teachers -> one student), the store-vs-online timing rows, extra seeds and the 10-epoch control.
# One job at a time, one torch thread (the machine has 2 shared cores). Usage: bash bench/results_more.sh [chunking|pos|multi|timing|seeds|control]...
# Each section logs to logs/results/<section>.log with `time` of every command.
set -uo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p logs/results metrics
STUDENT_EPOCHS=3

run() {  # run LOG CMD...: append the command, its output and its wall time to LOG
    local log=$1; shift
    echo "+ $*" >>"$log"
    { time "$@"; } >>"$log" 2>&1 || echo "FAILED: $*" >>"$log"
}

teacher() {  # teacher LOG ARGS...: train-teacher unless its --out folder holds a model already
    local log=$1; shift
    local out; out=$(sed -n 's/.*--out \([^ ]*\).*/\1/p' <<<"$*")
    if [[ -f $out/model.safetensors ]]; then echo "= kept $out" >>"$log"; return; fi
    run "$log" structkd train-teacher "$@"
}

students() {  # students PARAMS RUNS_DIR LOG METHOD...
    local params=$1 dir=$2 log=$3; shift 3
    for m in "$@"; do
        run "$log" structkd distill --params "$params" --run "$m" --epochs "$STUDENT_EPOCHS" \
            --out "$dir/$m" --no-progress
    done
}

chunking() {
    local p=configs/conll2000.yaml log=logs/results/chunking.log
    teacher $log --params $p --teacher en --epochs 1 \
        --out models/conll2000-teacher-en --metrics metrics/conll2000-teacher-en.json
    run $log structkd evaluate --params $p --model teacher-en=models/conll2000-teacher-en \
        --out metrics/conll2000-teacher-eval.json
    run $log structkd annotate --params $p --teacher en=models/conll2000-teacher-en \
        --out stores/conll2000 --no-progress
    students $p runs/conll2000 $log none posterior multigrained structural
}

pos() {
    local p=configs/ud_pos.yaml log=logs/results/pos.log
    teacher $log --params $p --teacher en --epochs 1 \
        --out models/ud_pos-teacher-en --metrics metrics/ud_pos-teacher-en.json
    run $log structkd evaluate --params $p --model teacher-en=models/ud_pos-teacher-en \
        --out metrics/ud_pos-teacher-eval.json
    run $log structkd annotate --params $p --teacher en=models/ud_pos-teacher-en \
        --out stores/ud_pos --no-progress
    students $p runs/ud_pos $log none posterior multigrained structural
}

multi() {
    local p=configs/multilingual_results.yaml log=logs/results/multi.log
    teacher $log --params $p --teacher es --epochs 1 \
        --out models/conll02es-teacher-es --metrics metrics/conll02es-teacher-es.json
    run $log structkd evaluate --params $p --out metrics/multilingual-teacher-eval.json \
        --model teacher-en=models/conll03-teacher-en --model teacher-es=models/conll02es-teacher-es
    run $log structkd annotate --params $p --out stores/multilingual --no-progress
    students $p runs/multilingual $log none posterior structural
}

timing() {  # one epoch each, side by side: none, posterior from the store, posterior online
    local p=configs/conll03_results.yaml log=logs/results/timing.log d=runs/conll03-timing2
    run $log structkd distill --params $p --run none --epochs 1 --out $d/none --no-progress
    run $log structkd distill --params $p --run posterior --epochs 1 --out $d/posterior --no-progress
    run $log structkd distill --params $p --run posterior --epochs 1 --out $d/posterior-online \
        --online-teacher models/conll03-teacher-en --no-progress
}


seeds() {  # seeds 14 and 15 of the baseline and the best method, chunking and POS
    for setup in conll2000 ud_pos; do
        for m in none multigrained; do
            for s in 14 15; do
                run logs/results/seeds.log structkd distill --params configs/$setup.yaml --run $m \
                    --epochs "$STUDENT_EPOCHS" --seed $s --out runs/$setup/$m-seed$s --no-progress
            done
        done
    done
}

control() {  # CoNLL-2003, labeled only, 10 epochs: about the optimizer steps of the unlabeled rows
    local p=configs/conll03_results.yaml log=logs/results/control.log
    for m in none multigrained posterior; do
        run $log structkd distill --params $p --run $m --epochs 10 --out runs/conll03/$m-e10 --no-progress
    done
}

for section in "${@:-chunking pos multi timing}"; do
    for s in $section; do "$s"; done
done
