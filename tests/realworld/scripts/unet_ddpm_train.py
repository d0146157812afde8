"""A diffusion training step (diffusers UNet2DModel + DDPMScheduler) and two sampling steps."""

import torch
from diffusers import DDPMScheduler, UNet2DModel

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

model = UNet2DModel(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=8,
).to(device)
scheduler = DDPMScheduler(num_train_timesteps=50)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

clean = torch.randn(2, 3, 16, 16).to(device)
noise = torch.randn(clean.shape).to(device)
timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (2,)).to(device)
noisy = scheduler.add_noise(clean, noise, timesteps)
pred = model(noisy, timesteps).sample
loss = torch.nn.functional.mse_loss(pred, noise)
optimizer.zero_grad()
loss.backward()
optimizer.step()
print(f"train loss {loss.item():.5f}")

scheduler.set_timesteps(2)
sample = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(device)
with torch.no_grad():
    for t in scheduler.timesteps:
        eps = model(sample, t).sample
        sample = scheduler.step(
            eps, t, sample, generator=torch.Generator().manual_seed(2)
        ).prev_sample
print(f"sample mean {sample.mean().item():.5f} std {sample.std().item():.5f}")
