"""dnjax: Densely Connected Convolutional Networks and their baselines in JAX/Flax."""
