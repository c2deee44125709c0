"""The official CloudEvents Python SDK's side of tests/tests/cloudevents.rs.

    python3 tests/cloudevents_sdk.py read FILE
        Reads FILE, one CloudEvents JSON event a line (what `hadron subscribe`
        prints), with the SDK's JSONFormat, and prints what the SDK read.
    python3 tests/cloudevents_sdk.py write SINGLE BATCH
        Writes events built with the SDK: the first to SINGLE (one event), all
        of them to BATCH (a JSON batch: an array), and prints them.

"What it read" and "them" are one JSON array, an object per event:
specversion, id, source, type, subject, time (UTC, ISO 8601 with
microseconds), datacontenttype, dataschema, extensions (name: value, with
the JSON type the SDK holds), and data as {"kind": "none"|"json"|"str"|
"bytes", "value": ...} (bytes as Base64). The SDK must be installed
(.ci/run installs it): without it this fails, it does not skip.
"""

import base64
import json
import sys
from datetime import datetime, timedelta, timezone

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

CONTEXT = {"specversion", "id", "source", "type", "subject", "time",
           "datacontenttype", "dataschema"}


def summary(event):
    attributes = event.get_attributes()
    time = event.get_time()
    data = event.get_data()
    if data is None:
        data = {"kind": "none"}
    elif isinstance(data, (bytes, bytearray)):
        data = {"kind": "bytes", "value": base64.b64encode(data).decode()}
    elif isinstance(data, str):
        data = {"kind": "str", "value": data}
    else:
        data = {"kind": "json", "value": data}
    return {
        "specversion": event.get_specversion(),
        "id": event.get_id(),
        "source": event.get_source(),
        "type": event.get_type(),
        "subject": event.get_subject(),
        "time": time.astimezone(timezone.utc).isoformat(timespec="microseconds")
        if time is not None else None,
        "datacontenttype": event.get_datacontenttype(),
        "dataschema": event.get_dataschema(),
        "extensions": {k: v for k, v in attributes.items() if k not in CONTEXT},
        "data": data,
    }


def read(path):
    fmt = JSONFormat()
    with open(path, encoding="utf-8") as f:
        events = [fmt.read(None, line) for line in f if line.strip()]
    print(json.dumps([summary(e) for e in events]))


def written_events():
    utc = timezone.utc
    plus2 = timezone(timedelta(hours=2))
    return [
        CloudEvent(
            {"id": "py-json", "source": "https://example.com/app",
             "type": "com.example.order.created", "subject": "order-7",
             "time": datetime(2024, 5, 6, 7, 8, 9, 10_000, tzinfo=utc),
             "datacontenttype": "application/json",
             "dataschema": "https://example.com/schemas/order.json",
             "tenant": "acme", "count": 5, "flag": True},
            {"order": 7, "items": ["a", "b"], "total": 12.5, "gift": None},
        ),
        CloudEvent(
            {"id": "py-text", "source": "/py", "type": "com.example.note",
             "time": datetime(2024, 5, 6, 9, 8, 9, 123_000, tzinfo=plus2),
             "datacontenttype": "text/plain; charset=utf-8"},
            "line one\nline \"two\" \u00e9",
        ),
        CloudEvent(
            {"id": "py-bytes", "source": "/py", "type": "com.example.blob",
             "datacontenttype": "application/octet-stream"},
            bytes(range(256)),
        ),
        CloudEvent(
            {"id": "py-empty", "source": "/py", "type": "com.example.ping"},
        ),
    ]


def write(single_path, batch_path):
    fmt = JSONFormat()
    events = written_events()
    with open(single_path, "wb") as f:
        f.write(fmt.write(events[0]))
    with open(batch_path, "wb") as f:
        f.write(b"[" + b",".join(fmt.write(e) for e in events) + b"]")
    print(json.dumps([summary(e) for e in events]))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "read":
        read(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
