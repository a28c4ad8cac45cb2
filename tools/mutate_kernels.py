#!/usr/bin/env python3
"""Mutation campaign over the CUDA kernels: how many one-line bugs do the emulated tests notice?

Each mutant (tools/mutants/kernels.jsonl, one JSON object a line) names a file, an exact original
snippet that must occur exactly once in it, its replacement, a kind and a kernel family. For each
mutant the tool writes the mutation into a copy of the committed sources, rebuilds only the
emulated test executables (their kernels all come in through the emulated CUDA engine), runs
them with a timeout and records the outcome:

  killed            a test failed or the emulator aborted (a barrier, alignment or race check)
  timeout           the tests ran past --timeout (a hang counts as killed, recorded apart)
  survived          every test passed: the tests do not notice this change
  did-not-compile   the mutant does not build (not counted as killed)
  stale             the original snippet is missing or not unique: the list needs updating

Mutants run in <build-dir>/src, a copy of the repository at HEAD (git archive; files whose bytes
changed are rewritten, so make rebuilds exactly those), built in <build-dir>/obj without nvcc at
-O1 (half the compile time of -O3; the tests take a second more); --sanitizer builds as
tools/emu_sanitizer_tests.sh does (RelWithDebInfo) in obj-<sanitizer>. The working tree is never
touched, and the copy's file is restored after every mutant, on failure and on Ctrl-C too (a
restore file left by a killed run is applied at the next start).

  tools/mutate_kernels.py run [--family rmsnorm] [--only id,...] [--results FILE]
  tools/mutate_kernels.py run --sanitizer thread --only id,...   a survivor under ThreadSanitizer
                                         (a missing barrier the plain run cannot see is a race)
  tools/mutate_kernels.py check          every mutant's snippet still matches (no build)
  tools/mutate_kernels.py summarize      markdown table of the latest outcome of every mutant
  tools/mutate_kernels.py generate FILE  candidate mutants by pattern, as JSON lines, to curate

A mutant that survives is either killed by a stronger test or given an "equivalent" field with
the reason it cannot change any result (bench/results/mutation.md).
"""
import argparse
import datetime
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_MUTANTS = ROOT / "tools" / "mutants" / "kernels.jsonl"
DEFAULT_RESULTS = ROOT / "bench" / "results" / "mutation.jsonl"
DEFAULT_BUILD = ROOT / "build-mutation"
# The emulated tests that run the kernels and the CUDA engine, and where their binaries land.
TEST_BINARIES = {
    "test_cuda_kernels": "tests/kernels/cuda/test_cuda_kernels",
    "test_backend_ops": "tests/kernels/test_backend_ops",
    "test_cuda_training_step": "tests/kernels/cuda/test_cuda_training_step",
    # packed documents (positions through RoPE and attention) against each document run alone
    "test_packed_attention": "tests/kernels/test_packed_attention",
    # the memory-bound kernels' counted traffic within 1.15x of ideal (a counted build: not
    # under a sanitizer), which a mutant that re-reads what it kept on chip fails
    "test_kernel_traffic": "tests/emu/test_kernel_traffic",
}
# ...and the kernel tests once more with every block's threads in reverse order (the ctest
# cuda_kernels_reversed_thread_order): a missing barrier often breaks results in one order only.
REVERSED_RUN = "test_cuda_kernels"
FIELDS = ("id", "family", "file", "kind", "original", "replacement")
KINDS = ("barrier-removed", "comparison", "epsilon-or-scale-dropped", "constant-nudged", "index-or-stride",
         "vector-scalar-split", "operator")
STATUSES = ("killed", "timeout", "survived", "did-not-compile", "stale")


class Interrupted(Exception):
    pass


