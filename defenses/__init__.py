"""Bundled defense plug-ins, registered through the ``robust_bench_sc.defenses`` entry-point group."""
