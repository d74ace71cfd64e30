#!/usr/bin/env bash
# The README's ablation at laptop scale with a trained tokenizer: recipes/gpt2_fineweb_laptop_bpe.toml (GPT-2,
# 6 x 4 x 128, a 4,096-id BPE trained on the FineWeb sample's train split) as the baseline with 3 seeds, each
# modern intervention alone with 2 seeds, and all of them stacked with 3 seeds, judged in bits per byte. Seeds
# move the initialisation and the data order. Resumable: run it again and finished runs are skipped. Run from the repository's root; extra arguments
# go to zoo sweep (e.g. --dry-run, --runs-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
exec zoo sweep recipes/gpt2_fineweb_laptop_bpe.toml --prefix bpe \
  --ablate rotary:model.position=rotary \
  --ablate rmsnorm:model.norm=rmsnorm,model.norm_gain=false \
  --ablate relu2:model.mlp=relu2 \
  --ablate qknorm:model.qk_norm=true \
  --ablate nobias:model.bias=false \
  --ablate softcap:model.logit_softcap=15.0 \
  --ablate zeroinit:model.zero_init_proj=true \
  --ablate 'muon:optim={name = "muon"},train.lr=0.02,schedule.min_lr=2e-3' \
  --stack --seeds 2 --baseline-seeds 3 --seed-fields both \
  --metric bpb --target-loss baseline --format markdown --plot docs/interventions_laptop_bpe.png --x tokens \
  --smooth 0.9 \
  --columns experiment,n,test_bpb,test_bpb_std,test_bpb_ci95,delta_test,delta_ci95,p_value,significant,best_val_bpb,test_loss,target_reached,target_tokens,target_tokens_ratio "$@"
