"""One torch thread in the implementation tests: on a small shared machine, intra-op threads
fight the other processes and make tiny-tensor tests tens of times slower, not faster."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
