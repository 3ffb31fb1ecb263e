"""``/tracks``: read one track."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from bastion.demo.models import MAX_ID, Track
from bastion.demo.routers.deps import SessionDep, problem_responses
from bastion.demo.schemas import TrackOut

__all__ = ["router"]

router = APIRouter(prefix="/tracks", tags=["tracks"])

TrackId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("/{track_id}", responses=problem_responses(404, 422))
async def get_track(track_id: TrackId, session: SessionDep) -> TrackOut:
    """Read one track."""
    track = await session.get(Track, track_id)
    if track is None:
        raise HTTPException(404, detail=f"Track {track_id} does not exist.")
    return TrackOut.model_validate(track)