def load_mutants(path):
    mutants, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            mutant = json.loads(line)
        except json.JSONDecodeError as error:
            sys.exit(f"{path}:{number}: not a JSON object ({error})")
        missing = [field for field in FIELDS if not isinstance(mutant.get(field), str)]
        if missing:
            sys.exit(f"{path}:{number}: missing string field(s) {', '.join(missing)}; expected {', '.join(FIELDS)}")
        if mutant["kind"] not in KINDS:
            sys.exit(f"{path}:{number}: kind '{mutant['kind']}' is not one of {', '.join(KINDS)}")
        if mutant["original"] == mutant["replacement"]:
            sys.exit(f"{path}:{number}: mutant {mutant['id']} replaces its snippet by itself")
        if mutant["id"] in seen:
            sys.exit(f"{path}:{number}: duplicate mutant id {mutant['id']}")
        seen.add(mutant["id"])
        mutants.append(mutant)
    return mutants


def select(mutants, args):
    chosen = mutants
    if args.family:
        families = set(args.family.split(","))
        chosen = [m for m in chosen if m["family"] in families]
    if args.only:
        ids = set(args.only.split(","))
        unknown = ids - {m["id"] for m in mutants}
        if unknown:
            sys.exit(f"--only: no mutant with id {', '.join(sorted(unknown))} in the list")
        chosen = [m for m in chosen if m["id"] in ids]
    if args.per_family:
        taken = {}
        kept = []
        for mutant in chosen:
            taken[mutant["family"]] = taken.get(mutant["family"], 0) + 1
            if taken[mutant["family"]] <= args.per_family:
                kept.append(mutant)
        chosen = kept
    if args.skip_done:
        done = {record["id"] for record in load_results(args.results)}
        chosen = [m for m in chosen if m["id"] not in done]
    return chosen


def snippet_count(text, mutant):
    return text.count(mutant["original"])


def head_commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def refresh_snapshot(src):
    """Makes src the repository at HEAD, rewriting only files whose bytes differ (mtime = now)."""
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    changed = 0
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            target = src / member.name
            if target.exists() and target.read_bytes() == data:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(member.mode & 0o777)
            changed += 1
    return changed


def restore_pending(build):
    """Applies the restore file a killed run left behind (the original bytes of a mutated file)."""
    pending = build / "restore.json"
    if pending.exists():
        saved = json.loads(pending.read_text(encoding="utf-8"))
        pathlib.Path(saved["path"]).write_text(saved["text"], encoding="utf-8")
        pending.unlink()
        print(f"restored {saved['path']} left mutated by an interrupted run", flush=True)


