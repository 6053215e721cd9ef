"""Run one lyrics-prep job on a Ray cluster: one Ray task per work unit.

    python -m lyrics_prep_ray --input s3://bucket/corpus/ --output s3://bucket/prepared/ \
        [--config job.toml] [--models models.toml] [--num-cpus 2] [--num-gpus 0.25] [--retries 3] \
        [--address auto] [--env-from-driver AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY,AWS_ENDPOINT] \
        [--units-per-task K] [--binary lyrics-prep]

The driver plans the job once (`lyrics-prep plan --json`), submits the units as tasks with their resource request
(fractional GPUs let several refiner processes share a device), each running `lyrics-prep run --unit N ...` for
a few units (`--units-per-task`; by default about eight tasks per task the cluster runs at once), retries a
failed unit with exponential backoff, and finalizes the manifest once (`lyrics-prep finalize`). Units are
idempotent and deterministic, so a retried or duplicated task writes the same bytes, and the output is
byte-identical to a single-process run.

Object-store settings and credentials reach the workers through Ray's runtime environment (`env_vars`), never on
a command line: by default every variable of the driver whose name starts with AWS_, AZURE_, GOOGLE_, HF_ or LYRICS_
(plus ORT_DYLIB_PATH), or the names given with --env-from-driver.

Progress, printed by the driver every few seconds: units done / failed / running, images/s, ETA.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import ray

FORWARDED_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "HF_", "LYRICS_")
FORWARDED_NAMES = ("ORT_DYLIB_PATH",)
TASKS_PER_SLOT = 8


def job_args(args):
    """The flags every lyrics-prep call of the job shares."""
    out = ["--input", args.input]
    if args.config:
        out += ["--config", args.config]
    return out


def start_plan(args, env):
    """Starts `lyrics-prep plan` (it lists the input) so that it runs while the driver connects to the cluster."""
    return subprocess.Popen(
        [args.binary, "plan", *job_args(args), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def planned_units(plan):
    out, err = plan.communicate()
    if plan.returncode != 0:
        sys.exit(f"lyrics-prep-ray: planning failed:\n{err}")
    return [unit["id"] for unit in json.loads(out)["units"]]


def units_per_task(requested, units, slots):
    """The units one task runs: as requested, or by default enough tasks for about TASKS_PER_SLOT per slot of the
    cluster, so each process start is spread over a few units while the tail stays short."""
    if requested > 0:
        return requested
    return max(1, -(-units // (max(1, slots) * TASKS_PER_SLOT)))


def slots(options):
    """How many of the tasks' requests the cluster holds at once."""
    resources = ray.cluster_resources()
    fits = [resources.get("CPU", 1.0) / options["num_cpus"]] if options["num_cpus"] > 0 else []
    if options["num_gpus"] > 0:
        fits.append(resources.get("GPU", 0.0) / options["num_gpus"])
    return int(min(fits)) if fits else 1


@ray.remote
def run_units(binary, common, output, units, retries, backoff_s):
    """Runs `lyrics-prep run --unit U ...` for the units UNITS in one process, retrying with exponential backoff (a
    retry skips the units already committed); returns (units, the units that failed, items read, stderr's tail)."""
    selected = [arg for u in units for arg in ("--unit", str(u))]
    command = [binary, "run", *common, "--output", output, *selected, "--progress", "off", "--summary", "json"]
    tail, failed, items = "", list(units), 0
    for attempt in range(retries + 1):
        result = subprocess.run(command, capture_output=True, text=True)
        tail = result.stderr[-2000:]
        # `--summary json` prints one JSON object on stdout, also when some units failed (exit 1): the items read
        # make the driver's images/s, and its failed units are the ones left to report.
        lines = result.stdout.strip().splitlines()
        summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        if summary is not None:
            items += summary.get("items", 0)
            failed = [f["unit"] for f in summary.get("units", {}).get("failed", [])]
        if result.returncode == 0:
            return units, [], items, tail
        if result.returncode == 2:
            return units, list(units), items, tail  # a usage or spec error: retrying cannot help
        time.sleep(backoff_s * (2**attempt))
    return units, failed if failed else list(units), items, tail


def forwarded_env(names):
    if names:
        return {n: os.environ[n] for n in names.split(",") if n in os.environ}
    return {
        k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES
    }


def main():
    parser = argparse.ArgumentParser(prog="lyrics-prep-ray", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--config")
    parser.add_argument("--models")
    parser.add_argument("--binary", default="lyrics-prep", help="the lyrics-prep executable on every node")
    parser.add_argument("--address", default=None, help="the Ray cluster (default: RAY_ADDRESS, else a local one)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs each unit's task requests")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs each task requests; fractions share one")
    parser.add_argument("--retries", type=int, default=3, help="reruns of a failed unit, with exponential backoff")
    parser.add_argument("--backoff-s", type=float, default=1.0)
    parser.add_argument("--env-from-driver", help="comma-separated variable names to pass to the workers")
    parser.add_argument("--progress-every", type=float, default=5.0)
    parser.add_argument(
        "--units-per-task",
        type=int,
        default=0,
        help="units each task runs in one lyrics-prep process (more: less start-up per unit, coarser retries); "
        f"default: about {TASKS_PER_SLOT} tasks for each task the cluster runs at once",
    )
    args = parser.parse_args()

    env = forwarded_env(args.env_from_driver)
    plan = start_plan(args, {**os.environ, **env})
    # A runtime environment, even an empty one, makes Ray start workers of its own instead of its waiting ones.
    ray.init(address=args.address, runtime_env={"env_vars": env} if env else None, log_to_driver=False)
    units = planned_units(plan)
    common = job_args(args) + (["--models", args.models] if args.models else [])
    options = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "max_retries": 0}
    per_task = units_per_task(args.units_per_task, len(units), slots(options))
    groups = [units[i : i + per_task] for i in range(0, len(units), per_task)]
    group_of = {
        run_units.options(**options).remote(args.binary, common, args.output, group, args.retries, args.backoff_s): group
        for group in groups
    }
    pending = list(group_of)
    started, done, failed, items, last = time.time(), [], [], 0, 0.0
    while pending:
        ready, pending = ray.wait(pending, timeout=args.progress_every)
        for group, group_failed, unit_items, tail in ray.get(ready):
            done.extend(u for u in group if u not in group_failed)
            failed.extend(group_failed)
            items += unit_items
            if group_failed:
                names = ",".join(map(str, group_failed))
                print(f"lyrics-prep-ray: unit {names} failed after its retries:\n{tail}", file=sys.stderr)
        now = time.time()
        if now - last >= args.progress_every or not pending:
            last = now
            rate = items / max(now - started, 1e-9)
            left = len(units) - len(done) - len(failed)
            per_unit = (now - started) / max(len(done), 1)
            eta = f"{per_unit * left:.0f} s" if done else "?"
            running = sum(len(group_of[p]) for p in pending)
            print(
                f"lyrics-prep-ray: units {len(done)} done, {len(failed)} failed, {running} running "
                f"of {len(units)}; {rate:.1f} images/s; ETA {eta}",
                file=sys.stderr,
            )
    if failed:
        print(f"lyrics-prep-ray: units {','.join(map(str, sorted(failed)))} failed; rerun to retry them", file=sys.stderr)
        sys.exit(1)
    final = subprocess.run([args.binary, "finalize", "--output", args.output], env={**os.environ, **env})
    sys.exit(final.returncode)


if __name__ == "__main__":
    main()
