"""Plain-PyTorch training engine (no Ray): one loop for every method."""
