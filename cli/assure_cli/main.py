"""``assure``: the product's CI client. Results go to stdout, progress and errors to stderr.

    assure run SCENARIO [--repeat K] [--wait] [--junit FILE] [--fail-on-flaky] [--timeout S]
    assure batch ID [--wait] [--junit FILE] [--fail-on-flaky] [--timeout S]
    assure compare ID [--to ID]
    assure export SCENARIO [-o FILE]
    assure import FILE [--replace]
    assure import-botium SCENARIO DIR

``ASSURE_URL`` and ``ASSURE_TOKEN`` come from the environment (``--url`` / ``--token`` override
them). Exit codes are in ``assure_cli.exits`` and docs/ci.md.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
import traceback
import uuid
from pathlib import Path

from assure_cli import __version__, exits, junit
from assure_cli.client import CliError, Client, ServerUnavailable
from assure_cli.results import PathOutcome, exit_code, path_outcomes

DEFAULT_TIMEOUT = 1800.0
# Polling a batch: soon after a change, then less often while nothing moves (a batch of long
# voice calls changes every few minutes; a chat batch every second or so).
POLL_FIRST = 1.0
POLL_LONGEST = 10.0
# While waiting, a server that stops answering (a deploy, a proxy restart) is given this long to come back.
UNAVAILABLE_GRACE = 120.0
# Run details fetched for the words of the evidence turns: enough to explain a failure, bounded
# so a batch of a hundred failing repeats does not cost a hundred requests.
DETAILS_PER_PATH = 3
DETAILS_IN_ALL = 50


def main(argv: list[str] | None = None) -> None:
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # not on a stream a caller swapped in
            # A transcript may hold what the CI log's encoding cannot: replace it rather than crash.
            stream.reconfigure(errors="replace")
    args = parser().parse_args(argv)
    try:
        code = args.command(args)
    except CliError as exc:
        say(exc.message)
        code = exc.exit_code
    except KeyboardInterrupt:
        say("Interrupted. Runs already queued go on on the server.")
        code = 130
    except Exception:
        # Exit 1 means "a path failed" to CI: a crash of the tool (or a server reply it does not
        # understand) must never read as that. The traceback is for a bug report.
        traceback.print_exc()
        say("The assure command failed unexpectedly (the traceback above is for a bug report): this is a problem "
            "of the tool or of the server's reply, not a verdict on the agent. Exit 4.")
        code = exits.PLATFORM
    sys.exit(code)


def say(message: str) -> None:
    print(f"assure: {message}", file=sys.stderr, flush=True)


# Arguments -------------------------------------------------------------------------------------


def repeat_count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 100:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 100, not {value!r}")
    return number


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return number


def parser() -> argparse.ArgumentParser:
    def connection(sub: argparse.ArgumentParser, default) -> None:
        # Accepted before or after the command; the command's copy must not overwrite the other's.
        sub.add_argument("--url", default=default, help="the product's address (default: $ASSURE_URL)")
        sub.add_argument("--token", default=default,
                         help="a workspace API token (default: $ASSURE_TOKEN; prefer the variable, "
                              "a flag shows in the process list)")

    def waiting(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--wait", action="store_true", help="wait until every run has finished")
        sub.add_argument("--junit", metavar="FILE", help="write a JUnit XML report (implies --wait)")
        sub.add_argument("--fail-on-flaky", action="store_true",
                         help="a path whose repeats disagree fails the job (exit 1)")
        sub.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT, metavar="S",
                         help=f"seconds to wait at most (default {DEFAULT_TIMEOUT:.0f}); then exit 3")
        sub.add_argument("--json", action="store_true", help="print the batch as JSON instead of a summary")

    top = argparse.ArgumentParser(prog="assure", description="Run AssureAgent scenarios from CI.",
                                  epilog="Exit codes: 0 all passed, 1 a path failed, 2 bad input, 3 timeout, "
                                         "4 platform or tool trouble only. See docs/ci.md.")
    top.add_argument("--version", action="version", version=f"assure {__version__}")
    connection(top, None)
    commands = top.add_subparsers(metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run every path of a scenario as one batch")
    run.add_argument("scenario", metavar="SCENARIO", help="the scenario's id, or its exact name")
    run.add_argument("--repeat", type=repeat_count, metavar="K", help="run each path K times (1-100)")
    waiting(run)
    run.set_defaults(command=command_run)

    batch = commands.add_parser("batch", help="show a batch's results (--wait: once it has finished)")
    batch.add_argument("batch", metavar="ID")
    waiting(batch)
    batch.set_defaults(command=command_batch)

    compare = commands.add_parser("compare", help="compare a batch with the previous one (or --to another)")
    compare.add_argument("batch", metavar="ID")
    compare.add_argument("--to", metavar="ID", help="the batch to compare with (default: the previous batch "
                                                    "of the same scenario)")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    compare.set_defaults(command=command_compare)

    export = commands.add_parser("export", help="print a scenario as YAML")
    export.add_argument("scenario", metavar="SCENARIO", help="the scenario's id, or its exact name")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    export.set_defaults(command=command_export)

    load = commands.add_parser("import", help="create a scenario from YAML (as `assure export` writes it)")
    load.add_argument("file", metavar="FILE", help="the YAML file, or - for stdin")
    load.add_argument("--replace", action="store_true", help="update the scenario of the same name instead")
    load.set_defaults(command=command_import)

    botium = commands.add_parser("import-botium", help="add paths to a scenario from Botium .convo.txt files")
    botium.add_argument("scenario", metavar="SCENARIO", help="the scenario's id, or its exact name")
    botium.add_argument("directory", metavar="DIR", help="a folder of .convo.txt files (or one such file)")
    botium.set_defaults(command=command_import_botium)

    for sub in (run, batch, compare, export, load, botium):
        connection(sub, argparse.SUPPRESS)
    return top


def connect(args) -> Client:
    url = args.url or os.environ.get("ASSURE_URL", "")
    token = args.token or os.environ.get("ASSURE_TOKEN", "")
    if not url.strip():
        raise CliError("Set ASSURE_URL to the product's address, e.g. https://assure.example.com.")
    if not token.strip():
        raise CliError("Set ASSURE_TOKEN to a workspace API token "
                       "(`manage.py create_api_token <workspace> --name ci`, or the admin's API tokens).")
    return Client(url, token.strip())


def scenario_of(client: Client, value: str) -> dict:
    """The scenario with this id, or the one with exactly this name in the token's workspace."""
    try:
        scenario_id = uuid.UUID(value)
    except ValueError:
        pass
    else:
        return client.get(f"scenarios/{scenario_id}/",
                          not_found=f"No scenario with id {value} in the token's workspace.")
    scenarios = list(client.paginate("scenarios/"))
    named = [scenario for scenario in scenarios if scenario.get("name") == value]
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(str(scenario.get("id")) for scenario in named)
        raise CliError(f"{len(named)} scenarios are named {value!r} ({ids}): pass the id instead.")
    close = difflib.get_close_matches(value, [str(scenario.get("name")) for scenario in scenarios], n=3)
    hint = f" Did you mean {' or '.join(repr(name) for name in close)}?" if close else ""
    raise CliError(f"No scenario named {value!r} in the token's workspace.{hint}")


