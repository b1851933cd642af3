"""The /docs page: every operation of the OpenAPI document on one self-contained HTML page.

No script or stylesheet is fetched from anywhere, so the page works offline, behind strict
Content-Security-Policies and in tests; tools that want more (Swagger UI, Redoc, code generators)
read /openapi.json.
"""

from __future__ import annotations

import html
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1b1f23}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .5rem;vertical-align:top}
tr:nth-child(even){background:#f6f8fa}code{font-size:.9em}
.m{font-weight:600;font-family:monospace}.get{color:#0a7}.post{color:#06c}.patch{color:#b60}.delete{color:#c22}
.put{color:#85c}.s{font-size:.8em;color:#666}
"""


def _params(operation: dict[str, Any]) -> str:
    names = [
        f"<code>{html.escape(p['name'])}</code>{'*' if p.get('required') else ''}"
        for p in operation.get("parameters", [])
        if p.get("in") == "query"
    ]
    return ", ".join(names)


def render_docs(document: dict[str, Any]) -> str:
    by_tag: dict[str, list[str]] = {}
    for path, item in document["paths"].items():
        for method, op in item.items():
            body = "JSON body" if "requestBody" in op else ""
            stream = (
                ' <span class="s">(stream: SSE or NDJSON)</span>' if "text/event-stream" in str(op["responses"]) else ""
            )
            row = (
                f'<tr><td class="m {method}">{method.upper()}</td><td><code>{html.escape(path)}</code>{stream}</td>'
                f"<td>{html.escape(op['summary'])}</td><td>{_params(op)}</td><td>{body}</td></tr>"
            )
            by_tag.setdefault(op["tags"][0], []).append(row)
    sections = []
    for tag in sorted(by_tag):
        rows = "".join(by_tag[tag])
        sections.append(
            f"<h2>{html.escape(tag)}</h2><table><tr><th>method</th><th>path</th><th>RPC</th>"
            f"<th>query parameters (* required)</th><th>body</th></tr>{rows}</table>"
        )
    info = document["info"]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(info['title'])}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(info['title'])} {html.escape(info['version'])}</h1>"
        f"<p>{html.escape(info['description'])}</p>"
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1). Send '
        "<code>Authorization: Bearer &lt;token&gt;</code>; errors are "
        '<code>{"error": {"code", "status", "message", "details"}}</code> (AIP-193).</p>'
        + "".join(sections)
        + "</body></html>"
    )
