"""Run notifications: a small JSON POST to a webhook when a run finishes or fails.

The webhook URL often carries a token, so it is read from the environment variable the
config names, used for the POST and nothing else: it is never logged, returned or written.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request

from pipeline.config import NotifyConfig

log = logging.getLogger(__name__)


def notification_payload(outcome: str, flow_run_name: str, flow_run_id: str, config_name: str | None,
                         run_dir: str | None, message: str | None, headline: str | None = None) -> dict:
    """The JSON a webhook receives: which run, how it ended, where its files are."""
    return {
        "event": f"distill.run.{outcome}",
        "outcome": outcome,
        "flow_run": flow_run_name,
        "flow_run_id": flow_run_id,
        "config": config_name,
        "run_dir": run_dir,
        "message": (message or "")[:500],
        "headline": headline,
    }


def post_notification(settings: NotifyConfig, payload: dict) -> bool:
    """POST the payload if the config asks for this outcome; True when the webhook accepted it.
    A webhook that is down is logged (without its URL) and never fails the run."""
    if settings.webhook_url_env is None or payload["outcome"] not in settings.on:
        return False
    url = os.environ.get(settings.webhook_url_env)
    if not url:
        log.warning("notify: environment variable %s (notify.webhook_url_env) is not set; no notification sent",
                    settings.webhook_url_env)
        return False
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        # The exception text may quote the URL: name only its kind.
        log.warning("notify: webhook from %s not reached (%s)", settings.webhook_url_env, type(exc).__name__)
        return False
    log.info("notify: %s sent to the webhook from %s (HTTP %d)", payload["event"], settings.webhook_url_env, status)
    return 200 <= status < 300