# run and batch ---------------------------------------------------------------------------------


def writable(path: str, what: str) -> None:
    """Refuse, before anything is queued or waited for, a file this command could not write.
    Opening it is the only reliable test (permissions, a missing folder, a read-only mount, root)."""
    target = Path(path)
    existed = target.exists()
    try:
        with target.open("ab"):
            pass
    except OSError as exc:
        raise CliError(f"Cannot write {what} to {path}: {exc.strerror or exc}.") from None
    if not existed:
        target.unlink(missing_ok=True)


def command_run(args) -> int:
    deadline = time.monotonic() + args.timeout
    if args.junit:
        writable(args.junit, "the JUnit report")
    client = connect(args)
    try:
        scenario = scenario_of(client, args.scenario)
        body = {"repeat": args.repeat} if args.repeat is not None else {}
        started = client.post(f"scenarios/{scenario['id']}/run-all/", json=body,
                              not_found=f"No scenario with id {scenario['id']} in the token's workspace.")
        batch_id = started.get("batch")
        if not batch_id:
            raise CliError("The server did not say which batch it started: is it a version with batches?")
        repeats = f", {args.repeat} times each" if args.repeat and args.repeat > 1 else ""
        say(f"Queued {len(started.get('runs') or [])} runs of {scenario.get('name')!r}{repeats} as batch {batch_id}.")
        if not (args.wait or args.junit):
            print(batch_id)
            return exits.PASSED
        return report_batch(client, str(batch_id), args, deadline=deadline, wait=True)
    finally:
        client.close()


