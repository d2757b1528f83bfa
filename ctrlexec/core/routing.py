"""What a server decides about one request, with no I/O: the route it takes
and the reply it sends. The agent (7443) and the API (7445) share both; each
wire module (agent_wire, api_wire) has its own route table and bodies.

A reply an agent sends back to the dispatcher is read as a
`results.AgentReply` (status line, raw body), not as this `Reply`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Route:
    name: str
    arg: str = ""  # the reqid in the path (/result/<reqid>, /status/<reqid>)
    gated: bool = False  # agent: only a trusted dispatcher may use it


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any] | bytes  # a JSON object, or bytes served verbatim (a document)
    content_type: str = "application/json"
    # Called once the reply is sent (or could not be): the agent gives back
    # what the reply held of its output budget.
    on_sent: Callable[[], None] | None = field(default=None, compare=False, repr=False)
