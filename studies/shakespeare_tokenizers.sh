#!/usr/bin/env bash
# The TensorBoard comparison across tokenizers on Tiny Shakespeare (README, "Worked example: five models, three
# tokenizers"): the main job's char-LSTM, the scratch GRU, a char GPT, and the same GPT with a 2,048-id BPE trained
# on the play's train split and with GPT-2's tokenizer, each on the same budget of training text (960,000 bytes:
# its tokens are that over its tokenizer's bytes per token on the train split), compared in bits per byte. Run
# from the repository's root; finished runs are skipped when it runs again.
set -euo pipefail
cd "$(dirname "$0")/.."
BYTES=960000
budget() {  # tokens of $BYTES bytes of the train split for a recipe and its --sets
  python - "$@" <<'PY'
import sys
from zoo.data import load_splits
from zoo.recipe import load_recipe
recipe = load_recipe(sys.argv[1], [a for a in sys.argv[2:] if a != "--set"])
tok, splits, _ = load_splits(recipe.data, progress=False)
per_token = len(tok.decode(splits.train.tolist()).encode("utf-8")) / len(splits.train)
print(round(960000 / per_token))
PY
}
C="--set train.max_steps=0 --set eval.sample_tokens=0"
GPT="--set model.size=gpt2-tiny --set model.context_length=128 --set train.seq_len=128 --set train.batch_size=16 \
  --set run.precision=fp32 --set eval.max_tokens=0 --set model.dropout=0.0"
BPE="--set data.tokenizer=bpe --set data.vocab_size=2048"
zoo train recipes/char_rnn_shakespeare.toml --name sh_char_lstm $C --set train.max_tokens=$BYTES --set eval.interval=30
zoo train recipes/gru_scratch_shakespeare.toml --name sh_gru_scratch $C --set train.max_tokens=$BYTES --set eval.interval=30
zoo train recipes/gpt2_shakespeare_char.toml --name sh_gpt_char $C $GPT --set train.max_tokens=$BYTES --set eval.interval=94
T=$(budget recipes/gpt2_shakespeare_char.toml $BPE)
zoo train recipes/gpt2_shakespeare_char.toml --name sh_gpt_bpe2048 $C $GPT $BPE --set train.max_tokens=$T \
  --set eval.interval=$((T / 2048 / 5))
T=$(budget recipes/gpt2_shakespeare_char.toml --set data.tokenizer=gpt2)
zoo train recipes/gpt2_shakespeare_char.toml --name sh_gpt_gpt2 $C $GPT --set data.tokenizer=gpt2 --set train.max_tokens=$T \
  --set eval.interval=$((T / 2048 / 5))
zoo compare runs/sh_char_lstm runs/sh_gru_scratch runs/sh_gpt_char runs/sh_gpt_bpe2048 runs/sh_gpt_gpt2 --metric bpb \
  --format markdown --plot docs/compare_shakespeare_bpb.png --x bytes \
  --columns experiment,model.arch,data.tokenizer,data.vocab_size,params,tokens,steps,best_val_bpb,test_bpb,delta_test,test_loss
