"""Read what a W&B offline run recorded, straight from its ``run-<id>.wandb`` transaction log.

wandb ≥ 0.19 no longer ships a Python reader; the file is a LevelDB-style log (7-byte file header,
32 KiB blocks, records split into FULL/FIRST/MIDDLE/LAST chunks) of ``wandb_internal_pb2.Record``s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7


def records(path: Path) -> list[Any]:
    """Every protobuf record in a ``.wandb`` file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    out, buf, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _nested_row(items: Any) -> dict[str, Any]:
    """One history row as key → value; media (an image's filenames, sizes…) come back as one nested dict."""
    row: dict[str, Any] = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = row
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return row


def logged(run_dir: Path) -> dict[str, Any]:
    """History keys and rows, summary values, config keys, id, group, job type, tags and artifacts of one offline run.

    ``rows`` holds every history row (key → decoded value); ``artifacts`` every artifact record as
    ``{"name", "type", "files", "aliases", "digest", "used"}`` (``files``: the names inside the artifact; ``used``:
    recorded as an input of the run, not an output). Group, job type and tags are the last run record's.
    """
    (log_file,) = run_dir.glob("run-*.wandb")
    history: set[str] = set()
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    config: set[str] = set()
    artifacts: list[dict[str, Any]] = []
    group = job_type = run_id = ""
    tags: list[str] = []
    for rec in records(log_file):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.update(item.key or "/".join(item.nested_key) for item in rec.history.item)
            rows.append(_nested_row(rec.history.item))
        elif kind == "summary":
            for item in rec.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "config":
            config.update(item.key or "/".join(item.nested_key) for item in rec.config.update)
        elif kind == "run":
            group, job_type, run_id, tags = rec.run.run_group, rec.run.job_type, rec.run.run_id, list(rec.run.tags)
            config.update(item.key for item in rec.run.config.update)
        elif kind == "artifact":
            files = sorted(entry.path for entry in rec.artifact.manifest.contents)
            artifacts.append({"name": rec.artifact.name, "type": rec.artifact.type, "files": files,
                              "aliases": list(rec.artifact.aliases), "digest": rec.artifact.digest,
                              "used": rec.artifact.use_after_commit})
    return {"history": history, "rows": rows, "summary": summary, "config": config, "group": group,
            "job_type": job_type, "run_id": run_id, "tags": tags, "artifacts": artifacts}
