#!/usr/bin/env bash
# The docs/RESULTS.md runs beyond CoNLL-2003: CoNLL-2000 chunking, UD-EWT POS, multilingual (en + es
# teachers -> one student), the store-vs-online timing rows, extra seeds and the 10-epoch control.
# One job at a time, one torch thread (the machine has 2 shared cores).
# Usage: bash bench/results_more.sh [chunking|pos|multi|multi2|timing|seeds|control|control_seed]...
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

teacher() {  # teacher LOG OUT ARGS...: train-teacher --out OUT unless OUT holds a model already
    local log=$1 out=$2; shift 2
    if [[ -f $out/model.safetensors ]]; then echo "= kept $out" >>"$log"; return; fi
    run "$log" structkd train-teacher --out "$out" "$@"
}

students() {  # students PARAMS RUNS_DIR LOG METHOD...
    local params=$1 dir=$2 log=$3; shift 3
    for m in "$@"; do
        run "$log" structkd distill --params "$params" --run "$m" --epochs "$STUDENT_EPOCHS" \
            --out "$dir/$m" --no-progress
    done
}

single() {  # single NAME LOG: 1-epoch MiniLM teacher, its scores, the store, 4 students (configs/NAME.yaml)
    local name=$1 log=$2 p=configs/$1.yaml
    teacher $log models/$name-teacher-en --params $p --teacher en --epochs 1 \
        --metrics metrics/$name-teacher-en.json
    run $log structkd evaluate --params $p --model teacher-en=models/$name-teacher-en \
        --out metrics/$name-teacher-eval.json
    run $log structkd annotate --params $p --teacher en=models/$name-teacher-en \
        --out stores/$name --no-progress
    students $p runs/$name $log none posterior multigrained structural
}

chunking() { single conll2000 logs/results/chunking.log; }

pos() { single ud_pos logs/results/pos.log; }

multilingual() {  # multilingual SUFFIX ES_EPOCHS LOG: en teacher reused, es teacher trained, 3 students
    local sfx=$1 epochs=$2 p=configs/multilingual_results.yaml log=logs/results/$3.log
    local es=models/conll02es-teacher-es$1 models=()
    [[ -z $sfx ]] && models=(--model teacher-en=models/conll03-teacher-en)  # scored once, in `multi`
    teacher $log $es --params $p --teacher es --epochs $epochs \
        --metrics metrics/conll02es-teacher-es$sfx.json
    run $log structkd evaluate --params $p --out metrics/multilingual$sfx-teacher-eval.json \
        "${models[@]}" --model teacher-es=$es
    run $log structkd annotate --params $p --teacher en=models/conll03-teacher-en --teacher es=$es \
        --out stores/multilingual$sfx --no-progress
    for m in none posterior structural; do
        run $log structkd distill --params $p --run $m --epochs "$STUDENT_EPOCHS" \
            --store stores/multilingual$sfx --out runs/multilingual$sfx/$m --no-progress
    done
}

multi() { multilingual "" 1 multi; }

multi2() { multilingual -e2 2 multi2; }  # a 2-epoch Spanish teacher: the 1-epoch one is weak

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

control_seed() {  # the control again with seed 14
    local p=configs/conll03_results.yaml log=logs/results/control_seed.log
    for m in none posterior multigrained; do
        run $log structkd distill --params $p --run $m --epochs 10 --seed 14 \
            --out runs/conll03/$m-e10-seed14 --no-progress
    done
}

for section in "${@:-chunking pos multi timing}"; do
    for s in $section; do "$s"; done
done
