"""Agents, one module per backbone: ``td3`` (TD3 and TD3+BC, the MuJoCo backbone), ``opt`` (OPT composing a
backbone with an online-pre-trained critic), ``sac`` (soft actor-critic, the policy behind D4RL's MuJoCo data,
used to regenerate it)."""
