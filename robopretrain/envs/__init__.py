"""Targets: adapters that make any gymnasium env follow the toolkit's observation, success and reward conventions."""
