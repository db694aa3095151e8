"""Neural-network layers, losses and containers."""
