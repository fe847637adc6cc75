"""Wall time of one suite: local executor vs Ray with N local workers, in one run.

Both runs use the same suite and seed into fresh run directories; the script checks that
``summary.csv`` (minus ``seconds``) and ``samples.csv`` are identical and reports the Ray
start-up time separately from the run itself.

    python benchmarks/bench_executor.py --suite suites/smoke.yaml --workers 2 --out /tmp/bench_executor.json
    python benchmarks/bench_executor.py --threats clean,linf_pgd_ce,l1_pgd_paper,cw_l2,square_linf \
        --set chunk_size=4 --out /tmp/bench_executor.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch


def _identical(a: Path, b: Path) -> dict[str, bool]:
    sa = pd.read_csv(a / "summary.csv").drop(columns="seconds")
    sb = pd.read_csv(b / "summary.csv").drop(columns="seconds")
    return {"summary_csv_minus_seconds": sa.equals(sb),
            "samples_csv": (a / "samples.csv").read_bytes() == (b / "samples.csv").read_bytes()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", type=Path, default=Path(__file__).resolve().parents[1] / "suites" / "smoke.yaml")
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance (1 per job)")
    ap.add_argument("--n-images", type=int, default=None, help="override the suite's n_images")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="suite override KEY=VALUE")
    ap.add_argument("--threats", default="", help="comma-separated threat-model names to keep (default: all)")
    ap.add_argument("--local-threads", type=int, default=None,
                    help="torch threads of the local run (default: torch's; 1 = what each Ray task uses)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=None, help="folder for the two run directories (default: temp)")
    ap.add_argument("--out", type=Path, required=True, help="JSON output path")
    args = ap.parse_args(argv)

    import ray

    from robust_bench_sc.config import load_suite
    from robust_bench_sc.ray_executor import RayExecutor
    from robust_bench_sc.runner import run_suite

    suite = load_suite(args.suite, overrides=args.sets, n_images=args.n_images)
    if args.threats:
        keep = [t for t in args.threats.split(",") if t]
        missing = sorted(set(keep) - {t.name for t in suite.threat_models})
        if missing:
            ap.error(f"no threat model(s) {missing} in {args.suite}")
        suite = suite.model_copy(update={"threat_models": [t for t in suite.threat_models if t.name in keep]})
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_executor_"))
    n_jobs = len(suite.defenses) * len(suite.threat_models) * -(-suite.data.n_images // suite.data.chunk_size)

    if args.local_threads:
        torch.set_num_threads(args.local_threads)
    local_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    run_suite(suite, out=work / "local", device=args.device, show_progress=False)
    local_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    init_s = time.perf_counter() - t0
    try:
        ex = RayExecutor(device=args.device)
        t0 = time.perf_counter()
        run_suite(suite, out=work / "ray", device=args.device, executor=ex, show_progress=False)
        ray_run_s = time.perf_counter() - t0
    finally:
        t0 = time.perf_counter()
        ray.shutdown()
        shutdown_s = time.perf_counter() - t0

    ray_total = init_s + ray_run_s + shutdown_s
    result = {
        "benchmark": "executor",
        "suite": str(args.suite),
        "threat_models": [t.name for t in suite.threat_models],
        "overrides": args.sets,
        "n_images": suite.data.n_images,
        "chunk_size": suite.data.chunk_size,
        "n_jobs": n_jobs,
        "device": args.device,
        "ray_workers": args.workers,
        "torch_threads_local": local_threads,
        "torch_threads_per_ray_task": ex.last_stats.get("threads"),
        "local_s": round(local_s, 2),
        "ray_init_s": round(init_s, 2),
        "ray_run_s": round(ray_run_s, 2),
        "ray_shutdown_s": round(shutdown_s, 2),
        "ray_total_s": round(ray_total, 2),
        "overhead_s": round(ray_total - local_s, 2),
        "overhead_pct": round(100 * (ray_total - local_s) / local_s, 1),
        "ray_workers_used": len({t["pid"] for t in ex.last_stats.get("tasks", [])}),
        "identical": _identical(work / "local", work / "ray"),
        "work_dir": str(work),
        "host": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()},
        "versions": {"torch": torch.__version__, "ray": ray.__version__},
    }
    print(f"{args.suite.name}: {n_jobs} jobs on {suite.data.n_images} images")
    print(f"  local executor         {local_s:8.1f} s  ({local_threads} torch threads)")
    print(f"  ray, {args.workers} local workers   {ray_total:8.1f} s  ({result['torch_threads_per_ray_task']} thread each; init {init_s:.1f} s, run {ray_run_s:.1f} s, "
          f"shutdown {shutdown_s:.1f} s)")
    print(f"  overhead               {ray_total - local_s:+8.1f} s ({result['overhead_pct']:+.1f} %)")
    print(f"  identical results      {result['identical']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
