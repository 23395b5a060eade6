"""CORL's rebrac.py update_critic / update_actor (extracted by ast) on our weights, float64; grads = params - new params
of an SGD(lr=1) TrainState. Writes /tmp/rebrac_corl.npz."""
exec(open("benchmarks/corl_agreement/rebrac_corl_modules.py").read().split("a=ns[")[0])
o = np.load("/tmp/rebrac_ours.npz")
def actor_params(prefix):
    return FrozenDict({"params": {f"Dense_{i}": {"kernel": jnp.asarray(o[f"{prefix}_{i}_kernel"]), "bias": jnp.asarray(o[f"{prefix}_{i}_bias"])} for i in range(4)}})
def critic_params(prefix):
    d = {f"Dense_{i}": {"kernel": jnp.asarray(o[f"{prefix}_dense{i}_kernel"]), "bias": jnp.asarray(o[f"{prefix}_dense{i}_bias"])} for i in range(4)}
    d.update({f"LayerNorm_{i}": {"scale": jnp.asarray(o[f"{prefix}_ln{i}_scale"]), "bias": jnp.asarray(o[f"{prefix}_ln{i}_bias"])} for i in range(3)})
    return FrozenDict({"params": {"VmapCritic_0": d}})
actor_mod = ns["DetActor"](action_dim=4, hidden_dim=256, layernorm=False, n_hiddens=3)
critic_mod = ns["EnsembleCritic"](hidden_dim=256, num_critics=2, layernorm=True, n_hiddens=3)
actor = ns["ActorTrainState"].create(apply_fn=actor_mod.apply, params=actor_params("actor"), target_params=actor_params("tactor"), tx=optax.sgd(1.0))
critic = ns["CriticTrainState"].create(apply_fn=critic_mod.apply, params=critic_params("critic"), target_params=critic_params("tcritic"), tx=optax.sgd(1.0))
batch = {"states": jnp.asarray(o["batch_observations"]), "actions": jnp.asarray(o["batch_actions"]),
         "rewards": jnp.asarray(o["batch_rewards"]), "next_states": jnp.asarray(o["batch_next_observations"]),
         "next_actions": jnp.asarray(o["batch_next_actions"]), "dones": jnp.asarray(o["batch_dones"])}
Metrics = ns["Metrics"]
metrics = Metrics.create(["critic_loss", "q_min", "actor_loss", "bc_mse_policy", "bc_mse_random", "action_mse"])
key = jax.random.PRNGKey(7)
_, actions_key = jax.random.split(key)
noise = jax.random.normal(actions_key, (64, 4))
_, new_critic, m1 = ns["update_critic"](key, actor, critic, batch, 0.99, 0.3, 0.005, 0.2, 0.5, metrics)
_, new_actor, _, m2 = ns["update_actor"](key, actor, critic, batch, 0.7, 0.005, True, metrics)
out = {"noise": np.asarray(noise), "critic_loss": np.asarray(m1.accumulators["critic_loss"][0][0]),
       "actor_loss": np.asarray(m2.accumulators["actor_loss"][0][0])}
old_c, new_c = critic.params["params"]["VmapCritic_0"], new_critic.params["params"]["VmapCritic_0"]
for i in range(4):
    out[f"g_critic_dense{i}_kernel"] = np.asarray(old_c[f"Dense_{i}"]["kernel"] - new_c[f"Dense_{i}"]["kernel"])
    out[f"g_critic_dense{i}_bias"] = np.asarray(old_c[f"Dense_{i}"]["bias"] - new_c[f"Dense_{i}"]["bias"])
for i in range(3):
    out[f"g_critic_ln{i}_scale"] = np.asarray(old_c[f"LayerNorm_{i}"]["scale"] - new_c[f"LayerNorm_{i}"]["scale"])
    out[f"g_critic_ln{i}_bias"] = np.asarray(old_c[f"LayerNorm_{i}"]["bias"] - new_c[f"LayerNorm_{i}"]["bias"])
old_a, new_a = actor.params["params"], new_actor.params["params"]
for i in range(4):
    out[f"g_actor_{i}_kernel"] = np.asarray(old_a[f"Dense_{i}"]["kernel"] - new_a[f"Dense_{i}"]["kernel"])
    out[f"g_actor_{i}_bias"] = np.asarray(old_a[f"Dense_{i}"]["bias"] - new_a[f"Dense_{i}"]["bias"])
np.savez("/tmp/rebrac_corl.npz", **out)
print("corl critic loss", out["critic_loss"], "actor loss", out["actor_loss"])
