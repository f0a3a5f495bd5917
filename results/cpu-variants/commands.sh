# The loss variants beyond the default comparison, on the CPU preset, after `bash run.sh`
# (which they reuse: world, target, pretrained draft, distillation data). Run from the
# repository root. Their table: results/cpu-variants/results.md; the diagnosis of where each
# draft ended (mean reward at the data tokens, TVD to the target, entropy): diagnose.txt.
set -e
LOSSES="tvdpp_datatoken tvdpp_onpolicy rkl jsd" RESULTS=runs/cpu/results-variants.json bash run.sh
cp runs/cpu/results-variants.json results/cpu-variants/results.json
cp runs/cpu/results-variants.md results/cpu-variants/results.md
R=runs/cpu
PYTHONPATH=. python results/cpu-variants/diagnose.py $R $R/draft-pretrained $R/draft-kld $R/draft-tvd $R/draft-tvdpp \
  $R/draft-lk $R/draft-lk_hybrid $R/draft-tvdpp_datatoken $R/draft-tvdpp_onpolicy $R/draft-rkl $R/draft-jsd \
  | tee results/cpu-variants/diagnose.txt
