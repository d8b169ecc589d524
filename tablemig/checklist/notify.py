"""Stakeholder notifications: file (JSON lines), webhook (JSON POST) and e-mail (SMTP).

    notifiers=[{"kind": "file", "path": "notifications.jsonl"},
               {"kind": "webhook", "url": "https://chat.example.com/hook"},
               {"kind": "email", "smtp": "mail.example.com:25", "from": "dba@example.com",
                "to": "app-team@example.com,ops@example.com"}]
"""

from __future__ import annotations

import datetime as dt
import json
import smtplib
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..pg.connect import redact

KINDS = ("file", "webhook", "email")


def validate(notifiers: list[dict[str, str]]) -> None:
    for n in notifiers:
        kind = n.get("kind")
        need = {"file": ("path",), "webhook": ("url",), "email": ("smtp", "from", "to")}.get(kind or "")
        if need is None:
            raise InputError(f"notifier kind {kind!r} is unknown", f"use one of {', '.join(KINDS)}")
        missing = [k for k in need if not n.get(k)]
        if missing:
            raise InputError(f"{kind} notifier lacks {', '.join(missing)}", f"give {', '.join(need)}")


def send(notifiers: list[dict[str, str]], event: str, plan: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Send `event` to every notifier; returns one delivery record each (never raises)."""
    message = {"event": event, "plan": plan, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               **payload}
    body = redact(json.dumps(message, default=str))
    out = []
    for n in notifiers:
        target = n.get("path") or n.get("url") or n.get("to", "")
        rec: dict[str, Any] = {"kind": n.get("kind"), "target": redact(target)}
        try:
            if n["kind"] == "file":
                Path(n["path"]).parent.mkdir(parents=True, exist_ok=True)
                with Path(n["path"]).open("a") as fh:
                    fh.write(body + "\n")
            elif n["kind"] == "webhook":
                req = urllib.request.Request(n["url"], data=body.encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - URL from the plan
                    rec["http_status"] = resp.status
            else:
                msg = EmailMessage()
                msg["Subject"] = f"[tablemig] {plan}: {event}"
                msg["From"], msg["To"] = n["from"], n["to"]
                msg.set_content(json.dumps(json.loads(body), indent=2))
                host, _, port = n["smtp"].partition(":")
                with smtplib.SMTP(host, int(port or 25), timeout=10) as smtp:
                    smtp.send_message(msg)
            rec["delivered"] = True
        except Exception as exc:  # noqa: BLE001 - a failed notification is reported, not fatal
            rec.update(delivered=False, error=redact(str(exc)))
        out.append(rec)
    return out
