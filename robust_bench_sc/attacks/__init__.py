"""Attack backends behind one small interface (see :mod:`robust_bench_sc.attacks.base`)."""

from robust_bench_sc.attacks.base import ATTACKS, Attack, AttackContext, AttackOutput, get_attack

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackOutput", "get_attack"]
