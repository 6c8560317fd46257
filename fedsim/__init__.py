"""fedsim: a Flower-native federated-learning simulator for research."""

__version__ = "0.1.0"
