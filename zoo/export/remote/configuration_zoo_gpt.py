"""Configuration of zoo's GPT (GPT-2 with modern options) for transformers (remote code written by
`zoo export-hf`)."""

from transformers import PretrainedConfig


class ZooGPTConfig(PretrainedConfig):
    """A GPT-2-style decoder with zoo's options: learned or rotary positions, LayerNorm or RMSNorm (with or
    without gains), a GELU, ReLU^2 or SwiGLU MLP, QK-norm, biases on or off, and a logit soft-cap."""

    model_type = "zoo_gpt"
    attribute_map = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "hidden_size": "n_embd",
                     "max_position_embeddings": "n_positions"}

    def __init__(self, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, n_positions=1024, dropout=0.0,
                 qkv_bias=False, bias=True, position="learned", rope_base=10000.0, norm="layernorm", norm_gain=True,
                 mlp="gelu", mlp_hidden=3072, qk_norm=False, logit_softcap=0.0, tie_word_embeddings=False,
                 use_cache=False, **kwargs):
        self.vocab_size = vocab_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.n_positions = n_positions
        self.dropout = dropout
        self.qkv_bias = qkv_bias
        self.bias = bias
        self.position = position
        self.rope_base = rope_base
        self.norm = norm
        self.norm_gain = norm_gain
        self.mlp = mlp
        self.mlp_hidden = mlp_hidden
        self.qk_norm = qk_norm
        self.logit_softcap = logit_softcap
        self.use_cache = use_cache  # generation re-reads the whole prefix: the model keeps no cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