def command_batch(args) -> int:
    deadline = time.monotonic() + args.timeout
    if args.junit:
        writable(args.junit, "the JUnit report")
    client = connect(args)
    try:
        batch_id = _uuid(args.batch, "batch")
        return report_batch(client, batch_id, args, deadline=deadline, wait=args.wait or bool(args.junit))
    finally:
        client.close()


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise CliError(f"{value!r} is not a {what} id (a UUID).") from None


def report_batch(client: Client, batch_id: str, args, *, deadline: float, wait: bool) -> int:
    batch = wait_for(client, batch_id, deadline) if wait else get_batch(client, batch_id)
    runs_by_id = {str(run.get("id")): run for run in client.paginate("runs/", {"batch": batch_id})}
    outcomes = path_outcomes(batch, runs_by_id=runs_by_id, details_by_id={})
    details = run_details(client, outcomes)
    if details:
        outcomes = path_outcomes(batch, runs_by_id=runs_by_id, details_by_id=details)

    def run_url(run_id: str) -> str:
        return client.page_url(f"runs/{run_id}/")

    if args.junit:
        try:
            junit.write(args.junit, batch, outcomes, fail_on_flaky=args.fail_on_flaky, run_url=run_url)
        except OSError as exc:  # the folder went away while waiting, the disk filled up, …
            raise CliError(f"Cannot write the JUnit report to {args.junit}: {exc.strerror or exc}.") from None
        say(f"Wrote the JUnit report to {args.junit}.")
    if args.json:
        print(json.dumps(batch, indent=2))
    else:
        print_outcomes(batch, outcomes, fail_on_flaky=args.fail_on_flaky, run_url=run_url)
    code = exit_code(outcomes, fail_on_flaky=args.fail_on_flaky)
    if code == exits.TIMEOUT:
        count = sum(len(outcome.unfinished) for outcome in outcomes)
        going = f"{count} run{'' if count == 1 else 's'} still going"
        if wait:
            say(f"Timed out after {args.timeout:g} s with {going}; they go on on the server "
                f"(`assure batch {batch_id} --wait` waits for them again).")
        else:
            say(f"Batch {batch_id} has {going}; --wait waits for them.")
    return code


def get_batch(client: Client, batch_id: str) -> dict:
    batch = client.get(f"batches/{batch_id}/", not_found=f"No batch {batch_id} in the token's workspace.")
    if not isinstance(batch, dict) or not isinstance(batch.get("paths"), list):
        raise CliError(f"The server's batch {batch_id} has no paths: is it a version with batches?")
    return batch


def finished(batch: dict) -> bool:
    if "finished" in batch:
        return bool(batch["finished"])
    counts = batch.get("counts") or {}
    return not (counts.get("pending") or counts.get("running"))


def progress(batch: dict) -> str:
    counts = batch.get("counts") or {}
    total = counts.get("runs", 0)
    done = total - counts.get("pending", 0) - counts.get("running", 0)
    parts = [f"{counts.get('passed', 0)} passed"]
    for key, label in (("failed_verdict", "failed"), ("inconclusive", "inconclusive"),
                       ("failed", "not tested (platform)"), ("cancelled", "cancelled")):
        if counts.get(key):
            parts.append(f"{counts[key]} {label}")
    going = f" ({counts.get('running', 0)} running, {counts.get('pending', 0)} queued)" if done < total else ""
    return f"{done}/{total} runs finished: {', '.join(parts)}{going}"


def wait_for(client: Client, batch_id: str, deadline: float) -> dict:
    """Poll the batch until it has finished or the deadline passes; the last state either way."""
    interval = POLL_FIRST
    last_progress = None
    batch = None
    unavailable_since = None
    while True:
        try:
            batch = get_batch(client, batch_id)
            unavailable_since = None
        except ServerUnavailable as exc:
            now = time.monotonic()
            unavailable_since = unavailable_since or now
            if batch is None or now - unavailable_since > UNAVAILABLE_GRACE or now >= deadline:
                raise
            say(f"{exc.message} Trying again.")
        else:
            line = progress(batch)
            if line != last_progress:
                say(line)
                last_progress = line
                interval = POLL_FIRST
            else:
                interval = min(interval * 1.5, POLL_LONGEST)
            if finished(batch):
                return batch
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return batch
        time.sleep(min(interval, remaining))


