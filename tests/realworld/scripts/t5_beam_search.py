"""An encoder-decoder (T5, tied embeddings) generating with beam search."""

import torch
from transformers import T5Config, T5ForConditionalGeneration

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

config = T5Config(
    vocab_size=97,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
model = T5ForConditionalGeneration(config).eval().to(device)

input_ids = torch.randint(2, config.vocab_size, (2, 7)).to(device)
with torch.no_grad():
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        num_beams=3,
        num_return_sequences=2,
        max_new_tokens=5,
        do_sample=False,
        early_stopping=True,
        output_scores=True,
        return_dict_in_generate=True,
    )
print("sequences", out.sequences.cpu().tolist())
print("scores", [f"{s:.5f}" for s in out.sequences_scores.cpu().tolist()])
