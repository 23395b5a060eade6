import ast, math, jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import flax.linen as nn
from typing import Any, Callable, Dict, Sequence, Tuple
src=open("/tmp/corl/algorithms_offline_rebrac.py").read()
tree=ast.parse(src)
names={"pytorch_init","uniform_init","identity","DetActor","Critic","EnsembleCritic","update_actor","update_critic","Metrics","CriticTrainState","ActorTrainState"}
keep=[n for n in tree.body if isinstance(n,(ast.ClassDef,ast.FunctionDef)) and n.name in names]
import chex, optax
from flax.training.train_state import TrainState
from flax.core import FrozenDict
from copy import deepcopy
import numpy as np
ns=dict(jax=jax,jnp=jnp,nn=nn,math=math,Any=Any,Callable=Callable,Dict=Dict,Sequence=Sequence,Tuple=Tuple,chex=chex,optax=optax,TrainState=TrainState,FrozenDict=FrozenDict,deepcopy=deepcopy,np=np)
# assignments like default_kernel_init
exec(compile(ast.Module(body=keep,type_ignores=[]),"rebrac","exec"),ns)
a=ns["DetActor"](action_dim=4,hidden_dim=256,layernorm=False,n_hiddens=3)
p=a.init(jax.random.PRNGKey(0),jnp.zeros((1,17)))
print(jax.tree_util.tree_map(lambda x:x.shape,p))
c=ns["EnsembleCritic"](hidden_dim=256,num_critics=2,layernorm=True,n_hiddens=3)
p=c.init(jax.random.PRNGKey(0),jnp.zeros((1,17)),jnp.zeros((1,4)))
print(jax.tree_util.tree_map(lambda x:x.shape,p))
