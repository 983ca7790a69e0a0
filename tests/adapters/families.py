"""One tiny random model per architecture family, built in memory from its transformers config.

Shared by ``test_families.py`` and the generated family table of docs/adapters.md. Every model
has 2 blocks, hidden size 32 and a 128-token vocabulary, so that compressing all of them takes
a few seconds on one core.
"""

from __future__ import annotations

import torch

_COMMON = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
_GQA = dict(_COMMON, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=128)

#: family -> (display name, config class, model class, config options); the display name and
#: the order are those of the docs table.
FAMILIES = {
    "llama": ("Llama", "LlamaConfig", "LlamaForCausalLM", _GQA),
    "mistral": ("Mistral", "MistralConfig", "MistralForCausalLM", _GQA),
    "qwen2": ("Qwen2", "Qwen2Config", "Qwen2ForCausalLM", _GQA),
    "qwen3": ("Qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(_GQA, head_dim=8)),
    "gemma": ("Gemma", "GemmaConfig", "GemmaForCausalLM", dict(_GQA, head_dim=8)),
    "gemma2": ("Gemma 2", "Gemma2Config", "Gemma2ForCausalLM", dict(_GQA, head_dim=8)),
    "gemma3": ("Gemma 3", "Gemma3TextConfig", "Gemma3ForCausalLM", dict(_GQA, head_dim=8)),
    "phi3": ("Phi-3", "Phi3Config", "Phi3ForCausalLM", dict(_GQA, pad_token_id=0)),
    "gpt2": ("GPT-2", "GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    "opt": ("OPT", "OPTConfig", "OPTForCausalLM",
            dict(_COMMON, ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64)),
    "gpt_neox": ("GPT-NeoX (Pythia)", "GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_COMMON, intermediate_size=64)),
    "falcon": ("Falcon", "FalconConfig", "FalconForCausalLM", _COMMON),
    "mixtral": ("Mixtral", "MixtralConfig", "MixtralForCausalLM",
                dict(_GQA, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2-MoE", "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(_GQA, moe_intermediate_size=32, shared_expert_intermediate_size=64, num_experts=4,
                       num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3-MoE", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(_GQA, head_dim=8, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)),
    "gpt_oss": ("gpt-oss", "GptOssConfig", "GptOssForCausalLM",
                dict(_GQA, head_dim=8, num_local_experts=4, num_experts_per_tok=2)),
    "bert": ("BERT", "BertConfig", "BertForMaskedLM", dict(_COMMON, intermediate_size=64)),
    "roberta": ("RoBERTa", "RobertaConfig", "RobertaForMaskedLM",
                dict(_COMMON, intermediate_size=64, max_position_embeddings=66)),
}


def make_tiny(family: str, /, *, seed: int = 0):
    """The tiny random model of ``family`` (a key of :data:`FAMILIES`), in eval mode."""
    import transformers

    _, config_cls, model_cls, options = FAMILIES[family]
    config = getattr(transformers, config_cls)(**options)
    torch.manual_seed(seed)
    return getattr(transformers, model_cls)(config).eval()


def calibration_tokens(seed: int = 1) -> torch.Tensor:
    """16 windows of 32 random token ids in ``[3, 128)`` (no pad, bos or eos id)."""
    return torch.randint(3, 128, (16, 32), generator=torch.Generator().manual_seed(seed))
