"""Training, data preparation and model tools for HOBBIT's small MoE models."""
