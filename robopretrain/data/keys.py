"""Names of batch fields and special observation parts, in one place (STYLE.md rule 8).

A batch (a dict of tensors, from :class:`~robopretrain.data.replay.OfflineDataset`,
:class:`~robopretrain.data.replay.ReplayBuffer` or :class:`~robopretrain.data.replay.MixedSampler`) has the
fields below; ``OBS`` and ``NEXT_OBS`` are dicts of observation parts (see :mod:`robopretrain.data.spec`).
``DONES`` marks true terminals only: a truncated episode is not done (torchrl keeps them apart the same way).
"""

OBS = "observations"
ACTIONS = "actions"
REWARDS = "rewards"
NEXT_OBS = "next_observations"
DONES = "dones"
MC_RETURNS = "mc_returns"  # Monte-Carlo returns-to-go of the stored transition (Cal-QL's V_mu(s))
NEXT_ACTIONS = "next_actions"  # the data's action at s' (ReBRAC's critic penalty); an episode's last step: its own

BATCH_KEYS = (OBS, ACTIONS, REWARDS, NEXT_OBS, DONES, MC_RETURNS, NEXT_ACTIONS)
OBS_FIELDS = (OBS, NEXT_OBS)

# observation parts with a fixed meaning
TASK_ID = "task_id"  # int64 task index; the observation encoder turns it into the PTR task one-hot
FEATURES = "features"  # frozen-encoder features stored in place of the images (encoder mode frozen_cached)
