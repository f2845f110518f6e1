#!/bin/bash
# The shipped recipe command end to end on a bundled taxonomy, then eval beir on its report half.
set -e
cd /work/main
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
T=$1
OUT=runs/recipe_cli/$T
SETS=runs/graph_knn/$T/sets
date -u +%FT%T; uptime
/usr/bin/time -v .venv/bin/lorentz-rag train --config=configs/taxonomy/hyte_h.yaml --taxonomy_args.path=$T --train_args.output_dir=$OUT 2> $OUT.time.txt
date -u +%FT%T; uptime
for rel in broader narrower; do
  .venv/bin/lorentz-rag eval beir --model $OUT/final --data $SETS/eval/$rel --split report --relation $rel --top-k 100 --output $OUT.$rel.json
  .venv/bin/lorentz-rag eval beir --model $OUT/final --data $SETS/eval/$rel --split tune --relation $rel --top-k 100 --output $OUT.$rel.tune.json
done
.venv/bin/lorentz-rag eval beir --model $OUT/final --data $SETS/eval/synonym --split report --top-k 100 --output $OUT.synonym.json
date -u +%FT%T; uptime
