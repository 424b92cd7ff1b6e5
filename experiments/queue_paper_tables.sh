#!/usr/bin/env bash
# Queue the paper's comparisons as DVC experiments; start them with `dvc queue start -j N` (N workers), watch
# with `dvc queue status`, then print the tables with `regl report`.
#   Table 1: every method x beta in {0.01, 0.5} x local epochs in {1, 5}
#   Table 2: every method x number of clients in {10, 20, 50} at beta = 0.01
# Each run is `dvc repro` with -S overrides, so stages whose inputs did not change come from the run cache.
# ReGL is fedavg with train.synthetic=true (and personalize.synthetic=true); the baselines run without.
set -euo pipefail
baselines="fedavg fedprox scaffold fednova fedadam moon"
clients() { python3 -c "print(list(range($1)))"; }

queue() { dvc exp run --queue "$@"; }

for beta in 0.01 0.5; do
  for epochs in 1 5; do
    for alg in $baselines; do
      queue -n "t1-$alg-b$beta-e$epochs" -S beta=$beta -S train.local_epochs=$epochs \
        -S train.algorithm=$alg -S train.synthetic=false -S personalize.synthetic=false
    done
    queue -n "t1-regl-b$beta-e$epochs" -S beta=$beta -S train.local_epochs=$epochs \
      -S train.algorithm=fedavg -S train.synthetic=true -S personalize.synthetic=true
  done
done

for m in 10 20 50; do
  for alg in $baselines; do
    queue -n "t2-$alg-m$m" -S beta=0.01 -S "clients=$(clients $m)" -S train.algorithm=$alg \
      -S train.synthetic=false -S personalize.synthetic=false
  done
  queue -n "t2-regl-m$m" -S beta=0.01 -S "clients=$(clients $m)" -S train.algorithm=fedavg \
    -S train.synthetic=true -S personalize.synthetic=true
done
echo "queued; now: dvc queue start -j 2 && dvc queue status; when done: regl report"
