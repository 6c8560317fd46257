"""fedsim's client side: the Flower ClientApp and the local methods (learners, later query
strategies and attacks)."""
