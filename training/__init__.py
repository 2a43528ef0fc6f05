"""Offline trainer: data, multi-interest backbones, REMI training schemes, evaluation."""
