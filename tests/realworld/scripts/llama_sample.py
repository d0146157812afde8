"""A Llama decoder (RoPE, RMSNorm, grouped-query attention) sampling with top-k / top-p."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

config = LlamaConfig(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
model = LlamaForCausalLM(config).eval().to(device)

input_ids = torch.randint(3, config.vocab_size, (2, 6)).to(device)
with torch.no_grad():
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=8,
        do_sample=True,
        top_k=20,
        top_p=0.9,
        temperature=0.8,
        repetition_penalty=1.2,
    )
print("tokens", out.cpu().tolist())
