#!/bin/bash
# Keep the finished Study 2 runs (their logs and curves; no snapshots) and their landscape summaries in
# docs/study/study2-runs/, so a later session's commands.sh copies them back and skips them (compare: a run
# is finished when its run.json exists; the landscape loop: when its landscape.json exists).
set -euo pipefail
cd "$(dirname "$0")/../.."
find runs/study2 -name run.json | while read -r record; do
    run=$(dirname "$record")
    keep="docs/study/study2-runs/${run#runs/study2/}"
    mkdir -p "$keep"
    cp "$record" "$run/finetune.log" "$keep/"
    for version in "$run"/lightning_logs/version_*; do
        mkdir -p "$keep/lightning_logs/$(basename "$version")"
        for name in metrics.csv metric-digits.jsonl pairing.json hparams.yaml config.yaml log.txt quality.json; do
            [ -f "$version/$name" ] && cp "$version/$name" "$keep/lightning_logs/$(basename "$version")/"
        done
    done
done
find runs/study2 -path '*/landscape/*/landscape.json' | while read -r probe; do
    keep="docs/study/study2-runs/${probe#runs/study2/}"
    mkdir -p "$(dirname "$keep")"
    cp "$probe" "$keep"
done
