"""A decoder LM (GPT-2, tied input/output embeddings) generating greedily with a KV cache."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

config = GPT2Config(
    vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=True
)
model = GPT2LMHeadModel(config).eval().to(device)
assert model.lm_head.weight is model.transformer.wte.weight  # tied, also after .to()

input_ids = torch.randint(0, config.vocab_size, (2, 5)).to(device)
attention_mask = torch.ones_like(input_ids)
with torch.no_grad():
    out = model.generate(
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=6,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )
print("tokens", out.cpu().tolist())
with torch.no_grad():
    logits = model(out).logits
print("logit_sum", f"{logits.float().sum().item():.5f}")
