"""Checks of a model endpoint before a stage spends anything on it.

Two kinds: what needs no network (`check_settings`: the API key's variable is set, a paid
endpoint has a price when a money budget is set), made before any work; and what does
(`preflight`: the endpoint answers, accepts the key, serves the model and answers one one-token
request, and has a Batch API in batch mode), made by each backend kind that reaches a server
elsewhere (`BackendKind.preflight`, optional). The embedded teacher started by the pipeline has
nothing to check: its server must answer before it is handed out. A check that passed is not
repeated within PREFLIGHT_FRESH_S in the same process (`distill run` checks every endpoint before
Prefect starts, then each stage would again).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from backends.registry import backend_kind, endpoint_identity, runs_locally
from core.errors import ConfigError

if TYPE_CHECKING:
    from backends.config import ModelEndpoint

log = logging.getLogger(__name__)

PREFLIGHT_FRESH_S = 600.0
_passed: dict[tuple, float] = {}


def check_settings(endpoint: "ModelEndpoint", name: str, max_cost_usd: float | None = None) -> None:
    """Bad input about an endpoint that no request should be needed to find: a ConfigError naming
    the key. `name` is the endpoint's key in the config (teacher, judge)."""
    if endpoint.api_key_env and not os.environ.get(endpoint.api_key_env):
        raise ConfigError(f"key '{name}.api_key_env': the environment variable {endpoint.api_key_env} is not set "
                          "(it must hold the API key; the key itself is never put in a config)")
    priced = {"price_input_per_mtok", "price_output_per_mtok"} & endpoint.model_fields_set
    if max_cost_usd is not None and not priced and not runs_locally(endpoint):
        raise ConfigError(
            f"key '{name}.price_input_per_mtok': budget.max_cost_usd is set, but {name} "
            f"({endpoint_identity(endpoint)}) runs elsewhere and has no price, so the budget could not count "
            "it: set price_input_per_mtok and price_output_per_mtok (0 for a server that costs nothing per token)")


def _key(endpoint: "ModelEndpoint") -> tuple:
    return (endpoint.backend, endpoint.model, endpoint.api, tuple(endpoint.base_urls), endpoint.api_key_env,
            endpoint.mode)


def preflight(endpoint: "ModelEndpoint", name: str) -> None:
    """Check the endpoint over the network (see the module's docstring); raises EndpointError or
    ConfigError naming `name` and the URL. Skipped when the endpoint's `preflight` is off, when its
    kind has nothing to check, and when it passed within PREFLIGHT_FRESH_S."""
    check = getattr(backend_kind(endpoint.backend), "preflight", None)
    if check is None or not endpoint.preflight:
        return
    key = _key(endpoint)
    if time.monotonic() - _passed.get(key, -PREFLIGHT_FRESH_S) < PREFLIGHT_FRESH_S:
        return
    started = time.perf_counter()
    for warning in check(endpoint, name):
        log.warning("%s", warning)
    _passed[key] = time.monotonic()
    log.info("%s: %s answers (preflight, %.1f s)", name, endpoint_identity(endpoint), time.perf_counter() - started)
