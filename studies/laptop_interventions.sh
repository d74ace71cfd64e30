#!/usr/bin/env bash
# The README's ablation at laptop scale: recipes/gpt2_fineweb_laptop.toml (GPT-2, 6 x 4 x 128, on the FineWeb
# sample) as the baseline with 3 seeds, each modern intervention alone with 2 seeds, and all of them stacked
# with 3 seeds (the stack is recipes/gpt2_fineweb_laptop_modern.toml). Seeds move the initialisation and the data
# order. Resumable: run it again and finished runs are skipped. Run from the repository's root; extra arguments
# go to zoo sweep (e.g. --dry-run, --runs-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
exec zoo sweep recipes/gpt2_fineweb_laptop.toml --prefix laptop \
  --ablate rotary:model.position=rotary \
  --ablate rmsnorm:model.norm=rmsnorm,model.norm_gain=false \
  --ablate relu2:model.mlp=relu2 \
  --ablate qknorm:model.qk_norm=true \
  --ablate nobias:model.bias=false \
  --ablate softcap:model.logit_softcap=15.0 \
  --ablate zeroinit:model.zero_init_proj=true \
  --ablate 'muon:optim={name = "muon"},train.lr=0.02,schedule.min_lr=2e-3' \
  --stack --seeds 2 --baseline-seeds 3 --seed-fields both \
  --target-loss baseline --format markdown --plot docs/interventions_laptop.png --x tokens --smooth 0.9 \
  --columns experiment,n,test_loss,test_loss_std,test_loss_ci95,delta_test,delta_ci95,p_value,significant,best_val_loss,target_reached,target_tokens,target_tokens_ratio "$@"
