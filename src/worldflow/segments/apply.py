"""``worldflow apply PATH``: send the segment, score, placement, offer and journey definitions
and the messaging policy in YAML or JSON files to a server's admin API, score models first
(segments read them), journeys last (they read segments and the policy), each checked
locally first."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worldflow.decide.definition import OFFER, PLACEMENT, validate_offer, validate_placement
from worldflow.journeys.definition import MESSAGING, validate_messaging
from worldflow.journeys.definition import validate as validate_journey
from worldflow.segments.definition import DefinitionError, iter_documents, validate

SUFFIXES = (".yaml", ".yml", ".json")


class ApplyError(Exception):
    pass


def documents(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, validated document) for every definition under ``path`` (a file or a directory
    searched recursively), in file name order."""
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())  # fmt: skip
    if not files:
        raise ApplyError(f"{path}: no {', '.join(SUFFIXES)} files")
    for file in files:
        try:
            for i, document in enumerate(iter_documents(file.read_text(), str(file))):
                kind = document.get("kind") if isinstance(document, dict) else None
                if kind == "journey":
                    yield f"{file}#{i + 1}", validate_journey(document)
                elif kind == MESSAGING:
                    yield f"{file}#{i + 1}", validate_messaging(document)
                elif kind == OFFER:
                    yield f"{file}#{i + 1}", validate_offer(document)
                elif kind == PLACEMENT:
                    yield f"{file}#{i + 1}", validate_placement(document)
                else:
                    yield f"{file}#{i + 1}", validate(document)
        except DefinitionError as exc:
            raise ApplyError(f"{file}: {exc}") from None


def apply(path: Path, url: str, token: str) -> list[dict[str, Any]]:
    """Validate everything, then PUT score models, then segments; the server's answers."""
    if not url.startswith(("http://", "https://")):
        raise ApplyError(f"--url: {url!r} is not an http(s) URL")
    order = {"score": 0, "segment": 1, MESSAGING: 2, PLACEMENT: 3, OFFER: 4, "journey": 5}
    found = sorted(documents(path), key=lambda item: order[item[1]["kind"]])
    answers = []
    for where, document in found:
        kind = document["kind"]
        place = "messaging" if kind == MESSAGING else f"{kind}s/{document['key']}"
        request = urllib.request.Request(  # noqa: S310 - checked above: http(s) only
            f"{url.rstrip('/')}/v1/{place}",
            data=json.dumps(document).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - likewise
                answers.append({"source": where, **json.loads(response.read())})
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ApplyError(f"{where}: the server answered {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise ApplyError(f"{url}: {exc.reason}") from None
    return answers
