"""Transfer across a sim-to-"real" gap (stage-3 options, each off by default): the gap definition shared by every
method and by :mod:`robopretrain.evaluate` (:mod:`.gap`), EPOpt worst-case episode selection (:mod:`.epopt`),
domain-invariant encoder features behind gradient reversal (:mod:`.dann`) and the off-dynamics reward correction
(:mod:`.darc`). The math of each lives in its module; :mod:`finetune.online` wires them."""