def run_command(command, cwd, timeout, env=None):
    """Runs command in its own process group; returns (returncode or None on timeout, output)."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output.decode("utf-8", "replace")
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise


def test_binaries(sanitizer):
    # The emulated training step is not built under ThreadSanitizer (emu/README.md).
    # Counted builds (test_kernel_traffic) exist only without a sanitizer (emu/CMakeLists.txt).
    return {name: path for name, path in TEST_BINARIES.items()
            if not (sanitizer == "thread" and name == "test_cuda_training_step")
            and not (sanitizer and name == "test_kernel_traffic")}


def configure(src, obj, sanitizer):
    if (obj / "CMakeCache.txt").exists():
        return
    obj.mkdir(parents=True, exist_ok=True)
    command = ["cmake", "-S", str(src), "-B", str(obj), "-DMINITRON_CUDA=OFF"]
    if sanitizer:
        # As tools/emu_sanitizer_tests.sh builds: the emulator's scheduler is kept out of TSan's
        # view only when the library code it calls is inlined (at -O1 TSan reports false races).
        command += ["-DCMAKE_BUILD_TYPE=RelWithDebInfo", f"-DMINITRON_EMU_SANITIZER={sanitizer}"]
    else:
        command += ["-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG"]
    if shutil.which("ccache"):  # the unmutated build may come from the cache; mutants bypass it
        command.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
    code, output = run_command(command, ROOT, 600)
    if code != 0:
        sys.exit(f"configuring {obj} failed:\n{output[-3000:]}")


def build(obj, jobs, timeout, sanitizer, cached=False):
    env = dict(os.environ)
    if not cached:
        env["CCACHE_DISABLE"] = "1"  # mutants would only crowd the shared cache
    command = ["nice", "-n", "10", "cmake", "--build", str(obj), "-j", str(jobs), "--target",
               *test_binaries(sanitizer)]
    return run_command(command, ROOT, timeout, env)


def failing_tests(output):
    names = [name.rstrip(",") for name in re.findall(r"^\[  FAILED  \] (\S+)", output, re.MULTILINE)]
    return list(dict.fromkeys(name for name in names if "." in name))


def run_tests(obj, timeout, sanitizer, gtest_filter=None):
    """Returns (status, detail) for the built tests: killed, timeout or survived."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1", ASAN_OPTIONS="detect_leaks=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    under = f" under -fsanitize={sanitizer}" if sanitizer else ""
    runs = [(target, relative, env) for target, relative in test_binaries(sanitizer).items()]
    if not sanitizer:
        runs.append((REVERSED_RUN + " (reversed thread order)", TEST_BINARIES[REVERSED_RUN],
                     dict(env, MINITRON_EMU_REVERSE="1")))
    extra = [f"--gtest_filter={gtest_filter}"] if gtest_filter else []
    for target, relative, env in runs:
        code, output = run_command(["nice", "-n", "10", str(obj / relative), "--gtest_brief=1", *extra], obj, timeout,
                                   env)
        if code is None:
            return "timeout", f"{target} ran past {timeout} s{under}"
        if code != 0:
            failed = failing_tests(output)
            if failed:
                more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
                return "killed", f"{target}{under}: {', '.join(failed[:3])}{more}"
            report = re.search(r"WARNING: ThreadSanitizer: [^\n(]*|ERROR: \w+Sanitizer: [^\n(]*", output)
            lines = [line for line in output.splitlines() if line.strip()]
            last = report.group(0) if report else (lines[-1][:200] if lines else "no output")
            return "killed", f"{target} exited {code}{under}: {last}"
    return "survived", f"all emulated kernel tests pass{under}"


def compile_error(output):
    for line in output.splitlines():
        if "error:" in line:
            return line.strip()[:240]
    return output.strip().splitlines()[-1][:240] if output.strip() else "build failed"


def run_one(mutant, src, obj, args):
    path = src / mutant["file"]
    if not path.exists():
        return "stale", f"{mutant['file']} does not exist"
    text = path.read_text(encoding="utf-8")
    count = snippet_count(text, mutant)
    if count != 1:
        return "stale", f"original snippet found {count} times in {mutant['file']} (needs exactly 1)"
    pending = obj / "restore.json"
    pending.write_text(json.dumps({"path": str(path), "text": text}), encoding="utf-8")
    try:
        path.write_text(text.replace(mutant["original"], mutant["replacement"], 1), encoding="utf-8")
        code, output = build(obj, args.jobs, args.build_timeout, args.sanitizer)
        if code is None:
            return "did-not-compile", f"build ran past {args.build_timeout} s"
        if code != 0:
            return "did-not-compile", compile_error(output)
        return run_tests(obj, args.timeout, args.sanitizer, args.gtest_filter)
    finally:
        path.write_text(text, encoding="utf-8")
        pending.unlink()


