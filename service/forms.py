"""Multipart bodies: their OpenAPI description, and reading them into files plus named text fields.

The upload routes read the form themselves (rather than through FastAPI `File`/`Form` parameters) so that
the schema can say what FastAPI's generated one cannot: that a file part must be an image (`encoding`), how
many files a request may carry, that a field is JSON. The fields are then validated by the same pydantic
models as the JSON routes, in lax mode (every form value arrives as a string).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from fastapi import HTTPException, Request

IMAGE_FILE = {"type": "string", "format": "binary", "contentMediaType": "image/*"}


def multipart_body(properties: dict[str, Any], required: list[str], files: tuple[str, ...]) -> dict[str, Any]:
    """`openapi_extra` for a route whose body is multipart/form-data: these properties, the named file parts
    declared as images, other array fields as repeated text parts, object fields as JSON parts."""
    encoding = {name: {"contentType": "image/*"} for name in files}
    for name, schema in properties.items():
        if name not in files and schema.get("items", {}).get("type") == "string":
            encoding[name] = {"contentType": "text/plain"}
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    content = {"multipart/form-data": {"schema": schema, "encoding": encoding}}
    return {"requestBody": {"required": True, "content": content}}


@dataclass
class Form:
    """A read multipart body: (filename, bytes) per file part, and the text values of every other field."""

    files: list[tuple[str | None, bytes]] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def single(self, name: str) -> str | None:
        """The value of a field that may be given once."""
        values = self.fields.get(name, [])
        if len(values) > 1:
            raise HTTPException(422, f"{name}: given {len(values)} times; give it once")
        return values[0] if values else None

    def json(self, name: str) -> Any:
        """A field holding JSON, parsed (None when absent)."""
        text = self.single(name)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise HTTPException(422, f"{name}: not valid JSON ({err.msg} at position {err.pos})") from None


async def read_form(request: Request, file_field: str, max_files: int, allowed: tuple[str, ...]) -> Form:
    """Read a multipart body whose files come in `file_field` and whose other fields are among `allowed`.

    Parsed with the standard library's MIME parser rather than Starlette's form parser, which turns a file
    part sent without a `filename` (allowed by RFC 7578) into decoded text; here a part's bytes stay bytes.
    """
    kind = request.headers.get("content-type", "")
    if kind.split(";")[0].strip().lower() != "multipart/form-data":
        raise HTTPException(415, f"send multipart/form-data with the image(s) in the field `{file_field}`")
    head = f"Content-Type: {kind}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + await request.body())
    if not message.is_multipart():
        raise HTTPException(400, "the multipart body cannot be parsed (check its boundary)")
    read = Form()
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if name == file_field:
            read.files.append((part.get_filename(), data))
            if len(read.files) > max_files:
                raise HTTPException(422, f"more than {max_files} files in `{file_field}`; the limit is {max_files}")
        elif name not in allowed:
            raise HTTPException(422, f"unknown form field {name!r}; the fields are {', '.join((file_field, *allowed))}")
        else:
            try:
                read.fields.setdefault(name, []).append(data.decode(part.get_content_charset() or "utf-8"))
            except (UnicodeDecodeError, LookupError):
                raise HTTPException(400, f"{name}: not text in its declared charset") from None
    if not read.files:
        raise HTTPException(422, f"{file_field}: no image given")
    return read


async def read_json(request: Request) -> Any:
    """The body parsed as JSON (400 with the reason when it is not UTF-8 JSON, or nested too deeply)."""
    return parse_json(await request.body())


def parse_json(body: bytes) -> Any:
    """Bytes parsed as JSON (400 with the reason when they are not UTF-8 JSON, or nested too deeply)."""
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        raise HTTPException(400, f"body is not valid JSON: {err.msg} at position {err.pos}") from None
    except UnicodeDecodeError:
        raise HTTPException(400, "body is not valid JSON: it is not UTF-8 text") from None
    except RecursionError:
        raise HTTPException(400, "body is not valid JSON: nested too deeply") from None