def run_details(client: Client, outcomes: list[PathOutcome]) -> dict[str, dict]:
    """Details of the first failing runs of each path: their criteria and the turns cited."""
    wanted = []
    for outcome in outcomes:
        failing = [str(run.get("id")) for run in outcome.runs
                   if run.get("status") == "completed" and run.get("verdict") != "passed"]
        wanted += failing[:DETAILS_PER_PATH]
    details = {}
    for run_id in wanted[:DETAILS_IN_ALL]:
        try:
            details[run_id] = client.get(f"runs/{run_id}/")
        except CliError as exc:
            # The report still lists the failed criteria from the batch, without the turns' words.
            say(f"Could not read run {run_id}: {exc.message}")
    return details


STATE_LABELS = {"passed": "PASSED", "flaky": "FLAKY", "failed": "FAILED", "error": "ERROR", "unfinished": "RUNNING"}


def print_outcomes(batch: dict, outcomes: list[PathOutcome], *, fail_on_flaky: bool, run_url) -> None:
    repeat = batch.get("repeat") or 1
    print(f"{batch.get('scenario_name') or batch.get('scenario')}: batch {batch.get('id')}"
          + (f", each path {repeat} times" if repeat > 1 else ""))
    width = max([len(outcome.name) for outcome in outcomes] + [4])
    tally: dict[str, int] = {}
    for outcome in outcomes:
        state = outcome.state(fail_on_flaky=fail_on_flaky)
        state_label = STATE_LABELS[state]
        tally[state] = tally.get(state, 0) + 1
        figures = f"{outcome.passes}/{outcome.judged} passed"
        if outcome.judged > 1:
            figures += f"  pass@k {_yes(outcome.pass_at_k)}, pass^k {_yes(outcome.pass_all_k)}"
        if outcome.flaky:
            figures += "  flaky"
        if outcome.not_tested:
            figures += f"  {len(outcome.not_tested)} not tested"
        if outcome.unfinished:
            figures += f"  {len(outcome.unfinished)} still going"
        print(f"  {state_label:<8} {outcome.name:<{width}}  {figures}")
        if state in ("failed", "flaky"):
            by_run: dict[str, list] = {}
            for criterion in outcome.failed_criteria:
                by_run.setdefault(criterion.run, []).append(criterion)
            for run_id, criteria in list(by_run.items())[:DETAILS_PER_PATH]:
                print(f"           {run_url(run_id)}")
                for criterion in criteria[:10]:
                    print(f"             {criterion.name}: {criterion.outcome}"
                          + (f": {junit.quote(criterion.rationale)}" if criterion.rationale else ""))
                    for evidence in criterion.evidence[:5]:
                        said = f" ({evidence.speaker}): {junit.quote(evidence.text)}" if evidence.speaker else ""
                        print(f"               turn {evidence.seq}{said}")
        for run in outcome.not_tested[:5]:
            detail = run.get("failure_detail") or ""
            print(f"           {run.get('failure_reason') or run.get('status')}: {junit.quote(detail)}  {run_url(str(run.get('id')))}")
    order = ["passed", "flaky", "failed", "error", "unfinished"]
    print(", ".join(f"{tally[state]} {state}" for state in order if tally.get(state))
          + (f"; pass rate {batch['pass_rate']:.0%}" if isinstance(batch.get("pass_rate"), (int, float)) else ""))


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


# compare ---------------------------------------------------------------------------------------


def command_compare(args) -> int:
    client = connect(args)
    try:
        batch_id = _uuid(args.batch, "batch")
        params = {"to": _uuid(args.to, "batch")} if args.to else None
        comparison = client.get(f"batches/{batch_id}/compare/", params=params,
                                not_found=f"No batch {batch_id}" + (f" or {args.to}" if args.to else "")
                                          + " in the token's workspace.")
    finally:
        client.close()
    if args.json:
        print(json.dumps(comparison, indent=2))
    else:
        print_comparison(comparison)
    # "Did anything get worse?": a path that passed before and fails now fails the job.
    return exits.FAILED if comparison.get("newly_failing") else exits.PASSED


