"""zoo's GPT for transformers (remote code written by `zoo export-hf`): GPT-2's decoder with zoo's options
(rotary positions, RMSNorm, ReLU^2 or SwiGLU, QK-norm, no biases, a logit soft-cap), as a causal LM that works
with `generate`, `pipeline("text-generation")` and `Trainer`, and as a sequence classifier. Only torch and
transformers are needed. The parameter names are zoo's (wte, wpe, h.N.ln_1, h.N.attn.c_attn, h.N.attn.c_proj,
h.N.ln_2, h.N.mlp.c_fc, h.N.mlp.c_gate, h.N.mlp.c_proj, ln_f, lm_head), so the weights are the checkpoint's.

Generation keeps a key/value cache (transformers' DynamicCache: each layer's keys and values, the rotary ones
turned by their own positions), as `zoo sample` does.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutputWithPast

from .configuration_zoo_gpt import ZooGPTConfig

# the output's cache field: `cache` in transformers 5, `past_key_values` before
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def make_norm(config, width):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(width, eps=1e-6, elementwise_affine=config.norm_gain)
    return nn.LayerNorm(width, eps=1e-5, elementwise_affine=config.norm_gain, bias=config.bias and config.norm_gain)


def rotary_tables(head_dim, length, base, device):
    """cos and sin of position x base^(-2i/head_dim), each frequency twice (pairs i, i + head_dim/2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return (x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.qk_norm, self.dropout = config.n_head, config.qk_norm, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x, rope, cache=None, layer=0):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.shape[-1],)), F.rms_norm(k, (k.shape[-1],))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        mask, causal = None, True
        if cache is not None:
            k, v = cache.update(k, v, layer)
            past = k.shape[2] - t
            if past and t == 1:
                causal = False  # one new query attends to every cached position
            elif past:  # several new queries after a cached prefix: each sees the prefix and what precedes it
                mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
                causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=causal)
        return F.dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.kind, self.dropout = config.mlp, config.dropout
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        if config.mlp == "swiglu":
            self.c_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)

    def forward(self, x):
        if self.kind == "swiglu":
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        elif self.kind == "relu2":
            h = F.relu(self.c_fc(x)).square()
        else:
            h = F.gelu(self.c_fc(x), approximate="tanh")
        return F.dropout(self.c_proj(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1, self.attn = make_norm(config, config.n_embd), Attention(config)
        self.ln_2, self.mlp = make_norm(config, config.n_embd), MLP(config)

    def forward(self, x, rope, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


class ZooGPTPreTrainedModel(PreTrainedModel):
    config_class = ZooGPTConfig
    base_model_prefix = "zoo_gpt"
    main_input_name = "input_ids"

    def _init_weights(self, module):
        """Weights come from the exported checkpoint; fresh models keep torch's default initialisation."""

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return True

    def _build_backbone(self, config):
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.position == "learned":
            self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config, config.n_embd)

    def _hidden(self, input_ids, cache=None):
        """The final norm's output at every new position, [B, T, n_embd] (after the cache's positions)."""
        t = input_ids.shape[1]
        start = cache.get_seq_length() if cache is not None else 0
        # ids past the vocabulary (a padding token the tokenizer adds) only ever follow the real tokens, which
        # causal attention never lets them influence
        x = self.wte(input_ids.masked_fill(input_ids >= self.config.vocab_size, 0))
        rope = None
        if self.config.position == "learned":
            x = x + self.wpe(torch.arange(start, start + t, device=input_ids.device))
        else:
            cos, sin = rotary_tables(self.config.n_embd // self.config.n_head, start + t, self.config.rope_base,
                                     x.device)
            rope = cos[start:], sin[start:]
        x = F.dropout(x, self.config.dropout, self.training)
        for i, block in enumerate(self.h):
            x = block(x, rope, cache, i)
        return self.ln_f(x)

    def get_input_embeddings(self):
        return self.wte


class ZooGPTForCausalLM(ZooGPTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "wte.weight"}

    def __init__(self, config):
        super().__init__(config)
        self._build_backbone(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, labels=None, past_key_values=None, use_cache=None,
                logits_to_keep=0, **kwargs):
        if past_key_values is None:  # transformers 5 names it `cache`
            past_key_values = kwargs.get("cache")
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        hidden = self._hidden(input_ids, past_key_values if use_cache or past_key_values is not None else None)
        if logits_to_keep and labels is None:  # generation asks for the last position's logits only
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        if self.config.logit_softcap:
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        loss = None
        if labels is not None:  # labels are the inputs; position t predicts token t + 1
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: past_key_values})


class ZooGPTForSequenceClassification(ZooGPTPreTrainedModel):
    """A linear head (no bias) on the hidden state at each sequence's last real token (right padding)."""

    def __init__(self, config):
        super().__init__(config)
        self._build_backbone(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        hidden = self._hidden(input_ids)
        if attention_mask is not None:
            last = attention_mask.long().sum(dim=1) - 1
        elif self.config.pad_token_id is not None:
            last = (input_ids != self.config.pad_token_id).long().sum(dim=1) - 1
        else:
            last = torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        logits = self.score(hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last])
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits)
