"""Hyper-parameter search over config keys with Optuna: ``resnetlab tune RECIPE --trials N``."""