def print_comparison(comparison: dict) -> None:
    print(f"Batch {comparison.get('batch')} compared with batch {comparison.get('to')}")
    for key, title in (("newly_failing", "Newly failing"), ("fixed", "Fixed"), ("still_failing", "Still failing"),
                       ("flaky", "Flaky")):
        changes = comparison.get(key) or []
        print(f"{title}: {len(changes)}")
        for change in changes:
            print(f"  {change.get('name')}: {_rate(change.get('before'))} -> {_rate(change.get('after'))}")
            for criterion in change.get("criteria") or []:
                before, after = criterion.get("before") or {}, criterion.get("after") or {}
                if before.get("outcome") == after.get("outcome") == "passed":
                    continue  # only what failed on either side explains the change
                print(f"    {criterion.get('name')}: {before.get('outcome', '-')} -> {after.get('outcome', '-')}")
                for side, label in ((before, "before"), (after, "after")):
                    if side.get("rationale"):
                        print(f"      {label}: {junit.quote(side['rationale'])}")
                    for turn in side.get("evidence_turns") or []:
                        print(f"        turn {turn.get('seq')} ({turn.get('speaker')}): {junit.quote(turn.get('text', ''))}")
    print(f"Unchanged passing: {len(comparison.get('unchanged_passing') or [])}")
    for item in comparison.get("not_compared") or []:
        print(f"Not compared: {item.get('name')}: {item.get('reason')}")
    latency = comparison.get("latency") or []
    if latency:
        print("Latency, p50 / p90 in ms (before -> after):")
        for row in latency:
            print(f"  {row.get('name')}: {_ms(row.get('p50_before'))} -> {_ms(row.get('p50_after'))} / "
                  f"{_ms(row.get('p90_before'))} -> {_ms(row.get('p90_after'))}")


def _rate(side) -> str:
    side = side or {}
    return f"{side.get('passes', 0)}/{side.get('total', 0)} passed"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}" if isinstance(value, (int, float)) else str(value)


# tests as text ---------------------------------------------------------------------------------


def command_export(args) -> int:
    client = connect(args)
    try:
        scenario = scenario_of(client, args.scenario)
        text = client.get_bytes(f"scenarios/{scenario['id']}/export/",
                                not_found=f"No scenario with id {scenario['id']} in the token's workspace.")
    finally:
        client.close()
    if args.output:
        try:
            Path(args.output).write_bytes(text)
        except OSError as exc:
            raise CliError(f"Cannot write {args.output}: {exc.strerror or exc}.") from None
        say(f"Wrote {scenario.get('name')!r} to {args.output}.")
    else:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
    return exits.PASSED


def command_import(args) -> int:
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"Cannot read {args.file}: {exc.strerror or exc}.") from None
    client = connect(args)
    try:
        scenario = client.post("scenarios/import/", content=data, content_type="application/yaml",
                               params={"replace": "true"} if args.replace else None)
    finally:
        client.close()
    say(f"Imported scenario {scenario.get('name')!r}.")
    print(f"{scenario.get('id')}\t{scenario.get('name')}")
    return exits.PASSED


def command_import_botium(args) -> int:
    source = Path(args.directory)
    if source.is_dir():
        files = sorted(path for path in source.iterdir() if path.name.lower().endswith(".convo.txt") and path.is_file())
    elif source.is_file():
        files = [source]
    else:
        raise CliError(f"No such folder or file: {args.directory}.")
    if not files:
        raise CliError(f"No .convo.txt files in {args.directory}.")
    texts = {}
    for path in files:
        try:
            texts[path.name] = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"Cannot read {path} as UTF-8 text: {exc}.") from None
    client = connect(args)
    try:
        scenario = scenario_of(client, args.scenario)
        created = client.post(f"scenarios/{scenario['id']}/import-botium/", json={"files": texts},
                              not_found=f"No scenario with id {scenario['id']} in the token's workspace.")
    finally:
        client.close()
    paths = created.get("paths") or []
    say(f"Added {len(paths)} paths to {scenario.get('name')!r} from {len(files)} files.")
    for path in paths:
        print(f"{path.get('id')}\t{path.get('name')}")
    return exits.PASSED
