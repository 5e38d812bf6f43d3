#!/bin/sh
# The exact commands of the study (docs/study/README.md). Run from the repository root; each is resumable
# (finished runs are skipped), and writes its runs under runs/ (ignored) and its reports into --out.
set -e
# 1. the digits demo: 6 arms x 3 lr multipliers on 2 tuning seeds, then each arm at its best lr on 5 seeds
nice -n 19 rootedgan compare --config docs/study/demo-study.yaml \
    --losses 'logistic,rooted:2,rooted:4,rooted:8,rooted:20,logistic*rooted:2' --lrs 0.25,0.5,1 \
    --tune-seeds 100,101 --seeds 0-4 --kimg 4 --targets 1000,800,600 --primary auc \
    --jobs 2 --threads 1 --quiet --out runs/study/demo
# 2. the authors' scenario in miniature: from scratch on 200 target digits, 3 losses x 3 seeds, config lr
#    (run with 4 kimg, not the 8 of PLAN.md, to fit the session; --kimg 8 resumes nothing: rerun for 8)
nice -n 19 rootedgan compare --config docs/study/scratch200.yaml --losses 'logistic,rooted:2,rooted:20' \
    --seeds 0-2 --kimg 4 --targets 1500,1000,700 --primary auc --jobs 2 --threads 1 --quiet \
    --out runs/study/scratch
# 3. copy the small outputs (reports, summaries, figures; no checkpoints) into docs/study/
python docs/study/collect.py
# 4. (added after the study) lr x2, the next step above the grid, on the tuning seeds: does any arm's choice move?
nice -n 19 rootedgan compare --config docs/study/demo-study.yaml --losses 'logistic,rooted:2,rooted:4,rooted:8,rooted:20' \
    --lrs 2 --seeds 100,101 --kimg 4 --targets 1000,800,600 --primary auc --jobs 2 --threads 1 --quiet \
    --out runs/study/demo-x2   # reports copied by hand into docs/study/demo-x2/

# ---- study 2 (docs/study/PLAN-2.md): from scratch on 200 images and few-shot ADA finetune on 100 images;
#      logistic, rooted:2, rooted:20; each at its lr (x1 or x2) chosen on seeds 100-101; 8 evaluation seeds.
#      Runs finished in an earlier session are kept (their logs and curves, no snapshots) in
#      docs/study/study2-runs/; copy them back first so compare skips them (their run.json records the cwd
#      /work/main and the exact arguments: a run is skipped only when both match). docs/study/keep-runs.sh
#      keeps the finished ones there at the end of a session.
[ -d docs/study/study2-runs ] && cp -rn docs/study/study2-runs/. runs/study2/
nice -n 19 rootedgan compare --config docs/study/scratch200.yaml --losses 'logistic,rooted:2,rooted:20' \
    --lrs 1,2 --tune-seeds 100,101 --seeds 0-7 --kimg 8 --targets 1500,1000,700 --primary auc \
    --jobs 2 --threads 1 --quiet --out runs/study2/scratch
nice -n 19 rootedgan compare --config docs/study/fewshot100.yaml --losses 'logistic,rooted:2,rooted:20' \
    --lrs 1,2 --tune-seeds 100,101 --seeds 0-7 --kimg 6 --targets 1000,700,500 --primary auc \
    --jobs 2 --threads 1 --quiet --out runs/study2/fewshot
# the alpha-beta landscape along every evaluation run (its snapshots every 2 kimg, its recorded loss, D frozen
# at its last snapshot); skipped when done. Runs kept from an earlier session have no snapshots: run this loop
# in the session that finished them (keep-runs.sh keeps the landscape.json files)
for run in runs/study2/*/*/lr*/seed[0-7]; do
    [ -f "$run/run.json" ] || continue  # unfinished: a later session runs it (and then this)
    version=$(ls -d "$run"/lightning_logs/version_* | sort -t_ -k3 -n | tail -n 1)
    out="$(dirname "$(dirname "$(dirname "$run")")")/landscape/$(basename "$(dirname "$(dirname "$run")")")-$(basename "$run")"
    [ -f "$out/landscape.json" ] || nice -n 19 rootedgan landscape --snapshots "$version/network-snapshot-*.safetensors" \
        --batch 32 --out "$out"
done
python docs/study/collect.py --runs runs/study2 --docs docs/study/study2
