"""Targets (:mod:`.target`): adapters that make any gymnasium env follow the toolkit's observation, success and
reward conventions; ``sim_envs`` tasks are one family, Meta-World (v3, :mod:`.metaworld`) another, any gymnasium env
a third."""
