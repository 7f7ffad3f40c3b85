# The Python baseline for bench/demo.sh: the vehicle-event API as a FastAPI user
# would write it (FastAPI + slowapi), mirroring the demo upstream's POST /events
# (src/demo/schema.rs, http.rs) and its WebSocket feed (fanout.rs, ws.rs).
#
#   pip install fastapi "uvicorn[standard]" slowapi   # [standard]: websockets (the feed), uvloop, httptools
#   python3 -m uvicorn seed_app:app --app-dir bench --host 127.0.0.1 --port 8000 --workers 1 --no-access-log
#
#   curl -i -XPOST localhost:8000/events -H 'content-type: application/json' \
#        -d '{"id":"bus-7","lat":52.52,"lon":13.40,"speed":42}'          # 202 {"status":"received"}
#
# Invalid events get FastAPI's own 422 (every field error listed); unknown fields
# are refused. The limiter admits everything in a benchmark but does its work.
import asyncio
import unicodedata
from datetime import datetime, timezone
from typing import Optional

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, field_validator
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

CLIENT_QUEUE = 1024  # per WebSocket client; a slow client loses its oldest events

limiter = Limiter(key_func=get_remote_address)
app = FastAPI()
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)


def invisible(c: str) -> bool:
    return (
        unicodedata.category(c) == "Cc"
        or c in "/\\"
        or "\u200b" <= c <= "\u200f" or "\u2028" <= c <= "\u202e"
        or "\u2060" <= c <= "\u2064" or "\u2066" <= c <= "\u206f"
        or c == "\ufeff" or "\ufff9" <= c <= "\ufffb"
    )


class VehicleEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # numbers must be JSON numbers

    id: str = Field(min_length=1, max_length=64)
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    speed: float = Field(ge=0, le=400, allow_inf_nan=False)  # km/h
    ts: Optional[str] = Field(default=None, validate_default=True)  # RFC 3339, set on receipt

    @field_validator("id")
    @classmethod
    def printable(cls, id: str) -> str:
        if id in (".", "..") or not id.strip() or any(map(invisible, id)):
            raise ValueError("must be printable text: no control, format or separator characters, no '/' or '\\'")
        return id

    @field_validator("ts")
    @classmethod
    def utc(cls, ts: Optional[str]) -> str:
        at = datetime.now(timezone.utc) if ts is None else datetime.fromisoformat(ts)
        if at.tzinfo is None:
            raise ValueError("must be an RFC 3339 timestamp")
        return at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


latest: dict[str, VehicleEvent] = {}
clients: set[asyncio.Queue] = set()


def publish(message: str) -> None:
    for queue in clients:
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(message)


@app.post("/events", status_code=202)
@limiter.limit("100000000/second")
async def post_event(request: Request, event: VehicleEvent):
    current = latest.get(event.id)
    if current is None or current.ts <= event.ts:
        latest[event.id] = event
    publish(event.model_dump_json())
    return {"status": "received"}


@app.get("/vehicles")
async def vehicles():
    return {"vehicles": sorted(latest.values(), key=lambda e: e.id)}


@app.websocket("/ws/vehicles")
async def vehicle_feed(ws: WebSocket):
    await ws.accept()
    queue: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE)

    async def pump():
        while True:
            await ws.send_text(await queue.get())

    clients.add(queue)
    sender = asyncio.create_task(pump())
    try:
        while True:
            await ws.receive_text()  # until the client leaves
    except WebSocketDisconnect:
        pass
    finally:
        clients.discard(queue)
        sender.cancel()
