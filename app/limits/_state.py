from __future__ import annotations

from typing import Any

# What a store keeps under a key: a JSON document, or None for nothing yet.
State = dict[str, Any] | None
