"""Per-sample evidence for the paper-faithful ℓ1 column vs the strong one and ℓ2 0.6.

    python results/table1_baselines/l1_gap.py results/table1_baselines > results/table1_baselines/l1_gap.txt
"""

import sys
import pandas as pd
run = sys.argv[1]
s = pd.read_csv(f"{run}/samples.csv")
for d, g in s.groupby("defense"):
    pv = {t: gg.set_index("index") for t, gg in g.groupby("threat_model")}
    if "l1_pgd_paper" not in pv:
        continue
    p, st = pv["l1_pgd_paper"], pv["l1_pgd_strong"]
    l2 = pv.get("l2_pgd")
    att = p[p.attacked]
    print(f"== {d}: attacked {len(att)} / {len(p)}")
    print(f" paper-dense ℓ1: robust {100*p.robust.mean():.2f}%  strong ℓ1: {100*st.robust.mean():.2f}%" + (f"  ℓ2 0.6: {100*l2.robust.mean():.2f}%" if l2 is not None else ""))
    for name, df in (("dense", att), ("strong", st[st.attacked])):
        q = df[["l1", "l2", "linf"]].describe(percentiles=[.1, .5, .9]).loc[["mean", "10%", "50%", "90%"]]
        print(f" {name} final (clipped) perturbation norms:\n{q.round(3).to_string()}")
    both = p.add_suffix("_p").join(st.add_suffix("_s"))
    print(" robust under dense but fooled by strong:", int((both.robust_p & ~both.robust_s).sum()),
          "| fooled by dense, robust under strong:", int((~both.robust_p & both.robust_s).sum()))
    if l2 is not None:
        j = p.add_suffix("_p").join(l2.add_suffix("_2"))
        print(" robust under dense ℓ1 but fooled by ℓ2 0.6:", int((j.robust_p & ~j.robust_2).sum()),
              "| fooled by dense ℓ1, robust under ℓ2 0.6:", int((~j.robust_p & j.robust_2).sum()))
    fooled = att[att.fooled]
    print(f" dense successes: median ℓ2 {fooled.l2.median():.3f}, median ℓ1 {fooled.l1.median():.2f}")