def load_results(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def interrupt(signum, frame):
    raise Interrupted(f"signal {signum}")


def command_run(args):
    signal.signal(signal.SIGTERM, interrupt)  # like Ctrl-C: stop the build or test, restore, exit
    mutants = select(load_mutants(args.mutants), args)
    if not mutants:
        sys.exit("no mutant selected (check --family / --only against the list)")
    build_root = args.build_dir.resolve()
    src = build_root / "src"
    obj = build_root / (f"obj-{args.sanitizer}" if args.sanitizer else "obj")
    src.mkdir(parents=True, exist_ok=True)
    obj.mkdir(parents=True, exist_ok=True)
    restore_pending(obj)
    changed = refresh_snapshot(src)
    commit = head_commit()
    print(f"sources at {commit} in {src} ({changed} files rewritten); configuring and building the unmutated "
          f"tests in {obj}", flush=True)
    configure(src, obj, args.sanitizer)
    code, output = build(obj, args.jobs, 3600, args.sanitizer, cached=True)
    if code != 0:
        sys.exit(f"the unmutated sources do not build:\n{output[-3000:]}")
    status, detail = run_tests(obj, args.timeout, args.sanitizer, args.gtest_filter)
    if status != "survived":
        sys.exit(f"the unmutated sources fail their tests ({status}: {detail}); fix that first")

    args.results.parent.mkdir(parents=True, exist_ok=True)
    counts = {status: 0 for status in STATUSES}
    started = time.monotonic()
    try:
        for index, mutant in enumerate(mutants, 1):
            begin = time.monotonic()
            status, detail = run_one(mutant, src, obj, args)
            seconds = round(time.monotonic() - begin, 1)
            counts[status] += 1
            record = {"id": mutant["id"], "family": mutant["family"], "file": mutant["file"], "kind": mutant["kind"],
                      "status": status, "detail": detail, "seconds": seconds, "commit": commit,
                      "sanitizer": args.sanitizer or "none", "gtest_filter": args.gtest_filter or "",
                      "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            with args.results.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
            print(f"[{index}/{len(mutants)}] {mutant['id']}: {status} ({seconds} s) {detail}", flush=True)
    except (KeyboardInterrupt, Interrupted) as stop:
        print(f"stopped ({stop or 'Ctrl-C'}); the mutated file was restored", flush=True)
        return 130
    elapsed = time.monotonic() - started
    print(" ".join(f"{status} {count}" for status, count in counts.items()) + f" in {elapsed:.0f} s", flush=True)
    return 0


def command_check(args):
    mutants = load_mutants(args.mutants)
    bad = 0
    for mutant in mutants:
        path = ROOT / mutant["file"]
        count = snippet_count(path.read_text(encoding="utf-8"), mutant) if path.exists() else 0
        if count != 1:
            bad += 1
            print(f"{mutant['id']}: stale, original snippet found {count} times in {mutant['file']} (needs exactly 1)")
    families = {}
    for mutant in mutants:
        families[mutant["family"]] = families.get(mutant["family"], 0) + 1
    print(f"{len(mutants)} mutants, {bad} stale; per family: " +
          ", ".join(f"{family} {count}" for family, count in sorted(families.items())))
    return 1 if bad else 0


def command_summarize(args):
    mutants = load_mutants(args.mutants)
    latest = {}
    for record in load_results(args.results):
        latest[record["id"]] = record
    rows, totals, families = [], {status: 0 for status in STATUSES}, {}
    equivalent = 0
    for mutant in mutants:
        record = latest.get(mutant["id"])
        if record is None:
            continue
        status = record["status"]
        totals[status] += 1
        family = families.setdefault(mutant["family"], {status: 0 for status in STATUSES} | {"equivalent": 0})
        family[status] += 1
        note = record["detail"]
        if status == "survived" and mutant.get("equivalent"):
            equivalent += 1
            family["equivalent"] += 1
            note = "equivalent: " + mutant["equivalent"]
        rows.append(f"| {mutant['id']} | {mutant['family']} | {mutant['kind']} | {status} | {note.replace('|', '/')} |")
    ran = sum(totals.values())
    compiled = ran - totals["did-not-compile"] - totals["stale"]
    survivors = totals["survived"] - equivalent
    print(f"Ran {ran} of {len(mutants)} listed mutants: {totals['killed']} killed, {totals['timeout']} killed by "
          f"timeout, {totals['survived']} survived ({equivalent} equivalent, {survivors} not), "
          f"{totals['did-not-compile']} did not compile, {totals['stale']} stale.")
    if compiled:
        rate = 100.0 * totals["survived"] / compiled
        real = 100.0 * survivors / max(compiled - equivalent, 1)
        print(f"Survival rate: {rate:.1f}% of the {compiled} mutants that built; {real:.1f}% of the "
              f"{compiled - equivalent} non-equivalent ones.")
    print()
    print("| family | killed | timeout | survived (equivalent) | did not compile | stale |")
    print("|---|---|---|---|---|---|")
    for name, family in sorted(families.items()):
        print(f"| {name} | {family['killed']} | {family['timeout']} | {family['survived']} ({family['equivalent']}) "
              f"| {family['did-not-compile']} | {family['stale']} |")
    print()
    print("| mutant | family | kind | outcome | detail |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


# Patterns for `generate`: (kind, regex on one line, replacement for the match).
PATTERNS = [
    ("barrier-removed", re.compile(r"__syncthreads\(\);"), ""),
    ("barrier-removed", re.compile(r"__syncwarp\([^)]*\);"), ""),
    ("barrier-removed", re.compile(r"cp_async_wait<\w+>\(\);"), ""),
    ("comparison", re.compile(r" < "), " <= "),
    ("comparison", re.compile(r" <= "), " < "),
    ("comparison", re.compile(r" > "), " >= "),
    ("comparison", re.compile(r" >= "), " > "),
    ("epsilon-or-scale-dropped", re.compile(r" \+ eps\b"), ""),
    ("constant-nudged", re.compile(r"\b(\d+\.\d+)f\b"), None),
]


def command_generate(args):
    for name in args.files:
        lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
        text = "\n".join(lines)
        family = pathlib.Path(name).name.split(".")[0]
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("//") or text.count(stripped) != 1:
                continue
            for kind, pattern, replacement in PATTERNS:
                for match in pattern.finditer(stripped):
                    if replacement is None:
                        value = float(match.group(1)) * 1.02
                        new = f"{value:.6g}f" if "." in f"{value:.6g}" else f"{value:.6g}.0f"
                    else:
                        new = replacement
                    mutated = stripped[:match.start()] + new + stripped[match.end():]
                    print(json.dumps({"id": f"{family}-{number}-{kind}", "family": family, "file": name,
                                      "kind": kind, "original": stripped, "replacement": mutated}))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=pathlib.Path, default=DEFAULT_MUTANTS, help="the mutant list (JSON lines)")
    parser.add_argument("--results", type=pathlib.Path, default=DEFAULT_RESULTS,
                        help="outcomes, one JSON line per mutant run (appended)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run mutants")
    run.add_argument("--family", help="comma-separated families to run (default: all)")
    run.add_argument("--only", help="comma-separated mutant ids to run")
    run.add_argument("--per-family", type=int, help="only the first N listed mutants of each family")
    run.add_argument("--skip-done", action="store_true", help="leave out mutants that --results already has")
    run.add_argument("--build-dir", type=pathlib.Path, default=DEFAULT_BUILD,
                     help="holds src/ (the copy that is mutated) and obj/ (its build)")
    run.add_argument("--sanitizer", choices=["thread", "address,undefined"],
                     help="build and run the tests under this sanitizer (in obj-<sanitizer>): a missing "
                          "barrier the plain run cannot see is a ThreadSanitizer report")
    run.add_argument("--gtest-filter", help="run only these tests (a sanitizer run of the whole suite takes minutes)")
    run.add_argument("--jobs", type=int, default=1, help="build jobs (default 1)")
    run.add_argument("--timeout", type=int, default=120, help="seconds each test binary may run (about 5 unmutated)")
    run.add_argument("--build-timeout", type=int, default=900, help="seconds a mutant's rebuild may take")
    commands.add_parser("check", help="check that every mutant's snippet matches exactly once")
    commands.add_parser("summarize", help="markdown summary of the latest outcome of every mutant")
    generate = commands.add_parser("generate", help="candidate mutants by pattern for the given files")
    generate.add_argument("files", nargs="+")
    args = parser.parse_args()
    if args.command == "run" and (args.jobs < 1 or args.timeout < 1 or args.build_timeout < 1):
        sys.exit("--jobs, --timeout and --build-timeout must be at least 1")
    handlers = {"run": command_run, "check": command_check, "summarize": command_summarize,
                "generate": command_generate}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
