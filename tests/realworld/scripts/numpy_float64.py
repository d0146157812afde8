"""numpy float64 data sent to mps, as most first MPS scripts do (a Mac refuses it)."""

import numpy as np
import torch

device = "mps" if torch.backends.mps.is_available() else "cpu"
torch.manual_seed(0)

rng = np.random.default_rng(0)
features = rng.standard_normal((16, 8))  # float64, numpy's default
targets = rng.standard_normal((16, 1))

x = torch.from_numpy(features).to(device)
y = torch.from_numpy(targets).to(device)
model = torch.nn.Linear(8, 1).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    loss = torch.nn.functional.mse_loss(model(x.float()), y.float())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item():.5f}")
