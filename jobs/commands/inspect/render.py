"""`inspect`'s console table: one block per section, columns aligned, for a person on a TTY."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]  # fmt: skip


def table(report: dict[str, Any]) -> str:
    out = [f"tenant {report['subdomain']} (database {report['database']})", ""]
    dbs = report.get("databases") or []
    out.append(f"databases ({len(dbs)})")
    if dbs:
        out += _table(
            ("name", "role", "marker", "state", "owner", "public connect"),
            [(d["name"], d["role"], d["kind"] or d["marker"], d["state"], d["owner"],
              "yes" if d["public_connect"] else "no") for d in dbs],
        )  # fmt: skip
    stores = report.get("filestores") or []
    out += ["", f"filestores ({len(stores)})"]
    if stores:
        out += _table(
            ("name", "kind", "leftover", "files", "bytes"),
            [(f["name"], f["kind"], f["leftover"] or "", f["files"], f["bytes"]) for f in stores],
        )
    backups = report.get("backups")
    if backups is not None:
        out += ["", f"backup sets ({len(backups['sets'])}): newest {backups['newest']}, "
                    f"newest valid {backups['newest_valid']}"]  # fmt: skip
        rows = [(s["name"], s["status"], "yes" if s["final"] else "") for s in backups["sets"]]
        out += _table(("set", "status", "final"), rows)
        if backups["leftovers"]:
            out.append("  leftovers: " + ", ".join(backups["leftovers"]))
    up = report.get("upgrade") or {}
    out += ["", f"upgrade: {up.get('status', 'unknown')}"]
    events = report.get("events")
    if events is not None:
        out += ["", f"events ({len(events)})"]
        out += _table(("entry", "type", "generation", "occurred at"),
                      [(e["entry_id"], e.get("type"), e.get("generation"), e.get("occurred_at"))
                       for e in events])  # fmt: skip
    out += ["", "next steps"]
    for job, plan in sorted((report.get("plans") or {}).items()):
        if "blocked" in plan:
            out.append(f"  {job}: BLOCKED: {plan['blocked']}")
        elif "needs" in plan:
            out.append(f"  {job}: not planned, needs {plan['needs']}")
        elif "error" in plan:
            out.append(f"  {job}: cannot plan ({plan['exit_code']}): {plan['error']}")
        elif not plan.get("steps"):
            out.append(f"  {job}: nothing to do")
        else:
            out.append(f"  {job}: " + ", ".join(s["step"] for s in plan["steps"]))
            out += [f"      {s['step']}: {s['says']}" for s in plan["steps"]]
    for name, err in (report.get("errors") or {}).items():
        out.append(f"  could not read {name} ({err['exit_code']}): {err['error']}")
    if report.get("problems"):
        out += ["", "PROBLEMS no job resolves alone:"] + [f"  - {p}" for p in report["problems"]]
    return "\n".join(out)
