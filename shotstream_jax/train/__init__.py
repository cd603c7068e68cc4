"""Training: the ShotStream recipe (teacher, ODE pairs, ODE init, intra/inter-shot DMD) as jitted, sharded steps."""
