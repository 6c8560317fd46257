"""fedsim's server side: the Flower ServerApp and its workflows (FL rounds, later FAL cycles, SSFL
and post-training defenses)."""
