"""GPT-2 (Radford et al. 2019; Raschka's and nanoGPT's layout) as a zoo backbone, and the modern transformer's
interventions as options of it.

By default: learned token and position embeddings, pre-LayerNorm blocks (eps 1e-5) of causal multi-head
attention (`F.scaled_dot_product_attention`) and a 4x MLP with tanh-approximated GELU, a final LayerNorm and an
LM head without bias; GPT-2's init (normal 0.02, residual projections scaled by 1/sqrt(2 x layers)). Parameter
names follow GPT-2's (wte, wpe, h.N.ln_1, h.N.attn.c_attn, h.N.attn.c_proj, h.N.ln_2, h.N.mlp.c_fc,
h.N.mlp.c_proj, ln_f, lm_head), so OpenAI's weights load with no renaming (Hugging Face's Conv1D weights only
need a transpose). Generation can pass a KV cache as the state.

The options (each independent of the others; see GPT2Config) swap one small component for another: the
position (`Rotary` on q and k instead of `wpe`), the norm (`make_norm`: LayerNorm or RMSNorm, with or
without gains), the MLP (GELU, ReLU^2 or SwiGLU), QK-norm in the attention, biases, a logit soft-cap in
`logits`, and zero-initialised residual projections. With every option at its default the model, its random
initialisation and its state_dict are GPT-2's exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.config import Section, check, doc
from zoo.errors import ZooError
from zoo.models.base import Backbone, count_parameters
from zoo.models.head_loss import fused_applies, head_loss
from zoo.specs import ModelSpec

# n_layer, n_head, n_embd of the named sizes; the tiny ones are for CPU experiments and tests
SIZES = {
    "gpt2-small": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
    "gpt2-mini": (6, 6, 384),
    "gpt2-tiny": (4, 4, 256),
    "gpt2-micro": (2, 2, 64),
}
RMS_EPS = 1e-6  # RMSNorm's epsilon (Llama's); LayerNorm keeps GPT-2's 1e-5


@dataclass(frozen=True)
class GPT2Config(Section):
    arch: str = doc("gpt2", "gpt2")
    size: str = doc("a named size setting n_layer/n_head/n_embd: gpt2-small|medium|large|xl|mini|tiny|micro, "
                    "or \"\" to set them yourself", "gpt2-small")
    n_layer: int = doc("transformer blocks (0 = from size)", 0)
    n_head: int = doc("attention heads (0 = from size)", 0)
    n_embd: int = doc("model width (0 = from size)", 0)
    context_length: int = doc("maximum sequence length (position embeddings, rotary tables)", 1024)
    vocab_size: int = doc("token ids the model knows (0 = the tokenizer's)", 0)
    pad_vocab: int = doc("round the embedding and LM-head rows up to a multiple of this, for faster GPU matmuls "
                         "(50257 -> 50304); the padded rows never reach a softmax and checkpoints hold only the "
                         "real rows. 0 = auto: 64 on CUDA, none elsewhere; 1 = no padding", 0)
    dropout: float = doc("dropout on embeddings, attention weights and residual branches", 0.0)
    qkv_bias: bool = doc("bias in the query/key/value projection (OpenAI's GPT-2 has it)", False)
    tie_weights: bool = doc("share the token embedding and the LM head (124M instead of 163M for small)", False)
    position: Literal["learned", "rotary"] = doc(
        "learned: GPT-2's position embeddings (wpe); rotary: RoPE, q and k of every head rotated by their "
        "position (Su et al. 2021; modded-nanogpt, nanochat, Llama), no wpe", "learned")
    rope_base: float = doc("rotary: the base of the rotation frequencies (10,000 as in RoPE and Llama 2)", 10000.0)
    norm: Literal["layernorm", "rmsnorm"] = doc(
        "layernorm: GPT-2's LayerNorm (eps 1e-5); rmsnorm: RMSNorm (eps 1e-6), as nanochat and Llama", "layernorm")
    norm_gain: bool = doc("learnable gains in every norm; false = parameter-free norms (nanochat)", True)
    mlp: Literal["gelu", "relu2", "swiglu"] = doc(
        "gelu: GPT-2's 4x MLP with tanh GELU; relu2: the same with ReLU squared (modded-nanogpt, nanochat); "
        "swiglu: Llama's gated MLP, silu(x W_gate) * (x W_up) W_down, with mlp_hidden chosen so its three "
        "matrices hold as many weights as the 4x MLP's two", "gelu")
    mlp_hidden: int = doc("MLP hidden width (0 = 4 x n_embd; swiglu: 8/3 x n_embd, rounded up to a multiple of "
                          "8)", 0)
    qk_norm: bool = doc("normalise each head's queries and keys (parameter-free RMSNorm) before attention, as "
                        "modded-nanogpt and nanochat", False)
    bias: bool = doc("biases in the linear layers other than q/k/v (attention output, MLP) and in LayerNorms "
                     "(GPT-2 has them; nanochat and Llama have none). qkv_bias keeps its own switch", True)
    logit_softcap: float = doc("cap the logits smoothly, cap x tanh(logits / cap), before the loss and sampling "
                               "(0 = off; modded-nanogpt used 30, then 15)", 0.0)
    zero_init_proj: bool = doc("initialise the attention and MLP output projections to zero, so each block starts "
                               "as the identity (modded-nanogpt, nanochat); false = GPT-2's scaled init", False)
    init_from: str = doc("start from GPT-2 weights in the Hugging Face layout: hf:gpt2 (a Hub id, online) or "
                         "hf:PATH (a folder with config.json and model.safetensors); the architecture is read "
                         "from its config.json", "")

    def validate(self) -> None:
        check(self.size == "" or self.size in SIZES, "model.size",
              f"is {self.size!r}; use one of {', '.join(SIZES)} or \"\"")
        for key in ("n_layer", "n_head", "n_embd", "vocab_size", "pad_vocab", "mlp_hidden"):
            check(getattr(self, key) >= 0, f"model.{key}", f"is {getattr(self, key)}; it must be >= 0")
        n_layer, n_head, n_embd = self.dims()
        if not self.init_from:  # with init_from the weights' config.json fixes the architecture
            check(n_layer > 0 and n_head > 0 and n_embd > 0, "model.size",
                  "is \"\"; then set model.n_layer, model.n_head and model.n_embd")
            check(n_embd % n_head == 0, "model.n_embd", f"is {n_embd}; it must be a multiple of n_head ({n_head})")
            if self.position == "rotary":
                check((n_embd // n_head) % 2 == 0, "model.position",
                      f"is \"rotary\" but the head size n_embd / n_head = {n_embd // n_head} is odd; rotary turns "
                      "pairs of dimensions, so make it even")
        check(self.context_length > 0, "model.context_length", f"is {self.context_length}; it must be > 0")
        check(0 <= self.dropout < 1, "model.dropout", f"is {self.dropout}; it must be in [0, 1)")
        check(self.rope_base > 1 and math.isfinite(self.rope_base), "model.rope_base",
              f"is {self.rope_base}; it must be > 1")
        check(self.position == "rotary" or self.rope_base == 10000.0, "model.rope_base",
              f"is {self.rope_base:g} but model.position is {self.position!r}, which has no rotation to set; use "
              "model.position = \"rotary\", or leave rope_base at its default 10000")
        check(self.logit_softcap >= 0 and math.isfinite(self.logit_softcap), "model.logit_softcap",
              f"is {self.logit_softcap}; use 0 (off) or a positive cap such as 15 or 30")
        check(self.init_from == "" or self.init_from.startswith("hf:"), "model.init_from",
              f"is {self.init_from!r}; use hf:gpt2 (a Hub id) or hf:PATH (a local folder)")
        if self.init_from:
            changed = [f"model.{k}" for k, v in MODERN_DEFAULTS.items() if getattr(self, k) != v]
            check(not changed, "model.init_from",
                  f"loads OpenAI-layout GPT-2 weights, which have GPT-2's own architecture; drop {', '.join(changed)}")

    def validate_recipe(self, recipe) -> None:
        check(not recipe.task.uses_seq_len or recipe.train.seq_len <= self.context_length, "train.seq_len",
              f"is {recipe.train.seq_len}, longer than model.context_length ({self.context_length})")

    def resolved(self) -> GPT2Config:
        """With `init_from`, the architecture of those weights (read from their config.json)."""
        return hf_config(hf_folder(self.init_from), self) if self.init_from else self

    def dims(self) -> tuple[int, int, int]:
        """(n_layer, n_head, n_embd): explicit values override the named size."""
        base = SIZES.get(self.size, (0, 0, 0))
        return (self.n_layer or base[0], self.n_head or base[1], self.n_embd or base[2])

    def hidden(self) -> int:
        """The MLP's hidden width."""
        if self.mlp_hidden:
            return self.mlp_hidden
        width = self.dims()[2]
        return -(-8 * width // 3 // 8) * 8 if self.mlp == "swiglu" else 4 * width

    def is_gpt2(self) -> bool:
        """Whether the architecture is OpenAI's GPT-2 (biases and norm gains may be absent: zeros and ones)."""
        return self.position == "learned" and self.norm == "layernorm" and self.mlp == "gelu" \
            and not self.qk_norm and not self.logit_softcap and not self.mlp_hidden

    def is_llama(self) -> bool:
        """Whether the architecture is Llama's: rotary, RMSNorm, SwiGLU, no biases, no QK-norm, no soft-cap."""
        return self.position == "rotary" and self.norm == "rmsnorm" and self.mlp == "swiglu" \
            and not self.qk_norm and not self.logit_softcap and not self.bias and not self.qkv_bias


# the GPT-2 architecture: these options at these values (init_from weights need them)
MODERN_DEFAULTS = {"position": "learned", "norm": "layernorm", "norm_gain": True, "mlp": "gelu", "mlp_hidden": 0,
                   "qk_norm": False, "bias": True, "logit_softcap": 0.0}


class KVCache:
    """Keys and values of every layer for incremental decoding: [B, heads, length, head_dim] each."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]


def make_norm(config: GPT2Config, width: int) -> nn.Module:
    """The config's norm over the last `width` features: LayerNorm (GPT-2's) or RMSNorm, with or without
    learnable gains (and, for LayerNorm, biases)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(width, eps=RMS_EPS, elementwise_affine=config.norm_gain)
    return nn.LayerNorm(width, eps=1e-5, elementwise_affine=config.norm_gain, bias=config.bias and config.norm_gain)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE): the cosines and sines of position x frequency for every position of
    the context, as non-persistent buffers (recomputed, never saved). Dimension i of a head is paired with
    dimension i + head_dim/2 and the pair turned by position x base^(-2i/head_dim), the convention of
    transformers' Llama (`rotate_half`), so a Llama export needs no permutation of the weights."""

    def __init__(self, head_dim: int, context: int, base: float):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(context, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # [context, head_dim]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of positions start .. start + length - 1."""
        return self.cos[start:start + length], self.sin[start:start + length]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, head_dim] turned by the angles of its positions: x cos + rotate_half(x) sin."""
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + turned * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q, k, v = rearrange(self.c_attn(x), "b t (three h d) -> three b h t d", three=3, h=self.n_head)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.shape[-1],)), F.rms_norm(k, (k.shape[-1],))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        causal = True
        if cache is not None:
            if cache.keys[layer] is not None:
                k = torch.cat([cache.keys[layer], k], dim=2)
                v = torch.cat([cache.values[layer], v], dim=2)
            cache.keys[layer], cache.values[layer] = k, v
            if q.shape[2] == 1:
                causal = False  # one new query attends to every cached position
            elif k.shape[2] != q.shape[2]:
                raise ValueError("a KV cache takes either the whole prompt at once or one token at a time")
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=causal)
        return self.resid_drop(self.c_proj(rearrange(y, "b h t d -> b t (h d)")))


class MLP(nn.Module):
    """GPT-2's MLP, c_proj(act(c_fc(x))), with tanh GELU or ReLU squared."""

    def __init__(self, config: GPT2Config, n_embd: int):
        super().__init__()
        self.relu2 = config.mlp == "relu2"
        self.c_fc = nn.Linear(n_embd, config.hidden(), bias=config.bias)
        self.c_proj = nn.Linear(config.hidden(), n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh")
        return self.drop(self.c_proj(h))


class SwiGLU(nn.Module):
    """Llama's gated MLP: c_proj(silu(c_gate(x)) * c_fc(x)) (gate_proj, up_proj, down_proj in Llama)."""

    def __init__(self, config: GPT2Config, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, config.hidden(), bias=config.bias)
        self.c_gate = nn.Linear(n_embd, config.hidden(), bias=config.bias)
        self.c_proj = nn.Linear(config.hidden(), n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1 = make_norm(config, n_embd)
        self.attn = CausalSelfAttention(config, n_embd, n_head)
        self.ln_2 = make_norm(config, n_embd)
        self.mlp = SwiGLU(config, n_embd) if config.mlp == "swiglu" else MLP(config, n_embd)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, rope)
        return x + self.mlp(self.ln_2(x))


class GPT2(Backbone):
    """GPT-2 backbone: forward(idx, cache=None) -> (hidden [B, T, C], cache); `logits(hidden)` applies the LM
    head (and the soft-cap). With `pad_rows` > vocab_size the embedding and head have that many rows (zeros
    past the vocabulary, which no id looks up and `logits` cuts off); `state_dict` shows and takes only the
    real rows."""

    stateful = False

    def __init__(self, config: GPT2Config, vocab_size: int, pad_rows: int = 0):
        super().__init__()
        self.config = config
        self.n_layer, self.n_head, self.d_model = config.dims()
        self.vocab_size = config.vocab_size or vocab_size
        self.padded_vocab = max(pad_rows, self.vocab_size)
        self.max_seq_len = config.context_length
        self.softcap = config.logit_softcap
        self.wte = nn.Embedding(self.vocab_size, self.d_model)
        if config.position == "learned":
            self.wpe = nn.Embedding(config.context_length, self.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, self.d_model, self.n_head) for _ in range(self.n_layer))
        self.ln_f = make_norm(config, self.d_model)
        self.lm_head = nn.Linear(self.d_model, self.vocab_size, bias=False)
        self.rotary = (Rotary(self.d_model // self.n_head, config.context_length, config.rope_base)
                       if config.position == "rotary" else None)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of the residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.n_layer))
                if config.zero_init_proj:
                    nn.init.zeros_(p)  # after the draw, so the other weights are those of the scaled init
        # padding comes after the initialisation, so a padded model draws the same random numbers as an
        # unpadded one; the zero rows are never looked up and get no gradient, so they stay zero
        extra = self.padded_vocab - self.vocab_size
        if extra:
            for module in (self.wte, self.lm_head):
                w = module.weight.detach()
                module.weight = nn.Parameter(torch.cat([w, w.new_zeros(extra, w.shape[1])]))
            self.wte.num_embeddings = self.lm_head.out_features = self.padded_vocab
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.register_state_dict_post_hook(_real_rows)
        self.register_load_state_dict_pre_hook(_padded_rows)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits over the vocabulary (the padded columns cut off), soft-capped if the config says."""
        logits = self.lm_head(hidden)
        if self.padded_vocab != self.vocab_size:
            logits = logits[..., : self.vocab_size]
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def next_token_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The head and the cross-entropy (-100 = ignored) as one chunked operation where the step is eager
        fp32 (zoo.models.head_loss: the [N, V] logits are never held whole); the plain form otherwise."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        if not fused_applies(flat):
            return super().next_token_loss(hidden, targets)
        weight = self.lm_head.weight
        if self.padded_vocab != self.vocab_size:
            weight = weight[: self.vocab_size]
        return head_loss(flat, weight, targets.reshape(-1), self.softcap)

    def layer_groups(self) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
        """Parameters from input to output (embeddings, then each block) and the final norm, for freezing."""
        embeddings = [self.wte.weight] + ([self.wpe.weight] if self.rotary is None else [])
        groups = [embeddings] + [list(block.parameters()) for block in self.h]
        return groups, list(self.ln_f.parameters())

    def load_pretrained(self) -> str:
        """Load the `init_from` weights, if the config names any (a fresh run's starting point)."""
        if not self.config.init_from:
            return ""
        load_hf_weights(self, hf_folder(self.config.init_from))
        return self.config.init_from

    def init_state(self, batch_size: int, device: torch.device | str) -> KVCache:
        return KVCache(self.n_layer)

    def forward(self, idx: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache | None]:
        start = state.length if state is not None else 0
        length = idx.shape[1]
        if start + length > self.max_seq_len:
            raise ValueError(f"sequence of {start + length} tokens exceeds the context length {self.max_seq_len}")
        rope = None
        if self.rotary is None:
            pos = torch.arange(start, start + length, device=idx.device)
            x = self.drop(self.wte(idx) + self.wpe(pos))
        else:  # positions enter through q and k; the cache's keys were turned by their own positions
            x = self.drop(self.wte(idx))
            rope = self.rotary(start, length)
        for i, block in enumerate(self.h):
            x = block(x, state, i, rope)
        return self.ln_f(x), state

    def flops_per_token(self) -> float:
        """6N for the matmuls plus attention's 12 * layers * context * width (nanoGPT's estimate)."""
        n = count_parameters(self) - (self.wpe.weight.numel() if self.rotary is None else 0)
        if not self.config.tie_weights:
            n -= self.vocab_size * self.d_model  # a lookup, not a matmul
        return 6.0 * n + 12.0 * self.n_layer * self.max_seq_len * self.d_model


_VOCAB_ROWS = ("wte.weight", "lm_head.weight")


def _real_rows(module: GPT2, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict hook: the embedding and head without their padded rows."""
    if module.padded_vocab != module.vocab_size:
        for name in _VOCAB_ROWS:
            if prefix + name in state_dict:
                state_dict[prefix + name] = state_dict[prefix + name][: module.vocab_size]


def _padded_rows(module: GPT2, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict hook: real rows in, zero rows appended up to the padded size."""
    extra = module.padded_vocab - module.vocab_size
    for name in _VOCAB_ROWS:
        t = state_dict.get(prefix + name)
        if extra and t is not None and t.shape[0] == module.vocab_size:
            state_dict[prefix + name] = torch.cat([t, t.new_zeros(extra, *t.shape[1:])])


def padded_size(vocab_size: int, multiple: int) -> int:
    """`vocab_size` rounded up to a multiple of `multiple`."""
    return -(-vocab_size // multiple) * multiple


def build(config: GPT2Config, vocab_size: int, device: torch.device | None = None) -> GPT2:
    """A GPT-2 for the tokenizer's `vocab_size`; with `pad_vocab = 0` (auto) its embedding rows are padded to a
    multiple of 64 when it will run on CUDA."""
    multiple = config.pad_vocab or (64 if device is not None and device.type == "cuda" else 1)
    return GPT2(config, vocab_size, pad_rows=padded_size(config.vocab_size or vocab_size, multiple))


# ------------------------------------------------------------------------------ Hugging Face weights
# Hugging Face's GPT-2 stores these as Conv1D weights [in, out]; ours are nn.Linear [out, in].
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def hf_folder(spec: str) -> Path:
    """A local folder for `hf:PATH` or `hf:HUB_ID` (downloaded through huggingface_hub when online)."""
    name = spec.removeprefix("hf:")
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.startswith((".", "/", "~")):
        raise ZooError(f"{spec}: folder {path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["config.json", "*.safetensors"]))
    except Exception as exc:  # offline, unknown repo, no huggingface_hub ...
        raise ZooError(f"cannot fetch {name!r} from the Hugging Face Hub ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:160]}); it needs a network connection, or point "
                       f"hf:PATH at a local folder with config.json and model.safetensors") from None


def hf_config(folder: Path, base: GPT2Config) -> GPT2Config:
    """The zoo config of a Hugging Face GPT-2 folder; dropout and weight tying come from `base`."""
    path = folder / "config.json"
    if not path.is_file():
        raise ZooError(f"{folder} has no config.json; it is not a Hugging Face GPT-2 folder")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("model_type") not in (None, "gpt2"):
        raise ZooError(f"{folder} holds a {cfg.get('model_type')!r} model, not GPT-2")
    if cfg.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ZooError(f"{folder} uses activation {cfg['activation_function']!r}; zoo's GPT-2 uses tanh GELU")
    return dataclasses.replace(base, size="", n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                               context_length=cfg.get("n_positions", 1024), vocab_size=cfg["vocab_size"],
                               qkv_bias=True)


def hub_section(spec: str) -> dict:
    """The [model] table of OpenAI-layout GPT-2 weights named `hf:...` (the architecture comes from their
    config.json when the run starts; OpenAI's GPT-2 has a qkv bias and a tied head)."""
    return {"arch": "gpt2", "size": "", "init_from": spec, "qkv_bias": True, "tie_weights": True}


def hf_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a Hugging Face GPT-2 folder under zoo's names (prefix dropped, Conv1D transposed)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ZooError(f"{folder} has no .safetensors weights (zoo never loads pickled .bin files)")
    out = {}
    for file in files:
        for name, tensor in load_file(str(file)).items():
            name = name.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # causal-mask buffers of older checkpoints
            out[name] = tensor.t().contiguous() if name.endswith(CONV1D) else tensor
    return out


def load_hf_weights(model: GPT2, folder: Path) -> None:
    """Copy a Hugging Face GPT-2 folder's weights into `model`; a mismatch names the tensors."""
    from zoo.checkpoint import load_model_tensors

    tensors = hf_state_dict(folder)
    if "lm_head.weight" not in tensors:  # tied in the source: the head is the token embedding
        tensors["lm_head.weight"] = tensors["wte.weight"]
    aliases = {}
    if model.config.tie_weights:
        aliases = {"lm_head.weight": "wte.weight"}
        tensors.pop("lm_head.weight")
    load_model_tensors(model, tensors, aliases, str(folder))


def from_hf(spec: str, base: GPT2Config | None = None) -> GPT2:
    """A GPT-2 with weights from `hf:gpt2` or `hf:PATH`, tied or untied as its config.json says."""
    folder = hf_folder(spec)
    if base is None:  # tied or not as the folder says (OpenAI's are tied; zoo's exports may be untied)
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8")) if (folder / "config.json").is_file() \
            else {}
        base = GPT2Config(tie_weights=bool(cfg.get("tie_word_embeddings", True)))
    model = GPT2(hf_config(folder, base), 0)
    load_hf_weights(model, folder)
    return model


def parameters(config: GPT2Config, vocab_size: int) -> int:
    """About the parameters a GPT-2 of this config has (the memory check; biases and gains counted generously)."""
    layers, _, width = config.dims()
    vocab = config.vocab_size or vocab_size
    mlp = (3 if config.mlp == "swiglu" else 2) * width * config.hidden()
    per_layer = 4 * width * width + mlp + 16 * width
    embeddings = vocab * width * (1 if config.tie_weights else 2)
    positions = config.context_length * width if config.position == "learned" else 0
    return layers * per_layer + embeddings + positions


SPEC = ModelSpec(name="gpt2", config=GPT2Config, build=build, exporter="zoo.export.gpt2", parameters=parameters)
