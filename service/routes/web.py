"""`GET /`: the search web page (service/static/index.html) and its static files under /static."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["web"])


@router.get("/", response_class=FileResponse, include_in_schema=False)
async def page() -> FileResponse:
    """The search page."""
    index = STATIC / "index.html"
    if not index.is_file():
        raise HTTPException(404, "the web page is not installed (service/static/index.html)")
    return FileResponse(index, media_type="text/html")


def mount_static(app: FastAPI) -> None:
    """Serve service/static/ at /static (scripts, styles the page uses)."""
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
